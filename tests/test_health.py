"""The fleet's health decisions on real pipelines: one rule per test, each failing without its rule.

The call's own move is immediate (tests/test_service.py); here is whether the
*fleet* ejects a provider, in the store every new call reads: rate with a
volume floor, consecutive failures, confirmation through the call's idle
service, permanent failures, ejection growth, the panic floor, self-blame under
a lagging loop, unusable services, and recovery that costs no caller.
"""

import asyncio
import sys
import time
import uuid

import pytest
from pipecat.frames.frames import TTSSpeakFrame, TTSStoppedFrame
from pipecat.services.cartesia.tts import CartesiaTTSService

from pipecat_tts_failover import FailoverTTSService, FailureReason, HealthPolicy
from pipecat_tts_failover.events import FailureExcused, ProbeFinished, ProviderDown, ProviderUp
from pipecat_tts_failover.recovery import PROBE_TEXT, close_recovery
from pipecat_tts_failover.store.memory import InMemoryHealthStore
from pipecat_tts_failover.store.redis import RedisHealthStore
from tests.support.calls import EventRecorder
from tests.support.integration import VOICE, providers
from tests.support.pipeline import PipelineHarness
from tests.support.redis_server import RedisServer, running
from tests.support.scripted import ScriptedTTSService, plan

SENTENCES = [
    "Thanks for calling Acme support.",
    "Your order shipped yesterday morning.",
    "It should arrive within three days.",
    "Is there anything else I can help with?",
]


class Switch:
    """A fault plan that can be switched at any time: the provider is broken while ``fault`` is set."""

    def __init__(self, fault: str | None = None):
        self.fault = fault

    def __call__(self, index: int, text: str) -> str | None:
        return self.fault


@pytest.fixture(autouse=True)
async def _close_recovery():
    yield
    await close_recovery()


@pytest.fixture(scope="module")
def redis(tmp_path_factory):
    with running(RedisServer(tmp_path_factory.mktemp("redis-health"))) as server:
        yield server


@pytest.fixture(params=["memory", "redis"])
async def store(request):
    """A fresh store shared by the test's calls: in memory, or a real redis-server."""
    if request.param == "memory":
        yield InMemoryHealthStore()
        return
    shared = RedisHealthStore(request.getfixturevalue("redis").url, key_prefix=uuid.uuid4().hex)
    assert await shared.connect(timeout=5)
    yield shared
    await close_recovery()
    await shared.close()


def pair(primary_faults=None, backup_faults=None) -> dict[str, ScriptedTTSService]:
    """A primary and a backup; a fault strikes before any audio of the request."""
    return {
        "primary": ScriptedTTSService(
            provider_index=0, faults=primary_faults, name="primary", stall_after_words=0
        ),
        "backup": ScriptedTTSService(
            provider_index=1, faults=backup_faults, name="backup", stall_after_words=0
        ),
    }


def failover(services, store, **kwargs) -> FailoverTTSService:
    kwargs.setdefault("first_audio_timeout", 0.3)
    kwargs.setdefault("stall_timeout", 0.3)
    return FailoverTTSService(services=services, store=store, **kwargs)


async def call(tts, sentences=SENTENCES[:1], *, settle=None) -> PipelineHarness:
    """One call saying each sentence as a turn; ``settle`` is awaited before it ends."""
    async with PipelineHarness(tts) as h:
        for i, sentence in enumerate(sentences):
            await h.send(TTSSpeakFrame(sentence))
            await h.wait_for(lambda i=i: len(h.of(TTSStoppedFrame)) > i)
        if settle is not None:
            await settle()
    return h


async def until(predicate, timeout: float = 5.0):
    async with asyncio.timeout(timeout):
        while not await predicate():
            await asyncio.sleep(0.01)


def callers_words(service: ScriptedTTSService) -> list[str]:
    """What a provider was asked by callers (probes left out)."""
    return [r for r in service.requests if r != PROBE_TEXT]


async def is_down(store, pid="primary") -> bool:
    return (await store.get([pid]))[pid].down_until is not None


NO_PROBES = HealthPolicy(confirm_probes=0, jitter=0.0)


#
# One hiccup is not an outage
#


async def test_an_isolated_failure_confirmed_healthy_by_a_probe_ejects_nobody(store):
    recorder = EventRecorder()
    services = pair(plan({0: "error"}))  # the first request fails, the probe after it speaks
    tts = failover(services, store, alerters=[recorder])
    await call(tts, SENTENCES[:2], settle=lambda: until(lambda: _probed(recorder, 1)))

    assert [(p.purpose, p.ok) for p in recorder.of(ProbeFinished)] == [("confirm", True)]
    assert not await is_down(store)
    assert recorder.of(ProviderDown) == []
    # The next call starts on the primary.
    second = pair()
    await call(failover(second, store), SENTENCES[:1])
    assert second["primary"].requests == SENTENCES[:1]


async def _probed(recorder: EventRecorder, n: int) -> bool:
    return len(recorder.of(ProbeFinished)) >= n


async def test_a_provider_failing_every_request_is_ejected_before_the_next_caller_meets_it(store):
    # One call at a time: the caller's failure and two probes through the
    # call's idle primary, which fail too, are three in a row.
    recorder = EventRecorder()
    services = pair(plan(every="error"))
    tts = failover(services, store, alerters=[recorder])
    await call(tts, SENTENCES[:2], settle=lambda: until(lambda: is_down(store)))

    assert [(p.purpose, p.ok) for p in recorder.of(ProbeFinished)] == [("confirm", False)] * 2
    [down] = recorder.of(ProviderDown)
    assert (down.provider_id, down.rule) == ("primary", "consecutive")
    second = pair()
    await call(failover(second, store), SENTENCES[:1])
    assert callers_words(second["primary"]) == []


async def test_without_confirmation_one_call_s_failure_is_not_enough(store):
    # The consecutive rule alone (no probes): one failed sentence ejects nobody.
    services = pair(plan({0: "error"}))
    await call(failover(services, store, health=NO_PROBES), SENTENCES[:2])
    health = (await store.get(["primary"]))["primary"]
    assert health.down_until is None and health.failures == 1


#
# Consecutive failures across the fleet
#


async def test_consecutive_failures_across_calls_eject_at_the_threshold(store):
    policy = HealthPolicy(consecutive=3, confirm_probes=0, min_volume=100)
    for n in range(1, 4):
        services = pair(plan(every="error"))
        await call(failover(services, store, health=policy), SENTENCES[:1])
        assert await is_down(store) is (n == 3), n
        if n < 3:
            assert (await store.get(["primary"]))["primary"].failures == n


async def test_a_success_in_between_resets_the_consecutive_count(store):
    policy = HealthPolicy(consecutive=2, confirm_probes=0, min_volume=100)
    await call(failover(pair(plan(every="error")), store, health=policy), SENTENCES[:1])
    await call(failover(pair(), store, health=policy), SENTENCES[:1])  # the primary speaks
    await call(failover(pair(plan(every="error")), store, health=policy), SENTENCES[:1])
    assert not await is_down(store)
    assert (await store.get(["primary"]))["primary"].failures == 1


#
# Failure rate over the window, with a volume floor
#


async def test_failure_rate_ejects_once_the_window_has_its_volume(store):
    # Every other sentence fails: never three in a row, but half of them.
    policy = HealthPolicy(consecutive=100, confirm_probes=0, min_volume=6, failure_rate=0.5)
    services = pair(plan({i: "error" for i in range(0, 12, 2)}))
    tts = failover(services, store, health=policy, failure_threshold=100)
    recorder = EventRecorder()
    tts._listeners.append(recorder)
    sentences = [f"Sentence number {i}." for i in range(12)]
    async with PipelineHarness(tts) as h:
        for i, sentence in enumerate(sentences):
            await h.send(TTSSpeakFrame(sentence))
            await h.wait_for(lambda i=i: len(h.of(TTSStoppedFrame)) > i)
            await tts._writer.drain(1.0)
            health = (await store.get(["primary"]))["primary"]
            if health.down_until is not None:
                break
    # Judged at each failure: ejected at the seventh attempt (4 of 7 failed), not before.
    assert i == 6
    [down] = recorder.of(ProviderDown)
    assert down.rule == "rate"


async def test_below_the_volume_floor_a_high_failure_rate_ejects_nobody(store):
    policy = HealthPolicy(consecutive=100, confirm_probes=0, min_volume=20, failure_rate=0.5)
    services = pair(plan({i: "error" for i in range(0, 12, 2)}))
    tts = failover(services, store, health=policy, failure_threshold=100)
    await call(tts, [f"Sentence number {i}." for i in range(12)])
    health = (await store.get(["primary"]))["primary"]
    assert health.down_until is None
    assert (health.attempts, health.window_failures) == (12, 6)


#
# Permanent failures, unusable services
#


async def test_a_permanent_failure_ejects_at_once_with_its_real_reason(store):
    recorder = EventRecorder()
    services = pair(plan(every="auth"))
    await call(failover(services, store, alerters=[recorder]), SENTENCES[:1])
    [down] = recorder.of(ProviderDown)
    assert (down.reason, down.rule) == (FailureReason.AUTHENTICATION, "permanent")
    assert recorder.of(ProbeFinished) == []  # nothing to confirm


async def test_a_provider_skipped_as_unusable_is_reported_ejected_and_alerted_once(store):
    recorder = EventRecorder()
    services = pair()
    await services["primary"].set_usable(False)  # as pipecat does after a permanent error
    tts = failover(services, store, alerters=[recorder])
    failed, moves = [], []

    @tts.event_handler("on_sentence_failed")
    async def on_failed(processor, pid, reason):
        failed.append((pid, reason))

    @tts.event_handler("on_failover")
    async def on_failover(processor, from_id, to_id, reason):
        moves.append((from_id, to_id, reason))

    await call(tts, SENTENCES[:2])
    assert failed == [("primary", FailureReason.UNUSABLE)]
    assert moves == [("primary", "backup", FailureReason.UNUSABLE)]
    assert tts.active_provider == "backup"
    assert [(d.provider_id, d.rule) for d in recorder.of(ProviderDown)] == [
        ("primary", "permanent")
    ]
    assert await is_down(store)
    assert services["primary"].requests == []


#
# Ejection length grows, and shrinks back
#


async def test_repeated_ejections_last_longer():
    # Wall-clock time, moved on by hand: recovery (which sleeps on the wall
    # clock until shortly before an ejection ends) stays out of the way.
    offset = [0.0]
    store = InMemoryHealthStore(clock=lambda: time.time() + offset[0])
    policy = HealthPolicy(consecutive=1, confirm_probes=0, jitter=0.0, ejection=10)
    lengths = []
    for _ in range(3):
        await call(failover(pair(plan(every="error")), store, health=policy), SENTENCES[:1])
        health = (await store.get(["primary"]))["primary"]
        lengths.append(health.down_until - health.since)
        await store.mark_up("primary")  # a probe spoke
        offset[0] += 1
    assert lengths == [10, 20, 30]
    # After a healthy spell the history is forgiven, one ejection per spell.
    offset[0] += 2 * policy.forgive_after
    await call(failover(pair(plan(every="error")), store, health=policy), SENTENCES[:1])
    health = (await store.get(["primary"]))["primary"]
    assert health.down_until - health.since == 20


#
# The panic floor
#


async def test_the_last_provider_up_is_never_ejected_for_failures(store):
    await store.mark_down("backup", reason=FailureReason.ERROR, cooldown=60)
    recorder = EventRecorder()
    policy = HealthPolicy(consecutive=1, confirm_probes=0)
    services = pair(plan({0: "error"}))
    await call(failover(services, store, health=policy, alerters=[recorder]), SENTENCES[:2])
    assert not await is_down(store)
    assert [(e.provider_id, e.cause) for e in recorder.of(FailureExcused)] == [
        ("primary", "panic_floor")
    ]


async def test_with_every_provider_down_calls_keep_preference_order(store):
    for pid in ("primary", "backup"):
        await store.mark_down(pid, reason=FailureReason.ERROR, cooldown=60)
    services = pair()
    tts = failover(services, store)
    h = await call(tts, SENTENCES[:1])
    assert tts.active_provider == "primary"
    assert services["primary"].requests == SENTENCES[:1]
    assert len(h.audio) > 0


#
# Blame yourself first
#


async def speak_with_the_loop_blocked(tts, block: float) -> PipelineHarness:
    """One sentence; the event loop is blocked (a CPU-bound stretch) for ``block`` s once it is asked."""
    async with PipelineHarness(tts) as h:
        await h.send(TTSSpeakFrame(SENTENCES[0]))
        if block:
            await asyncio.sleep(0.05)  # the request is out
            time.sleep(block)  # noqa: ASYNC251 - the point: an overloaded process
        await h.wait_for(lambda: h.of(TTSStoppedFrame))
    return h


async def test_a_deadline_gives_the_provider_back_the_time_the_loop_lost(store):
    # The primary answers in 0.2 s, inside its 0.3 s deadline; the loop is
    # blocked for 0.6 s meanwhile. That is this process's lateness, not the
    # provider's: it keeps the sentence.
    recorder = EventRecorder()
    services = pair()
    services["primary"].ttfb = 0.2
    tts = failover(services, store, alerters=[recorder])
    failed = []

    @tts.event_handler("on_sentence_failed")
    async def on_failed(processor, pid, reason):
        failed.append((pid, reason))

    await speak_with_the_loop_blocked(tts, 0.6)
    assert failed == []
    assert services["backup"].requests == []


@pytest.mark.parametrize("blocked", [True, False], ids=["loop-blocked", "loop-fine"])
async def test_failures_judged_while_the_loop_lagged_are_not_held_against_the_provider(
    blocked, store
):
    # Blocked for longer than a deadline gives back (twice the deadline), the
    # call moves on, but the failure is not the provider's. Unblocked, the same
    # provider really is too slow.
    recorder = EventRecorder()
    policy = HealthPolicy(consecutive=1, confirm_probes=0, max_loop_lag=0.2)
    services = pair()
    services["primary"].ttfb = 0.2 if blocked else 0.5
    tts = failover(services, store, health=policy, alerters=[recorder])
    await speak_with_the_loop_blocked(tts, 1.5 if blocked else 0.0)
    assert [f.reason for f in recorder.events if hasattr(f, "reason") and f.reason][:1] == [
        FailureReason.NO_FIRST_AUDIO
    ]
    excused = [(e.provider_id, e.cause) for e in recorder.of(FailureExcused)]
    if blocked:
        assert excused == [("primary", "loop_lag")]
        assert not await is_down(store)
    else:
        assert excused == []
        assert await is_down(store)


#
# Recovery with no probe configured costs no caller
#


async def test_an_ejected_provider_is_probed_back_through_a_live_call_s_idle_service(store):
    recorder = EventRecorder()
    outage = Switch("error")
    policy = HealthPolicy(ejection=0.5, jitter=0.0)
    first = pair(outage)
    await call(
        failover(first, store, health=policy, alerters=[recorder], probe_backoff=0.1),
        SENTENCES[:2],
        settle=lambda: until(lambda: is_down(store)),
    )
    outage.fault = None  # the provider is fixed
    # A live call on the backup: recovery probes the primary through its idle service.
    second = pair(outage)
    tts = failover(second, store, health=policy, alerters=[recorder], probe_backoff=0.1)
    await call(
        tts,
        SENTENCES[:1],
        settle=lambda: until(lambda: _came_back(recorder)),
    )
    assert tts.active_provider == "backup"
    assert second["primary"].requests == [PROBE_TEXT]  # no caller's words
    assert [p.purpose for p in recorder.of(ProbeFinished)][-1] == "recovery"
    third = pair()
    await call(failover(third, store, health=policy), SENTENCES[:1])
    assert third["primary"].requests == SENTENCES[:1]


async def _came_back(recorder: EventRecorder) -> bool:
    return bool(recorder.of(ProviderUp))


async def test_with_no_call_to_probe_through_an_ejected_provider_stays_down(store):
    policy = HealthPolicy(ejection=0.3, jitter=0.0)
    services = pair(plan(every="error"))
    await call(
        failover(services, store, health=policy),
        SENTENCES[:2],
        settle=lambda: until(lambda: is_down(store)),
    )
    # Past the ejection's end, nobody could probe it: it is kept down, so the
    # next caller is not the probe.
    health = (await store.get(["primary"]))["primary"]
    await asyncio.sleep(max(0.0, health.down_until - time.time()) + 0.5)
    assert await is_down(store)
    second = pair()
    await call(failover(second, store, health=policy), SENTENCES[:1])
    assert callers_words(second["primary"]) == []


#
# Configuration
#


def test_health_policy_rejects_nonsense():
    with pytest.raises(ValueError, match="failure_rate"):
        HealthPolicy(failure_rate=1.5)
    with pytest.raises(ValueError, match="max_ejection"):
        HealthPolicy(ejection=60, max_ejection=30)
    with pytest.raises(ValueError, match="bucket"):
        HealthPolicy(window=5, bucket=10)
    with pytest.raises(TypeError, match="confirm_probes"):
        HealthPolicy(confirm_probes=1.5)
    services = pair()
    with pytest.raises(TypeError, match="health must be a HealthPolicy"):
        FailoverTTSService(services=services, health={"consecutive": 3})
    with pytest.raises(ValueError, match="cooldown or health"):
        FailoverTTSService(services=pair(), cooldown=30, health=HealthPolicy())


def test_cooldown_is_the_first_ejection_s_length():
    tts = FailoverTTSService(services=pair(), cooldown=45)
    assert tts._health.ejection == 45


async def test_a_broken_key_is_reported_moved_off_and_ejected_with_its_real_reason(store):
    # pipecat's Cartesia service is refused with 401 when it connects, and
    # pipecat marks it unusable: the call must say so, not skip it silently.
    recorder = EventRecorder()
    async with providers() as emulators:
        cartesia = CartesiaTTSService(
            api_key="wrong",
            url=emulators.cartesia.websocket_url,
            settings=CartesiaTTSService.Settings(voice=VOICE),
        )
        tts = FailoverTTSService(
            services={"cartesia": cartesia, "elevenlabs": emulators.service("elevenlabs_ws")},
            store=store,
            alerters=[recorder],
        )
        failures, moves = [], []

        @tts.event_handler("on_sentence_failed")
        async def on_failed(processor, pid, reason):
            failures.append((pid, reason))

        @tts.event_handler("on_failover")
        async def on_failover(processor, from_id, to_id, reason):
            moves.append((from_id, to_id, reason))

        sentences = ["Your order shipped.", "It arrives on Monday."]
        h = await call(tts, sentences)
    assert failures == [("cartesia", FailureReason.AUTHENTICATION)]
    assert moves == [("cartesia", "elevenlabs", FailureReason.AUTHENTICATION)]
    assert tts.active_provider == "elevenlabs"
    [down] = recorder.of(ProviderDown)
    assert (down.provider_id, down.reason, down.rule) == (
        "cartesia",
        FailureReason.AUTHENTICATION,
        "permanent",
    )
    assert "401" in (down.error or "") or "nvalid" in (down.error or "")
    assert h.words == [w for s in sentences for w in s.split()]
    assert emulators.cartesia.requests == []


_WORKER = """
import asyncio, sys
from pipecat_tts_failover import FailoverTTSService, HealthPolicy
from pipecat_tts_failover.events import ProviderDown
from pipecat_tts_failover.recovery import close_recovery
from pipecat_tts_failover.store.redis import RedisHealthStore
from tests.support.scripted import ScriptedTTSService, plan
from tests.test_health import call

class Downs:
    def __init__(self):
        self.n = 0
    def on_event(self, event):
        self.n += isinstance(event, ProviderDown)

async def main(url, prefix):
    store = RedisHealthStore(url, key_prefix=prefix)
    assert await store.connect(timeout=5)
    downs = Downs()
    services = {
        "primary": ScriptedTTSService(provider_index=0, faults=plan(every="error"),
                                      stall_after_words=0, name="primary"),
        "backup": ScriptedTTSService(provider_index=1, name="backup"),
    }
    tts = FailoverTTSService(services=services, store=store, first_audio_timeout=0.3,
                             health=HealthPolicy(consecutive=2, confirm_probes=0),
                             alerters=[downs])
    await call(tts, ["Hello there."])
    await close_recovery()
    print(downs.n, flush=True)
    await store.close()

asyncio.run(main(*sys.argv[1:]))
"""


async def test_two_worker_processes_build_one_fleet_s_evidence(redis):
    # Each worker's call fails the primary once; neither alone is evidence
    # enough (two in a row), together they eject it, once.
    prefix = uuid.uuid4().hex
    alerts = []
    for _ in range(2):
        worker = await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            _WORKER,
            redis.url,
            prefix,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.DEVNULL,
        )
        out, _ = await asyncio.wait_for(worker.communicate(), timeout=60)
        assert worker.returncode == 0
        alerts.append(int(out.decode().split()[-1]))
    assert alerts == [0, 1]
    reader = RedisHealthStore(redis.url, key_prefix=prefix)
    assert await reader.connect(timeout=5)
    try:
        health = (await reader.get(["primary"]))["primary"]
        assert health.down_until is not None and health.reason is FailureReason.ERROR
    finally:
        await reader.close()
