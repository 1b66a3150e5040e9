"""The HealthStore contract, run against every store: in memory, Redis, Redis Cluster.

Like pybreaker's storage tests, one suite for every backend: ``handles()``
gives handles on one shared store (the same object in memory, new
``RedisHealthStore`` instances on one key prefix for Redis), so "another
worker" means the same thing everywhere.
"""

import asyncio
import uuid
from collections.abc import Callable

import pytest

from pipecat_tts_failover.detection import FailureReason
from pipecat_tts_failover.store import Controls, HealthStore, InMemoryHealthStore
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


async def test_one_id_given_as_a_string_is_refused_not_read_letter_by_letter(store):
    with pytest.raises(TypeError, match="provider_ids.*\\['cartesia'\\]"):
        await store.get("cartesia")
    with pytest.raises(TypeError, match="provider_ids"):
        await store.register_providers("cartesia")
    with pytest.raises(TypeError, match="provider_ids holds int"):
        await store.get(["cartesia", 3])


# -- registered providers: which ids the workers use ---------------------------


async def test_nothing_is_registered_until_a_worker_registers(store):
    await store.mark_down("cartesia", reason=FailureReason.ERROR, cooldown=30)

    assert await store.registered_providers() == []


async def test_workers_registrations_merge_into_one_preference_order(handles):
    first, second = handles(), handles()

    await first.register_providers(["cartesia", "elevenlabs"])
    assert await second.registered_providers() == ["cartesia", "elevenlabs"]

    # New ids go next to the worker's neighbours; the order registered stays.
    await second.register_providers(["rime", "cartesia", "playht"])
    assert await first.registered_providers() == ["rime", "cartesia", "playht", "elevenlabs"]
    await first.register_providers(["elevenlabs", "deepgram"])
    await second.register_providers(["azure", "openai", "elevenlabs"])
    expected = ["rime", "cartesia", "playht", "azure", "openai", "elevenlabs", "deepgram"]
    assert await first.registered_providers() == expected

    # Registering again (every call does) changes nothing, in any order.
    await first.register_providers(["cartesia", "elevenlabs"])
    await second.register_providers(["elevenlabs", "cartesia"])
    await first.register_providers([])
    assert await second.registered_providers() == expected


async def test_workers_registering_at_once_lose_no_id(handles):
    workers = [handles() for _ in range(4)]

    await asyncio.gather(
        *(w.register_providers([f"own-{i}", "shared"]) for i, w in enumerate(workers))
    )

    registered = await workers[0].registered_providers()
    assert sorted(registered) == ["own-0", "own-1", "own-2", "own-3", "shared"]
    # Every worker prefers its own id to "shared": each stays ahead of it.
    assert registered[-1] == "shared"


# -- extend_down: a failed recovery probe keeps the provider down -------------


async def test_extend_down_keeps_a_down_provider_down_longer(store, clock):
    await store.mark_down("cartesia", reason=FailureReason.STALLED, cooldown=30)
    since = clock()
    clock.advance(25)

    assert await store.extend_down("cartesia", 60) is True

    health = (await store.get(["cartesia"]))["cartesia"]
    assert health.down_until == pytest.approx(clock() + 60)
    # Not a new incident: when and why it went down stay.
    assert health.since == pytest.approx(since)
    assert health.reason is FailureReason.STALLED
    clock.advance(59)
    assert (await store.get(["cartesia"]))["cartesia"].is_down(clock())
    clock.advance(2)
    assert not (await store.get(["cartesia"]))["cartesia"].is_down(clock())


async def test_extend_down_never_shortens_a_mark_down(store, clock):
    await store.mark_down("cartesia", reason=FailureReason.ERROR, cooldown=60)

    assert await store.extend_down("cartesia", 10) is True

    health = (await store.get(["cartesia"]))["cartesia"]
    assert health.down_until == pytest.approx(clock() + 60)


async def test_extend_down_of_a_provider_that_is_up_is_false_and_changes_nothing(store, clock):
    assert await store.extend_down("cartesia", 30) is False
    assert not (await store.get(["cartesia"]))["cartesia"].is_down(clock())

    await store.mark_down("cartesia", reason=FailureReason.ERROR, cooldown=30)
    clock.advance(31)  # the mark-down ran out
    assert await store.extend_down("cartesia", 30) is False
    assert not (await store.get(["cartesia"]))["cartesia"].is_down(clock())
    # Still up: the next mark-down is a new incident.
    assert await store.mark_down("cartesia", reason=FailureReason.ERROR, cooldown=30) is True


async def test_an_extended_mark_down_is_seen_through_another_handle(handles, clock):
    writer, reader = handles(), handles()
    await reader.get(PROVIDERS)
    assert await writer.mark_down("cartesia", reason=FailureReason.ERROR, cooldown=30)

    clock.advance(20)
    assert await reader.extend_down("cartesia", 60) is True

    async def extended():
        health = (await writer.get(["cartesia"]))["cartesia"]
        return health.down_until == pytest.approx(clock() + 60)

    await eventually(extended, what="the extension to reach the other handle")
    # Still one incident: nobody else takes the provider down.
    assert await writer.mark_down("cartesia", reason=FailureReason.ERROR, cooldown=30) is False


# -- locks -----------------------------------------------------------------------


async def test_a_lock_is_held_until_its_holder_releases_it(handles):
    first, second = handles(), handles()

    assert await first.try_lock("probe:cartesia", 30) is True
    assert await second.try_lock("probe:cartesia", 30) is False
    assert await first.try_lock("probe:cartesia", 30) is False  # not reentrant

    await first.release_lock("probe:cartesia")

    assert await second.try_lock("probe:cartesia", 30) is True
    await second.release_lock("probe:cartesia")


async def test_locks_with_different_names_are_independent(handles):
    first, second = handles(), handles()

    assert await first.try_lock("probe:cartesia", 30) is True
    assert await second.try_lock("probe:elevenlabs", 30) is True
    assert await second.try_lock("probe:cartesia", 30) is False


async def test_a_lock_runs_out_after_its_ttl(handles, clock):
    first, second = handles(), handles()
    assert await first.try_lock("probe:cartesia", 0.2) is True

    # Memory stores expire locks on their clock, Redis on its own.
    clock.advance(0.3)
    await asyncio.sleep(0.3)

    assert await second.try_lock("probe:cartesia", 30) is True


async def test_releasing_a_lock_not_held_is_harmless(store):
    await store.release_lock("never-taken")

    assert await store.try_lock("never-taken", 30) is True


# -- operator controls -------------------------------------------------------------


async def test_controls_default_to_no_pin_and_failover_enabled(store):
    assert await store.get_controls() == Controls(pinned=None, failover_enabled=True)


async def test_controls_set_through_one_handle_are_seen_through_every_handle(handles):
    operator, worker = handles(), handles()
    await worker.get_controls()  # started before the change: it must learn of it

    await operator.set_controls(Controls(pinned="elevenlabs", failover_enabled=False))

    assert await operator.get_controls() == Controls(pinned="elevenlabs", failover_enabled=False)

    async def seen():
        return await worker.get_controls() == Controls("elevenlabs", False)

    await eventually(seen, what="the controls to reach the other handle")

    await operator.set_controls(Controls())

    async def cleared():
        return await worker.get_controls() == Controls()

    await eventually(cleared, what="the default controls to reach the other handle")


async def test_controls_survive_the_round_trip_exactly(handles):
    operator, late = handles(), handles()
    odd = Controls(pinned="eleven labs/v2:{shard}*", failover_enabled=True)

    await operator.set_controls(odd)

    # A handle that starts after the change reads it at its start.
    assert await late.get_controls() == odd


async def test_close_is_safe_to_call_twice(handles):
    store = handles()
    await store.get(PROVIDERS)

    await store.close()
    await store.close()
