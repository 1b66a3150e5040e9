"""StoreWriter: writes run in order, off the caller's path, in a task that lives only while there are writes."""

import asyncio

import pytest

from pipecat_tts_failover.store.writer import StoreWriter


def recorder(done: list, name, gate: asyncio.Event | None = None, fail=False):
    async def write():
        if gate is not None:
            await gate.wait()
        if fail:
            raise RuntimeError(f"{name} failed")
        done.append(name)

    return write


async def test_writes_run_in_order_and_the_task_ends_when_none_are_left():
    writer, done, gate = StoreWriter("t"), [], asyncio.Event()
    writer.start()
    assert writer._task is None  # nothing to write: no task
    writer.submit(recorder(done, "a", gate))
    writer.submit(recorder(done, "b"))
    task = writer._task
    assert task is not None and not task.done()
    gate.set()
    await writer.drain(timeout=1.0)
    assert done == ["a", "b"]
    assert writer._task is None and task.done()
    writer.submit(recorder(done, "c"))  # the next write starts another task
    await writer.drain(timeout=1.0)
    assert done == ["a", "b", "c"]
    await writer.stop()


async def test_writes_submitted_before_start_run_once_started():
    writer, done = StoreWriter("t"), []
    writer.submit(recorder(done, "a"))
    assert writer._task is None
    writer.start()
    await writer.drain(timeout=1.0)
    assert done == ["a"]
    await writer.stop()


async def test_a_failed_write_is_logged_and_the_next_still_runs(caplog_loguru):
    writer, done = StoreWriter("t"), []
    writer.start()
    writer.submit(recorder(done, "bad", fail=True))
    writer.submit(recorder(done, "good"))
    await writer.drain(timeout=1.0)
    assert done == ["good"]
    assert any("bad failed" in line for line in caplog_loguru)
    await writer.stop()


async def test_a_full_queue_drops_the_newest_write(caplog_loguru):
    writer, done, gate = StoreWriter("t", max_pending=2), [], asyncio.Event()
    writer.start()
    writer.submit(recorder(done, "a", gate))
    await asyncio.sleep(0)  # "a" is running; two more fill the queue
    writer.submit(recorder(done, "b"))
    writer.submit(recorder(done, "c"))
    writer.submit(recorder(done, "dropped"))
    gate.set()
    await writer.drain(timeout=1.0)
    assert done == ["a", "b", "c"]
    assert any("falling behind" in line for line in caplog_loguru)
    await writer.stop()


async def test_drain_gives_up_at_its_timeout_and_the_write_goes_on(caplog_loguru):
    writer, done, gate = StoreWriter("t"), [], asyncio.Event()
    writer.start()
    writer.submit(recorder(done, "slow", gate))
    await writer.drain(timeout=0.01)
    assert any("still pending" in line for line in caplog_loguru)
    gate.set()
    await writer.drain(timeout=1.0)
    assert done == ["slow"]
    await writer.stop()


async def test_stop_cancels_the_running_write_drops_the_queue_and_runs_nothing_after():
    writer, done, gate = StoreWriter("t"), [], asyncio.Event()
    writer.start()
    writer.submit(recorder(done, "a", gate))
    writer.submit(recorder(done, "b"))
    task = writer._task
    await asyncio.sleep(0)
    await writer.stop()
    assert task is not None and task.cancelled()
    writer.submit(recorder(done, "late"))
    assert writer._task is None  # no task outlives stop()
    gate.set()
    await asyncio.sleep(0)
    assert done == []
    await writer.stop()  # twice is fine


@pytest.fixture
def caplog_loguru():
    from loguru import logger

    lines: list[str] = []
    handler = logger.add(lambda message: lines.append(str(message)), level="WARNING")
    yield lines
    logger.remove(handler)
