import asyncio
import time

import pytest

from pipecat_tts_failover.loop_lag import LagGrace, LoopLagMonitor, loop_lag_monitor


class FakeLoop:
    """A loop whose clock the test sets, and which runs a timer only when told."""

    def __init__(self):
        self.now = 0.0
        self.due: float | None = None
        self._callback = None

    def time(self) -> float:
        return self.now

    def call_at(self, when, callback):
        self.due, self._callback = when, callback
        return asyncio.TimerHandle(when, callback, (), self)

    def fire(self, late: float = 0.0):
        """Run the pending tick, ``late`` seconds after it was due."""
        self.now = self.due + late
        self._callback()

    def get_debug(self):
        return False


@pytest.fixture
def loop(monkeypatch):
    fake = FakeLoop()
    monkeypatch.setattr(asyncio, "get_running_loop", lambda: fake)
    return fake


def test_the_monitor_ticks_finely_while_the_loop_is_late_and_coarsely_while_it_keeps_time(loop):
    monitor = LoopLagMonitor(interval=0.05, calm_interval=0.2, calm_lag=0.01)
    monitor.acquire()
    assert loop.due == pytest.approx(0.05)  # fine until the loop shows it keeps time
    loop.fire(late=0.005)
    assert loop.due == pytest.approx(loop.now + 0.2)
    loop.fire(late=0.3)  # a blocked loop
    assert loop.due == pytest.approx(loop.now + 0.05)
    loop.fire(late=0.02)  # still behind
    assert loop.due == pytest.approx(loop.now + 0.05)
    loop.fire()
    assert loop.due == pytest.approx(loop.now + 0.2)
    assert monitor.worst_since(0.0) == pytest.approx(0.3)
    assert monitor.stolen_since(0.0) == pytest.approx(0.325)


def test_a_block_after_quiet_counts_from_when_the_tick_was_due(loop):
    monitor = LoopLagMonitor(interval=0.05, calm_interval=0.2, calm_lag=0.01)
    monitor.acquire()
    loop.fire()
    since = loop.now
    # Blocked from just after that tick for 0.5 s: the tick due 0.2 s in is 0.3 s late.
    loop.now = since + 0.5
    assert monitor.stolen_since(since) == pytest.approx(0.3)  # overdue, before it ticks
    loop.fire(late=0.3)
    assert monitor.stolen_since(since) == pytest.approx(0.3)


async def test_lag_grace_counts_from_its_timeout_s_deadline_however_late_it_is_set_up():
    # A reply due while the loop is blocked comes in time: the grace gives the
    # timeout back the block. The grace is set up 2 ms after the timeout's
    # deadline was set; checked from then, it would come after the timeout fired.
    monitor = loop_lag_monitor()
    monitor.acquire()
    try:
        loop = asyncio.get_running_loop()
        reply = loop.create_future()
        deadline = asyncio.timeout(0.05)
        time.sleep(0.002)  # noqa: ASYNC251 - blocks the loop on purpose
        async with deadline:
            grace = LagGrace(deadline, 0.05, cap=1.0)
            loop.call_soon(time.sleep, 0.3)  # the loop blocks...
            loop.call_later(0.01, reply.set_result, "answer")  # ...as the reply comes
            assert await reply == "answer"
        grace.cancel()
        assert not deadline.expired()
    finally:
        await monitor.release()
