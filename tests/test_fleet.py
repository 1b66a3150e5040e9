"""A fleet of FailoverTTSService workers sharing a RedisHealthStore, with real calls and real faults.

Each test starts its own redis-server processes (``tests/support/redis_server.py``).
Workers are either OS processes (``tests/support/fleet_worker.py``) or, to
have many at once, calls in this process each with a RedisHealthStore of its
own. Every call is a real pipecat pipeline around the real processor with
scripted providers (``tests/support/calls.py``); what the caller heard is
decoded from the audio that reached the end of the pipeline.
"""

import asyncio
import json
import sys
import time
import uuid
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from pipecat_tts_failover.store import HealthStore
from pipecat_tts_failover.store.redis import RedisHealthStore
from tests.support.calls import SENTENCES, CallResult, speak_call, words_of
from tests.support.redis_server import (
    RedisServer,
    captured_logs,
    eventually,
    free_port,
    require_redis_binaries,
    running,
)
from tests.support.scripted import plan

ROOT = Path(__file__).resolve().parent.parent
ALL_WORDS = words_of(SENTENCES)
# A call must start within this whatever Redis is doing. Far above a healthy
# start (a few ms); below the processor's own 0.25 s cap on its health read.
PROMPT_START = 0.2


@pytest.fixture(scope="module")
def shared_server(tmp_path_factory):
    """One server for the tests that do not break it."""
    with running(RedisServer(tmp_path_factory.mktemp("fleet"))) as server:
        yield server


@pytest.fixture
def server(tmp_path):
    """A server of the test's own, free to be killed, slowed and restarted."""
    with running(RedisServer(tmp_path / "redis")) as server:
        yield server


@pytest.fixture
def prefix() -> str:
    return f"fleet-{uuid.uuid4().hex[:8]}"


@pytest.fixture
async def stores(prefix):
    """Make RedisHealthStores on the test's key prefix, all closed when the test ends."""
    made: list[RedisHealthStore] = []

    def make(url: str) -> RedisHealthStore:
        store = RedisHealthStore(url, key_prefix=prefix, max_reconnect_delay=0.2)
        made.append(store)
        return store

    yield make
    for store in made:
        await store.close()


@pytest.fixture
def service_warnings():
    """WARNING lines of the processor: a call that waited on its store logs one."""
    with captured_logs(level="WARNING", name="pipecat_tts_failover.service") as records:
        yield records


def unreadable(records) -> list[str]:
    return [r["message"] for r in records if "unreadable" in r["message"]]


async def is_down(store: HealthStore, provider_id: str) -> bool:
    return (await store.get([provider_id]))[provider_id].is_down(time.time())


async def failures(url: str, prefix: str, provider_id: str) -> int:
    raw = aioredis.Redis.from_url(url, decode_responses=True)
    try:
        return int(await raw.hget(f"{{{prefix}}}:provider:{provider_id}", "failures") or 0)
    finally:
        await raw.aclose()


def assert_spoken_in_full(result: CallResult):
    assert result.heard == ALL_WORDS, result


# -- workers in processes of their own ----------------------------------------


class Worker:
    """A ``fleet_worker`` process, driven one JSON line at a time."""

    def __init__(self, process: asyncio.subprocess.Process, log: Path):
        self.process = process
        self.log = log
        self.ready: dict = {}

    @classmethod
    async def start(cls, url: str, prefix: str, log: Path) -> "Worker":
        with open(log, "wb") as stderr:  # noqa: ASYNC230 - a local file, opened once
            process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "tests.support.fleet_worker",
                url,
                prefix,
                cwd=ROOT,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=stderr,
            )
        worker = cls(process, log)
        worker.ready = await worker._answer(timeout=60)
        return worker

    async def ask(self, command: dict, timeout: float = 30) -> dict:
        assert self.process.stdin is not None
        self.process.stdin.write((json.dumps(command) + "\n").encode())
        await self.process.stdin.drain()
        return await self._answer(timeout)

    async def _answer(self, timeout: float) -> dict:
        assert self.process.stdout is not None
        line = await asyncio.wait_for(self.process.stdout.readline(), timeout)
        assert line, f"worker exited; its log:\n{self.log.read_text()[-3000:]}"
        return json.loads(line)

    async def stop(self):
        if self.process.returncode is None:
            try:
                await self.ask({"quit": True}, timeout=0.01)
            except (TimeoutError, AssertionError, ConnectionError, json.JSONDecodeError):
                pass
            try:
                await asyncio.wait_for(self.process.wait(), 10)
            except TimeoutError:
                self.process.kill()
                await self.process.wait()


@pytest.fixture
async def workers(shared_server, prefix, tmp_path):
    """Start worker processes on the shared server and the test's prefix; stop them all after."""
    started: list[Worker] = []

    async def start(count: int) -> list[Worker]:
        new = await asyncio.gather(
            *(
                Worker.start(shared_server.url, prefix, tmp_path / f"worker{len(started) + i}.log")
                for i in range(count)
            )
        )
        started.extend(new)
        assert all(w.ready == {"ready": True, "connected": True} for w in new)
        return list(new)

    yield start
    await asyncio.gather(*(w.stop() for w in started))


async def test_a_swap_in_one_process_starts_the_next_call_in_another_on_the_backup(workers):
    a, b = await workers(2)

    swapped = await a.ask({"call": {"primary": "hang"}})

    assert swapped["heard"] == ALL_WORDS
    assert swapped["requests"] == {"primary": 1, "secondary": len(SENTENCES)}
    assert swapped["provider_downs"] == 1

    following = await b.ask({"call": {"primary": None}})

    assert following["first_provider"] == "secondary"
    assert following["requests"] == {"primary": 0, "secondary": len(SENTENCES)}
    assert following["heard"] == ALL_WORDS
    assert set(following["speakers"]) == {"secondary"}


async def test_workers_in_separate_processes_failing_at_once_report_one_incident(
    workers, shared_server, prefix
):
    fleet = await workers(3)

    results = await asyncio.gather(*(w.ask({"call": {"primary": "hang"}}) for w in fleet))

    for result in results:
        assert result["heard"] == ALL_WORDS
    assert sum(r["provider_downs"] for r in results) == 1
    sent_to_primary = sum(r["requests"]["primary"] for r in results)
    assert sent_to_primary >= 1
    assert await failures(shared_server.url, prefix, "primary") == sent_to_primary
    views = await asyncio.gather(*(w.ask({"health": ["primary"]}) for w in fleet))
    assert all(v["primary"]["down"] for v in views)


# -- many workers in this process ---------------------------------------------


async def test_twenty_workers_failing_at_once_report_one_incident_and_count_exactly(
    shared_server, stores, prefix
):
    workers = [stores(shared_server.url) for _ in range(20)]
    assert all(await asyncio.gather(*(w.connect() for w in workers)))
    together = asyncio.Barrier(len(workers))

    results = await asyncio.gather(
        *(speak_call(w, primary=plan(every="hang"), barrier=together) for w in workers)
    )

    for result in results:
        assert_spoken_in_full(result)
        assert result.first_provider == "primary"
        assert result.requests == {"primary": 1, "secondary": len(SENTENCES)}
    assert sum(r.provider_downs for r in results) == 1
    assert await failures(shared_server.url, prefix, "primary") == len(workers)

    async def every_view_agrees():
        views = await asyncio.gather(*(w.get(["primary"]) for w in workers))
        return all(v["primary"].failures == len(workers) and v["primary"].down_until for v in views)

    await eventually(every_view_agrees, what="every worker's view to show the incident")


# -- Redis faults with a call in progress -------------------------------------


async def test_redis_killed_mid_call_loses_no_sentence_and_the_mark_down_converges(
    server, stores, service_warnings
):
    store = stores(server.url)
    assert await store.connect()

    # Redis dies while the first sentence plays; the primary fails the second.
    result = await speak_call(
        store, primary=plan({1: "hang"}), pace=0.005, on_sentence={0: server.kill}
    )

    assert_spoken_in_full(result)
    assert result.requests == {"primary": 2, "secondary": 2}
    assert result.provider_downs == 1  # decided on the local view
    assert not store.connected
    # The next call on this worker starts at once, on the backup.
    following = await speak_call(store)
    assert following.first_provider == "secondary" and following.started_in < PROMPT_START
    assert_spoken_in_full(following)

    server.start()  # empty
    await eventually(lambda: store.connected, what="the store to reconnect")
    other = stores(server.url)
    assert await other.connect()
    assert await is_down(other, "primary")
    assert unreadable(service_warnings) == []


async def test_redis_killed_while_idle_the_next_call_starts_at_once_and_converges(
    server, stores, service_warnings
):
    store = stores(server.url)
    assert await store.connect()
    assert_spoken_in_full(await speak_call(store))

    server.kill()
    result = await speak_call(store, primary=plan(every="hang"))

    assert result.started_in < PROMPT_START
    assert result.first_provider == "primary"
    assert_spoken_in_full(result)
    assert result.provider_downs == 1

    server.start()  # empty
    await eventually(lambda: store.connected, what="the store to reconnect")
    other = stores(server.url)
    assert await other.connect()
    health = (await other.get(["primary"]))["primary"]
    # The ejection decided while Redis was away is written back with its
    # count; the run of failures behind it stays the worker's own.
    assert health.is_down(time.time()) and health.ejections == 1
    assert unreadable(service_warnings) == []


async def test_redis_restarted_empty_mid_call_keeps_the_fleet_s_mark_downs(
    server, stores, service_warnings
):
    store = stores(server.url)
    assert await store.connect()
    assert_spoken_in_full(await speak_call(store, primary=plan(every="error")))

    # A call on the backup; Redis restarts empty while it speaks.
    result = await speak_call(store, pace=0.005, on_sentence={0: server.restart})

    assert_spoken_in_full(result)
    assert result.first_provider == "secondary" and result.requests["primary"] == 0
    await eventually(lambda: store.connected, what="the store to reconnect")
    late = stores(server.url)  # a worker started after the restart
    assert await late.connect()
    await eventually(lambda: is_down(late, "primary"), what="the mark-down to be written back")
    following = await speak_call(late)
    assert following.first_provider == "secondary" and following.requests["primary"] == 0
    assert unreadable(service_warnings) == []


async def test_a_slow_redis_delays_no_call_and_the_mark_down_lands_after(
    server, stores, prefix, service_warnings
):
    store, other = stores(server.url), stores(server.url)
    assert await store.connect() and await other.connect()

    sleeper = server.sleep(1.5)  # DEBUG SLEEP: connected, but answering nothing
    try:
        result = await speak_call(store, primary=plan({0: "hang"}))
        assert sleeper.poll() is None, "Redis woke up before the call was over"
    finally:
        await asyncio.to_thread(sleeper.wait, 5)

    assert result.started_in < PROMPT_START
    assert_spoken_in_full(result)
    assert result.requests == {"primary": 1, "secondary": len(SENTENCES)}
    await eventually(lambda: is_down(other, "primary"), what="the mark-down to reach the fleet")
    assert (await other.get(["primary"]))["primary"].ejections == 1
    assert unreadable(service_warnings) == []


async def test_redis_unreachable_at_call_start_then_the_store_catches_up(
    tmp_path, stores, service_warnings
):
    require_redis_binaries()  # before the call, not halfway through the test
    port = free_port()
    url = f"redis://127.0.0.1:{port}/0"
    store = stores(url)  # never connected

    result = await speak_call(store, primary=plan(every="hang"))

    assert result.started_in < PROMPT_START
    assert_spoken_in_full(result)
    assert result.provider_downs == 1
    with running(RedisServer(tmp_path / "late", port=port)):
        await eventually(lambda: store.connected, what="the store to connect")
        other = stores(url)
        assert await other.connect()
        assert await is_down(other, "primary")
    assert unreadable(service_warnings) == []
