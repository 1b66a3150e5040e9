"""The HealthStore contract, run against every store: in memory, Redis, Redis Cluster.

Like pybreaker's storage tests, one suite for every backend: ``handles()``
gives handles on one shared store (the same object in memory, new
``RedisHealthStore`` instances on one key prefix for Redis), so "another
worker" means the same thing everywhere.
"""

import uuid
from collections.abc import Callable

import pytest

from pipecat_tts_failover.detection import FailureReason
from pipecat_tts_failover.store import HealthStore, InMemoryHealthStore
from tests.support.redis_server import (
    RedisCluster,
    RedisServer,
    captured_logs,
    eventually,
    running,
)

PROVIDERS = ["cartesia", "elevenlabs"]


class FakeClock:
    """Wall-clock seconds that move only when told to."""

    def __init__(self, now: float = 1_700_000_000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float):
        self.now += seconds


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory):
    with running(RedisServer(tmp_path_factory.mktemp("redis"))) as server:
        yield server


@pytest.fixture(scope="module")
def redis_cluster(tmp_path_factory):
    with running(RedisCluster(tmp_path_factory.mktemp("cluster"))) as cluster:
        yield cluster


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture(params=["memory", "redis", "redis-cluster"])
async def handles(request, clock) -> Callable[[], HealthStore]:
    """A factory of handles on one fresh store of the backend under test."""
    made: list[HealthStore] = []
    if request.param == "memory":
        shared = InMemoryHealthStore(clock=clock)

        def make() -> HealthStore:
            return shared

    else:
        from pipecat_tts_failover.store.redis import RedisHealthStore

        fixture = "redis_server" if request.param == "redis" else "redis_cluster"
        url = request.getfixturevalue(fixture).url
        prefix = f"contract-{uuid.uuid4().hex[:8]}"

        def make() -> HealthStore:
            store = RedisHealthStore(
                url,
                key_prefix=prefix,
                cluster=request.param == "redis-cluster",
                clock=clock,
                # Generous: these tests are about semantics, not about timeouts,
                # and a timed-out call would quietly fall back to the local view.
                op_timeout=2.0,
            )
            made.append(store)
            return store

    with captured_logs(level="WARNING") as warnings:
        yield make
        for store in made:
            await store.close()
    # A Redis store that fell back to its local view would pass for the wrong reason.
    assert [r["message"] for r in warnings] == []


@pytest.fixture
def store(handles) -> HealthStore:
    """The first handle (overrides the conftest's in-memory store for this module)."""
    return handles()


async def test_store_satisfies_the_protocol(store):
    assert isinstance(store, HealthStore)


async def test_unknown_providers_read_as_healthy(store):
    health = await store.get(PROVIDERS)

    assert set(health) == set(PROVIDERS)
    for pid in PROVIDERS:
        assert health[pid].provider_id == pid
        assert health[pid].down_until is None
        assert health[pid].reason is None
        assert health[pid].since is None
        assert health[pid].failures == 0


async def test_get_returns_exactly_the_requested_providers(store):
    await store.mark_down("cartesia", reason=FailureReason.ERROR, cooldown=30)

    assert set(await store.get(["elevenlabs"])) == {"elevenlabs"}
    assert await store.get([]) == {}


async def test_failures_are_counted_consecutively_per_provider(store):
    assert [await store.record_failure("cartesia", FailureReason.ERROR) for _ in range(3)] == [
        1,
        2,
        3,
    ]
    assert await store.record_failure("elevenlabs", FailureReason.STALLED) == 1

    health = await store.get(PROVIDERS)
    assert health["cartesia"].failures == 3
    assert health["elevenlabs"].failures == 1


async def test_a_success_resets_the_failure_count(store):
    await store.record_failure("cartesia", FailureReason.ERROR)
    await store.record_failure("cartesia", FailureReason.ERROR)

    await store.record_success("cartesia")
    await store.record_success("never-seen")

    assert (await store.get(["cartesia"]))["cartesia"].failures == 0
    assert (await store.get(["never-seen"]))["never-seen"].failures == 0
    assert await store.record_failure("cartesia", FailureReason.ERROR) == 1


async def test_mark_down_records_its_reason_start_and_end(store, clock):
    assert await store.mark_down("cartesia", reason=FailureReason.NO_FIRST_AUDIO, cooldown=30)

    health = await store.get(PROVIDERS)
    assert health["cartesia"].is_down(clock())
    assert health["cartesia"].down_until == pytest.approx(clock() + 30)
    assert health["cartesia"].since == pytest.approx(clock())
    assert health["cartesia"].reason is FailureReason.NO_FIRST_AUDIO
    assert not health["elevenlabs"].is_down(clock())


async def test_every_reason_survives_the_round_trip(store):
    ids = [f"provider-{reason.value}" for reason in FailureReason]
    for pid, reason in zip(ids, FailureReason):
        await store.mark_down(pid, reason=reason, cooldown=30)

    health = await store.get(ids)

    assert [health[pid].reason for pid in ids] == list(FailureReason)


async def test_mark_down_is_true_only_for_the_caller_that_took_the_provider_down(handles):
    first, second = handles(), handles()

    assert await first.mark_down("cartesia", reason=FailureReason.ERROR, cooldown=30) is True
    assert await second.mark_down("cartesia", reason=FailureReason.STALLED, cooldown=60) is False
    assert await first.mark_down("cartesia", reason=FailureReason.ERROR, cooldown=30) is False

    # The first mark-down stands: a second one does not extend or rename it.
    health = (await second.get(["cartesia"]))["cartesia"]
    assert health.reason is FailureReason.ERROR


async def test_a_mark_down_ends_after_its_cooldown(store, clock):
    await store.record_failure("cartesia", FailureReason.ERROR)
    await store.mark_down("cartesia", reason=FailureReason.ERROR, cooldown=30)

    clock.advance(29.9)
    assert (await store.get(["cartesia"]))["cartesia"].is_down(clock())

    clock.advance(0.2)
    health = (await store.get(["cartesia"]))["cartesia"]
    assert (health.down_until, health.reason, health.since) == (None, None, None)
    assert health.failures == 1
    assert await store.mark_down("cartesia", reason=FailureReason.STALLED, cooldown=30) is True


async def test_mark_up_is_true_only_when_the_provider_was_down(handles):
    first, second = handles(), handles()

    assert await first.mark_up("cartesia") is False
    await first.mark_down("cartesia", reason=FailureReason.ERROR, cooldown=30)

    assert await second.mark_up("cartesia") is True
    assert await first.mark_up("cartesia") is False
    assert (await first.get(["cartesia"]))["cartesia"].down_until is None


async def test_mark_up_clears_the_failure_count(store):
    await store.record_failure("cartesia", FailureReason.ERROR)
    await store.mark_down("cartesia", reason=FailureReason.ERROR, cooldown=30)

    await store.mark_up("cartesia")

    health = (await store.get(["cartesia"]))["cartesia"]
    assert health.failures == 0
    assert health.down_until is None


async def test_mark_up_after_the_cooldown_ran_out_is_false(store, clock):
    await store.mark_down("cartesia", reason=FailureReason.ERROR, cooldown=30)
    clock.advance(31)

    assert await store.mark_up("cartesia") is False


async def test_a_change_made_through_one_handle_is_seen_through_another(handles, clock):
    writer, reader = handles(), handles()
    await reader.get(PROVIDERS)  # started before the change: it must learn of it

    await writer.mark_down("elevenlabs", reason=FailureReason.SILENT_AUDIO, cooldown=30)
    await writer.record_failure("cartesia", FailureReason.ERROR)

    async def seen():
        health = await reader.get(PROVIDERS)
        return health["elevenlabs"].is_down(clock()) and health["cartesia"].failures == 1

    await eventually(seen, what="the change to reach the other handle")

    await writer.mark_up("elevenlabs")

    async def cleared():
        return not (await reader.get(["elevenlabs"]))["elevenlabs"].is_down(clock())

    await eventually(cleared, what="the mark-up to reach the other handle")


async def test_provider_ids_are_opaque_strings(store, clock):
    odd = "eleven labs/v2:{shard}*"

    assert await store.record_failure(odd, FailureReason.ERROR) == 1
    assert await store.mark_down(odd, reason=FailureReason.ERROR, cooldown=30)

    assert (await store.get([odd]))[odd].is_down(clock())


async def test_close_is_safe_to_call_twice(handles):
    store = handles()
    await store.get(PROVIDERS)

    await store.close()
    await store.close()
