"""Recovery to the primary: probes, backoff, single-flight, canaries, return to primary, operator controls."""

import asyncio

import numpy as np
import pytest
from pipecat.frames.frames import TTSSpeakFrame, TTSStoppedFrame

from pipecat_tts_failover import (
    FailoverTTSService,
    FailureReason,
    HealthPolicy,
    InMemoryHealthStore,
)
from pipecat_tts_failover.events import ProbeFinished, ProviderUp
from pipecat_tts_failover.recovery import (
    PROBE_TEXT,
    ProbeVerdict,
    Recovery,
    close_recovery,
    run_probe,
)
from pipecat_tts_failover.store.base import Controls
from tests.support.calls import EventRecorder
from tests.support.pipeline import PipelineHarness
from tests.support.scripted import ScriptedTTSService, decode_audio, plan

SPEECH = np.full(320, 3000, dtype="<i2").tobytes()
SILENCE = bytes(640)
SENTENCES = ["Good morning caller.", "Your balance is ten dollars.", "Goodbye now."]
VOCABULARY = [w for s in SENTENCES for w in s.split()]


class ScriptedProbe:
    """A probe that follows a list of outcomes, then keeps the last one."""

    def __init__(self, *outcomes: str):
        self.outcomes = list(outcomes)
        self.calls = 0

    async def __call__(self):
        outcome = self.outcomes[min(self.calls, len(self.outcomes) - 1)]
        self.calls += 1
        if outcome == "hang":
            await asyncio.Event().wait()
        if outcome == "raise":
            raise ConnectionError("refused")
        if outcome == "zeros":
            for _ in range(3):
                yield SILENCE
            return
        if outcome == "speak":
            yield SPEECH


@pytest.fixture(autouse=True)
async def _close_recovery():
    yield
    await close_recovery()


@pytest.mark.parametrize(
    "outcome, reason",
    [
        ("speak", None),
        ("zeros", FailureReason.SILENT_AUDIO),
        ("hang", FailureReason.NO_FIRST_AUDIO),
        ("raise", FailureReason.CONNECTIVITY),
        ("empty", FailureReason.NO_AUDIO),
    ],
)
async def test_probe_succeeds_only_with_audible_audio_in_time(outcome, reason):
    verdict = await run_probe(ScriptedProbe(outcome), first_audio_timeout=0.2, silence_floor=16)
    assert verdict.ok is (reason is None)
    assert verdict.reason is reason


async def test_failed_probes_back_off_then_recovery_marks_the_provider_up():
    store = InMemoryHealthStore()
    recorder = EventRecorder()
    probe = ScriptedProbe("raise", "zeros", "speak")
    recovery = Recovery(store, first_audio_timeout=0.1, backoff_base=0.05, jitter=0.0)
    recovery.add({"primary": probe}, [recorder])
    await store.mark_down("primary", reason=FailureReason.ERROR, cooldown=0.2)
    recovery.watch("primary")
    recovery.watch("primary")  # single flight: one task per provider
    assert recovery.watching == ["primary"]

    async with asyncio.timeout(10):
        while not recorder.of(ProviderUp):
            await asyncio.sleep(0.01)
    probes = recorder.of(ProbeFinished)
    assert [(p.ok, p.reason) for p in probes] == [
        (False, FailureReason.CONNECTIVITY),
        (False, FailureReason.SILENT_AUDIO),
        (True, None),
    ]
    assert probe.calls == 3
    assert (await store.get(["primary"]))["primary"].down_until is None
    [up] = recorder.of(ProviderUp)
    assert up.provider_id == "primary" and up.outage_seconds > 0


async def test_a_failing_provider_stays_down_past_its_cooldown():
    store = InMemoryHealthStore()
    recovery = Recovery(store, first_audio_timeout=0.1, backoff_base=5.0, jitter=0.0)
    recovery.add({"primary": ScriptedProbe("hang")})
    await store.mark_down("primary", reason=FailureReason.ERROR, cooldown=0.5)
    recovery.watch("primary")
    await asyncio.sleep(0.8)  # the cooldown alone would have ended by now
    assert (await store.get(["primary"]))["primary"].down_until is not None


async def test_two_workers_racing_to_probe_run_one_probe():
    store = InMemoryHealthStore()
    probe = ScriptedProbe("speak")
    slow = asyncio.Event()

    async def slow_probe():
        probe.calls += 1
        await slow.wait()
        yield SPEECH

    workers = [Recovery(store, first_audio_timeout=1.0) for _ in range(2)]
    recorders = [EventRecorder(), EventRecorder()]
    for worker, recorder in zip(workers, recorders):
        worker.add({"primary": slow_probe}, [recorder])
    await store.mark_down("primary", reason=FailureReason.ERROR, cooldown=0.1)
    for worker in workers:
        worker.watch("primary")
    async with asyncio.timeout(5):
        while probe.calls == 0:
            await asyncio.sleep(0.01)
    slow.set()
    async with asyncio.timeout(10):
        while not any(r.of(ProviderUp) for r in recorders):
            await asyncio.sleep(0.01)
        while any(w.watching for w in workers):
            await asyncio.sleep(0.01)
    assert probe.calls == 1
    assert sum(len(r.of(ProviderUp)) for r in recorders) == 1
    for worker in workers:
        await worker.aclose()


async def down_until_a_probe_speaks(store, recorder: EventRecorder, timeout: float):
    """Check, until a probe brings it back, that the primary stays marked down throughout."""
    async with asyncio.timeout(timeout):
        while not recorder.of(ProviderUp):
            # Down until the probe has spoken, well past its 0.2 s mark-down.
            assert (await store.get(["primary"]))["primary"].down_until is not None
            await asyncio.sleep(0.01)


async def test_a_provider_stays_down_while_its_probe_lock_is_held_elsewhere():
    # Another worker holds the probe lock and never finishes (it died, or Redis
    # is away and no lock can be taken): the mark-down must outlast its length
    # until this worker's probe speaks, so that no caller is the probe.
    store = InMemoryHealthStore()
    recorder = EventRecorder()
    recovery = Recovery(store, first_audio_timeout=0.2)
    recovery.add({"primary": ScriptedProbe("speak")}, [recorder])
    assert await store.try_lock("probe:primary", ttl=3 * recovery.lead)
    await store.mark_down("primary", reason=FailureReason.ERROR, cooldown=0.2)
    recovery.watch("primary")
    await down_until_a_probe_speaks(store, recorder, timeout=10)
    [probe] = recorder.of(ProbeFinished)
    assert probe.ok
    await recovery.aclose()


async def test_a_probe_with_no_verdict_keeps_the_provider_down():
    # A probe cut short, or failed while this process lagged, says nothing of
    # the provider: it must not come back until a probe has spoken.
    store = InMemoryHealthStore()
    recorder = EventRecorder()
    recovery = Recovery(store, first_audio_timeout=0.2)
    recovery.add({}, [recorder])
    verdicts = [None, None, ProbeVerdict(True, None, 0.01)]

    def source(provider_id: str):
        async def run():
            await asyncio.sleep(0.15)  # two of them outlast the mark-down
            return verdicts.pop(0)

        return run if provider_id == "primary" else None

    recovery.offer(object(), source)
    await store.mark_down("primary", reason=FailureReason.ERROR, cooldown=0.2)
    recovery.watch("primary")
    await down_until_a_probe_speaks(store, recorder, timeout=20)
    assert verdicts == []
    await recovery.aclose()


def providers(primary_plan=None):
    return {
        "primary": ScriptedTTSService(provider_index=0, faults=primary_plan, name="primary"),
        "backup": ScriptedTTSService(provider_index=1, name="backup"),
    }


async def speak(tts, sentences=SENTENCES):
    async with PipelineHarness(tts) as h:
        await h.send(*(TTSSpeakFrame(s) for s in sentences))
    return h


async def test_recovered_primary_takes_the_next_call_end_to_end():
    store = InMemoryHealthStore()
    recorder = EventRecorder()
    probe = ScriptedProbe("zeros", "speak")
    first = providers(plan(every="hang"))
    tts = FailoverTTSService(
        services=first,
        store=store,
        first_audio_timeout=0.2,
        cooldown=1.3,
        probes={"primary": probe},
        probe_backoff=0.05,
        alerters=[recorder],
    )
    async with PipelineHarness(tts) as h:
        await h.send(TTSSpeakFrame(SENTENCES[0]))
        await h.wait_for(lambda: h.of(TTSStoppedFrame))
        # The call confirms the failure through its idle primary: the fleet ejects it.
        async with asyncio.timeout(5):
            while (await store.get(["primary"]))["primary"].down_until is None:
                await asyncio.sleep(0.01)
    # While down, a new call stays off the primary.
    second = providers()
    await speak(FailoverTTSService(services=second, store=store), SENTENCES[:1])
    assert second["primary"].requests == []

    async with asyncio.timeout(10):
        while not recorder.of(ProviderUp):
            await asyncio.sleep(0.01)
    recovery_probes = [p for p in recorder.of(ProbeFinished) if p.purpose == "recovery"]
    assert [p.ok for p in recovery_probes] == [False, True]
    # Before that, the first call confirmed the failure through its idle primary.
    assert [p.purpose for p in recorder.of(ProbeFinished)][:2] == ["confirm", "confirm"]
    third = providers()
    h = await speak(FailoverTTSService(services=third, store=store))
    assert third["primary"].requests == SENTENCES
    assert {i for _, i in decode_audio(h.audio, VOCABULARY)} == {0}


async def test_return_to_primary_immediately_moves_a_call_in_progress_back():
    store = InMemoryHealthStore()
    services = providers(plan({0: "hang"}))
    tts = FailoverTTSService(
        services=services,
        store=store,
        first_audio_timeout=0.2,
        return_to_primary="immediately",
        health=HealthPolicy(consecutive=1, confirm_probes=0),
    )
    async with PipelineHarness(tts) as h:
        await h.send(TTSSpeakFrame(SENTENCES[0]))
        async with asyncio.timeout(5):
            while (await store.get(["primary"]))["primary"].down_until is None:
                await asyncio.sleep(0.01)
        await h.send(TTSSpeakFrame(SENTENCES[1]))
        await h.wait_for(lambda: len(h.of(TTSStoppedFrame)) == 2)
        # Between sentences: the next one moves back.
        await store.mark_up("primary")  # what recovery does when a probe speaks
        await h.send(TTSSpeakFrame(SENTENCES[2]))
    assert services["backup"].requests == SENTENCES[:2]
    assert services["primary"].requests == [SENTENCES[0], SENTENCES[2]]
    assert [w for w, _ in decode_audio(h.audio, VOCABULARY)] == VOCABULARY


async def test_by_default_a_call_in_progress_stays_on_its_provider():
    store = InMemoryHealthStore()
    services = providers(plan({0: "hang"}))
    tts = FailoverTTSService(services=services, store=store, first_audio_timeout=0.2)
    async with PipelineHarness(tts) as h:
        await h.send(TTSSpeakFrame(SENTENCES[0]))
        await h.wait_for(lambda: len(services["backup"].requests) == 1)
        await store.mark_up("primary")
        await h.send(TTSSpeakFrame(SENTENCES[1]))
    # The primary was asked again only by the probes confirming its failure.
    assert [r for r in services["primary"].requests if r != PROBE_TEXT] == SENTENCES[:1]


async def test_canary_call_that_speaks_marks_the_primary_up():
    store = InMemoryHealthStore()
    await store.mark_down("primary", reason=FailureReason.ERROR, cooldown=60)
    recorder = EventRecorder()
    services = providers()
    tts = FailoverTTSService(
        services=services, store=store, canary_fraction=1.0, alerters=[recorder]
    )
    await speak(tts, SENTENCES[:1])
    assert services["primary"].requests == SENTENCES[:1]
    assert (await store.get(["primary"]))["primary"].down_until is None
    assert [e.provider_id for e in recorder.of(ProviderUp)] == ["primary"]


async def test_pin_forces_new_calls_onto_one_provider():
    store = InMemoryHealthStore()
    await store.set_controls(Controls(pinned="backup"))
    services = providers()
    tts = FailoverTTSService(services=services, store=store)
    await speak(tts, SENTENCES[:1])
    assert services["primary"].requests == [] and services["backup"].requests == SENTENCES[:1]


async def test_kill_switch_disables_failover():
    store = InMemoryHealthStore()
    await store.set_controls(Controls(failover_enabled=False))
    services = providers(plan({0: "hang"}))
    tts = FailoverTTSService(services=services, store=store, first_audio_timeout=0.2)
    async with PipelineHarness(tts) as h:
        for i, sentence in enumerate(SENTENCES[:2]):
            await h.send(TTSSpeakFrame(sentence))
            await h.wait_for(lambda i=i: len(h.of(TTSStoppedFrame)) > i)
    assert services["backup"].requests == []
    assert services["primary"].requests == SENTENCES[:2]
    assert [w for w, _ in decode_audio(h.audio, VOCABULARY)] == SENTENCES[1].split()
    assert (await store.get(["primary"]))["primary"].down_until is None


def test_recovery_configuration_errors():
    with pytest.raises(ValueError, match="unknown providers"):
        FailoverTTSService(services=providers(), probes={"nobody": ScriptedProbe("speak")})
    with pytest.raises(ValueError, match="return_to_primary"):
        FailoverTTSService(services=providers(), return_to_primary="sometimes")
    with pytest.raises(ValueError, match="canary_fraction"):
        FailoverTTSService(services=providers(), canary_fraction=1.5)
