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
from pipecat_tts_failover.health import AttemptVerdict, HealthPolicy
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


def rules(**numbers) -> HealthPolicy:
    """A health policy whose rules stay quiet except those a test sets, without jitter."""
    return HealthPolicy(**{"consecutive": 1000, "min_volume": 1000, "jitter": 0.0, **numbers})


QUIET = rules()


def peers_of(provider_id: str) -> list[str]:
    return [p for p in PROVIDERS if p != provider_id]


async def failed(
    store: HealthStore,
    provider_id: str,
    reason: FailureReason = FailureReason.ERROR,
    *,
    policy: HealthPolicy = QUIET,
    draw: float = 0.0,
) -> AttemptVerdict:
    """Record a failed attempt, with the other providers of PROVIDERS as its peers."""
    return await store.record_attempt(
        provider_id, reason, policy=policy, peers=peers_of(provider_id), draw=draw
    )


async def spoke(store: HealthStore, provider_id: str, *, policy: HealthPolicy = QUIET):
    """Record an attempt that spoke."""
    return await store.record_attempt(provider_id, None, policy=policy, peers=peers_of(provider_id))


async def health_of(store: HealthStore, provider_id: str):
    return (await store.get([provider_id]))[provider_id]


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
        assert (health[pid].attempts, health[pid].window_failures, health[pid].ejections) == (
            0,
            0,
            0,
        )


async def test_get_returns_exactly_the_requested_providers(store):
    await store.mark_down("cartesia", reason=FailureReason.ERROR, cooldown=30)

    assert set(await store.get(["elevenlabs"])) == {"elevenlabs"}
    assert await store.get([]) == {}


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
    await failed(store, "cartesia")
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
    await failed(store, "cartesia")
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
    await failed(writer, "cartesia")
    await spoke(writer, "cartesia")
    await failed(writer, "cartesia")

    async def seen():
        health = await reader.get(PROVIDERS)
        cartesia = health["cartesia"]
        evidence = (cartesia.failures, cartesia.attempts, cartesia.window_failures)
        return health["elevenlabs"].is_down(clock()) and evidence == (1, 3, 2)

    await eventually(seen, what="the change to reach the other handle")

    await writer.mark_up("elevenlabs")

    async def cleared():
        return not (await reader.get(["elevenlabs"]))["elevenlabs"].is_down(clock())

    await eventually(cleared, what="the mark-up to reach the other handle")


async def test_provider_ids_are_opaque_strings(store, clock):
    odd = "eleven labs/v2:{shard}*"

    assert (await failed(store, odd)).consecutive == 1
    assert await store.mark_down(odd, reason=FailureReason.ERROR, cooldown=30)

    assert (await store.get([odd]))[odd].is_down(clock())


async def test_one_id_given_as_a_string_is_refused_not_read_letter_by_letter(store):
    with pytest.raises(TypeError, match="provider_ids.*\\['cartesia'\\]"):
        await store.get("cartesia")
    with pytest.raises(TypeError, match="provider_ids"):
        await store.register_providers("cartesia")
    with pytest.raises(TypeError, match="provider_ids holds int"):
        await store.get(["cartesia", 3])


# -- record_attempt: the fleet's evidence and when it ejects -----------------


async def test_failed_attempts_in_a_row_eject_at_the_consecutive_limit(store, clock):
    policy = rules(consecutive=3)

    first = await failed(store, "cartesia", policy=policy)
    await failed(store, "elevenlabs", policy=policy)  # another provider's run is its own
    second = await failed(store, "cartesia", FailureReason.STALLED, policy=policy)
    assert (first.ejected, first.consecutive, second.ejected, second.consecutive) == (
        False,
        1,
        False,
        2,
    )
    assert not (await health_of(store, "cartesia")).is_down(clock())

    third = await failed(store, "cartesia", FailureReason.NO_FIRST_AUDIO, policy=policy)

    assert (third.ejected, third.rule, third.spared) == (True, "consecutive", False)
    assert third.down_until == clock() + policy.ejection
    # The window starts afresh; the run goes on until the provider speaks.
    assert (third.consecutive, third.attempts, third.failures, third.ejections) == (3, 0, 0, 1)
    health = await health_of(store, "cartesia")
    assert health.is_down(clock())
    assert (health.down_until, health.since) == (clock() + policy.ejection, clock())
    assert health.reason is FailureReason.NO_FIRST_AUDIO
    assert (health.failures, health.attempts, health.window_failures, health.ejections) == (
        3,
        0,
        0,
        1,
    )
    assert (await health_of(store, "elevenlabs")).failures == 1


async def test_an_attempt_that_spoke_ends_the_run_of_failures(store):
    policy = rules(consecutive=3)
    await failed(store, "cartesia", policy=policy)
    await failed(store, "cartesia", policy=policy)

    verdict = await spoke(store, "cartesia", policy=policy)
    assert (verdict.consecutive, verdict.attempts, verdict.failures) == (0, 3, 2)
    assert (await health_of(store, "cartesia")).failures == 0

    for expected in (1, 2):
        verdict = await failed(store, "cartesia", policy=policy)
        assert (verdict.ejected, verdict.consecutive) == (False, expected)
    assert (await spoke(store, "never-seen", policy=policy)).consecutive == 0


async def test_the_failure_rate_ejects_only_once_the_window_has_its_volume(store, clock):
    policy = rules(failure_rate=0.5, min_volume=10)

    # Nine failures in nine attempts: every one failed, but too few to judge by.
    for _ in range(9):
        assert not (await failed(store, "cartesia", policy=policy)).ejected
    health = await health_of(store, "cartesia")
    assert (health.attempts, health.window_failures, health.is_down(clock())) == (9, 9, False)

    tenth = await failed(store, "cartesia", policy=policy)

    assert (tenth.ejected, tenth.rule) == (True, "rate")
    assert tenth.down_until == clock() + policy.ejection


async def test_the_failure_rate_ejects_at_its_threshold_and_not_below(store):
    policy = rules(failure_rate=0.5, min_volume=10)

    # One attempt in three failed, well past the volume: no ejection.
    for _ in range(5):
        assert not (await failed(store, "elevenlabs", policy=policy)).ejected
        await spoke(store, "elevenlabs", policy=policy)
        await spoke(store, "elevenlabs", policy=policy)
    assert (await health_of(store, "elevenlabs")).window_failures == 5
    # Half of the attempts failed, never two in a row: the tenth attempt ejects.
    verdicts = []
    for _ in range(5):
        await spoke(store, "cartesia", policy=policy)
        verdicts.append(await failed(store, "cartesia", policy=policy))
    assert [(v.ejected, v.rule, v.consecutive) for v in verdicts[:4]] == [(False, None, 1)] * 4
    assert (verdicts[4].ejected, verdicts[4].rule) == (True, "rate")


async def test_attempts_older_than_the_window_no_longer_count(store, clock):
    policy = rules(failure_rate=0.5, min_volume=10, window=30, bucket=5)
    assert clock() % 5 == 0  # at the start of a bucket
    for _ in range(8):
        await failed(store, "cartesia", policy=policy)

    clock.advance(25)  # the eight are in the oldest bucket of the window
    assert (await spoke(store, "cartesia", policy=policy)).attempts == 9

    clock.advance(5)  # now they are older than the window
    verdict = await failed(store, "cartesia", policy=policy)

    # Had the eight still counted: 10 attempts, 9 failed, and an ejection.
    assert (verdict.ejected, verdict.attempts, verdict.failures) == (False, 2, 1)
    health = await health_of(store, "cartesia")
    assert (health.attempts, health.window_failures, health.is_down(clock())) == (2, 1, False)


async def test_a_permanent_failure_ejects_at_once_even_the_last_provider_up(store, clock):
    permanent = [reason for reason in FailureReason if reason.is_permanent]
    assert FailureReason.UNUSABLE in permanent
    assert not FailureReason.ERROR.is_permanent
    # Every peer is down: only a permanent failure may eject past the panic floor.
    await store.mark_down("elevenlabs", reason=FailureReason.ERROR, cooldown=600)

    for reason in permanent:
        pid = f"cartesia-{reason.value}"
        verdict = await store.record_attempt(pid, reason, policy=QUIET, peers=["elevenlabs"])
        assert (verdict.ejected, verdict.rule, verdict.spared) == (True, "permanent", False)
        health = await health_of(store, pid)
        assert health.is_down(clock()) and health.reason is reason


async def test_the_panic_floor_never_ejects_the_last_provider_up(store, clock):
    policy = rules(consecutive=2)
    await store.mark_down("elevenlabs", reason=FailureReason.ERROR, cooldown=60)

    await failed(store, "cartesia", policy=policy)
    spared = await failed(store, "cartesia", policy=policy)

    assert (spared.ejected, spared.rule, spared.spared) == (False, None, True)
    assert spared.consecutive == 2  # the evidence stands
    assert not (await health_of(store, "cartesia")).is_down(clock())

    # Once a peer is up again (its mark-down ran out), the evidence ejects.
    clock.advance(61)
    verdict = await failed(store, "cartesia", policy=policy)
    assert (verdict.ejected, verdict.rule, verdict.spared) == (True, "consecutive", False)


async def test_a_provider_without_peers_is_not_ejected_for_its_evidence(store, clock):
    policy = rules(consecutive=1)

    alone = await store.record_attempt("cartesia", FailureReason.ERROR, policy=policy, peers=[])
    itself = await store.record_attempt(
        "cartesia", FailureReason.ERROR, policy=policy, peers=["cartesia"]
    )

    assert [(v.ejected, v.spared) for v in (alone, itself)] == [(False, True)] * 2
    assert not (await health_of(store, "cartesia")).is_down(clock())


async def test_exactly_one_of_many_concurrent_writers_ejects_per_incident(handles, clock):
    workers = [handles() for _ in range(6)]
    policy = rules(consecutive=3)

    for incident in (1, 2):
        verdicts = await asyncio.gather(
            *(failed(w, "cartesia", policy=policy) for w in workers for _ in range(5))
        )

        assert [v.ejected for v in verdicts].count(True) == 1
        # Thirty failures in a row, none lost; the third ejected.
        assert sorted(v.consecutive for v in verdicts) == list(range(1, 31))
        (ejection,) = [v for v in verdicts if v.ejected]
        assert (ejection.consecutive, ejection.ejections) == (3, incident)
        assert ejection.down_until == clock() + policy.ejection * incident

        async def seen(incident=incident):
            views = await asyncio.gather(*(w.get(["cartesia"]) for w in workers))
            return all(
                v["cartesia"].is_down(clock()) and v["cartesia"].ejections == incident
                for v in views
            )

        await eventually(seen, what="every handle to see the ejection")
        assert [await w.mark_up("cartesia") for w in workers].count(True) == 1


async def test_a_provider_still_failing_when_its_ejection_ends_is_ejected_again_at_once(
    store, clock
):
    policy = rules(consecutive=3)
    for _ in range(3):
        first = await failed(store, "cartesia", policy=policy)
    clock.advance(policy.ejection + 1)

    # The run of failures outlived the ejection: one more failure is enough.
    again = await failed(store, "cartesia", policy=policy)

    assert (first.ejected, again.ejected, again.rule) == (True, True, "consecutive")
    assert (again.consecutive, again.ejections) == (4, 2)
    assert again.down_until == clock() + 2 * policy.ejection

    # A provider that speaks first has ended its run: one failure is not enough.
    for _ in range(3):
        await failed(store, "elevenlabs", policy=policy)
    clock.advance(policy.ejection + 1)
    await spoke(store, "elevenlabs", policy=policy)
    verdict = await failed(store, "elevenlabs", policy=policy)
    assert (verdict.ejected, verdict.consecutive) == (False, 1)


async def test_attempts_on_a_provider_already_ejected_do_not_eject_it_again(store, clock):
    policy = rules(consecutive=1)
    first = await failed(store, "cartesia", policy=policy)
    clock.advance(1)

    later = [await failed(store, "cartesia", reason, policy=policy) for reason in FailureReason]

    assert first.ejected and not any(v.ejected for v in later)
    assert {v.down_until for v in later} == {first.down_until}
    assert (await health_of(store, "cartesia")).reason is FailureReason.ERROR


async def test_each_ejection_lasts_longer_up_to_the_cap(store, clock):
    policy = rules(consecutive=1, ejection=30, max_ejection=70)

    lengths = []
    for _ in range(4):
        verdict = await failed(store, "cartesia", policy=policy)
        assert verdict.ejected
        lengths.append(verdict.down_until - clock())
        clock.advance(verdict.down_until - clock() + 1)

    assert lengths == [30, 60, 70, 70]
    assert (await health_of(store, "cartesia")).ejections == 4


async def test_an_ejection_s_length_varies_by_the_jitter_drawn(store, clock):
    policy = rules(consecutive=1, ejection=30, jitter=0.2)

    short = await failed(store, "cartesia", policy=policy, draw=-1.0)
    await store.mark_up("cartesia")  # so the panic floor does not spare elevenlabs
    long = await failed(store, "elevenlabs", policy=policy, draw=0.5)

    assert short.down_until == clock() + policy.ejection_seconds(1, -1.0)
    assert long.down_until == clock() + policy.ejection_seconds(1, 0.5)
    assert short.down_until < clock() + 30 < long.down_until


async def test_past_ejections_are_forgiven_after_a_healthy_spell(store, clock):
    policy = rules(consecutive=1, ejection=30, max_ejection=300, forgive_after=300)
    await failed(store, "cartesia", policy=policy)
    clock.advance(31)
    assert (await failed(store, "cartesia", policy=policy)).ejections == 2

    clock.advance(300)  # one is forgiven
    assert (await spoke(store, "cartesia", policy=policy)).ejections == 1
    assert (await health_of(store, "cartesia")).ejections == 1
    third = await failed(store, "cartesia", policy=policy)
    assert (third.ejections, third.down_until - clock()) == (2, 60)

    clock.advance(60 + 600)  # both are
    assert (await spoke(store, "cartesia", policy=policy)).ejections == 0
    fourth = await failed(store, "cartesia", policy=policy)
    assert (fourth.ejections, fourth.down_until - clock()) == (1, 30)


async def test_mark_up_keeps_the_ejection_history_and_ends_the_run(store, clock):
    policy = rules(consecutive=1, ejection=30)
    await failed(store, "cartesia", policy=policy)

    assert await store.mark_up("cartesia") is True

    health = await health_of(store, "cartesia")
    assert (health.down_until, health.failures, health.ejections) == (None, 0, 1)
    again = await failed(store, "cartesia", policy=policy)
    assert (again.ejected, again.ejections, again.down_until - clock()) == (True, 2, 60)

    # A run of failures ends at a mark-up; the window's counts stay.
    policy = rules(consecutive=3)
    await failed(store, "elevenlabs", policy=policy)
    await failed(store, "elevenlabs", policy=policy)
    await store.mark_up("elevenlabs")
    health = await health_of(store, "elevenlabs")
    assert (health.failures, health.attempts, health.window_failures) == (0, 2, 2)
    verdict = await failed(store, "elevenlabs", policy=policy)
    assert (verdict.ejected, verdict.consecutive, verdict.attempts) == (False, 1, 3)


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
