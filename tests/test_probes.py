"""Recovery probes through the official SDKs and pipecat services, against the provider emulators."""

import asyncio

import pytest
from pipecat.frames.frames import TTSSpeakFrame, TTSStoppedFrame

from pipecat_tts_failover import CartesiaProbe, ElevenLabsProbe, FailoverTTSService, ServiceProbe
from pipecat_tts_failover.detection import FailureReason
from pipecat_tts_failover.events import ProbeFinished, ProviderUp
from pipecat_tts_failover.recovery import PROBE_TEXT, close_recovery, run_probe
from pipecat_tts_failover.store.memory import InMemoryHealthStore
from pipecat_tts_failover.store.redis import RedisHealthStore
from pipecat_tts_failover.testing import CartesiaEmulator, ElevenLabsEmulator
from tests.support.calls import EventRecorder
from tests.support.emulators import API_KEY, cartesia_ws, elevenlabs_ws
from tests.support.pipeline import PipelineHarness
from tests.support.redis_server import RedisServer, running

SENTENCES = ["Thanks for holding.", "Your ticket is open.", "Anything else today?"]


@pytest.fixture(autouse=True)
async def _close_recovery():
    yield
    await close_recovery()


def probe_for(emu, **kwargs):
    if isinstance(emu, CartesiaEmulator):
        return CartesiaProbe(API_KEY, voice_id="v", base_url=emu.http_url, **kwargs)
    return ElevenLabsProbe(API_KEY, voice_id="v", base_url=emu.http_url, **kwargs)


@pytest.mark.parametrize("emulator", [CartesiaEmulator, ElevenLabsEmulator])
@pytest.mark.parametrize(
    "fault, reason",
    [
        (None, None),
        ("zeros", FailureReason.SILENT_AUDIO),
        ("hang", FailureReason.NO_FIRST_AUDIO),
        ("reject-401", FailureReason.AUTHENTICATION),
        ("reject-503", FailureReason.SERVER_ERROR),
    ],
)
async def test_sdk_probe_judges_the_provider(emulator, fault, reason):
    async with emulator(fault=fault, speed=20) as emu:
        probe = probe_for(emu)
        verdict = await run_probe(probe, first_audio_timeout=1.0, silence_floor=16.0)
        assert verdict.reason is reason, verdict
        assert verdict.ok is (reason is None)
        assert API_KEY not in repr(probe)
        if fault != "reject-401":
            assert len(emu.requests) >= 1


async def test_cartesia_probe_streams_its_first_audio_before_the_synthesis_ends():
    # At real time, a long sentence takes seconds to synthesize: the probe must
    # pass on its first chunk, not on the whole body.
    async with CartesiaEmulator(speed=1.0) as emu:
        probe = probe_for(emu, text="This sentence takes a good few seconds to say at real time.")
        verdict = await run_probe(probe, first_audio_timeout=1.5, silence_floor=16.0)
        assert verdict.ok, verdict


async def test_service_probe_speaks_through_a_pipecat_service():
    async with CartesiaEmulator(speed=20) as emu:
        probe = ServiceProbe(lambda: cartesia_ws(emu))
        verdict = await run_probe(probe, first_audio_timeout=3.0, silence_floor=16.0)
        assert verdict.ok, verdict
        emu.set_fault("zeros")
        verdict = await run_probe(probe, first_audio_timeout=3.0, silence_floor=16.0)
        assert verdict.reason is FailureReason.SILENT_AUDIO


@pytest.fixture(scope="module")
def redis(tmp_path_factory):
    with running(RedisServer(tmp_path_factory.mktemp("redis-probes"))) as server:
        yield server


@pytest.fixture(params=["memory", "redis"])
async def any_store(request):
    if request.param == "memory":
        yield InMemoryHealthStore()
        return
    store = RedisHealthStore(request.getfixturevalue("redis").url, key_prefix="probes-e2e")
    assert await store.connect(timeout=5)
    yield store
    await close_recovery()
    await store.close()


async def test_outage_probes_recovery_and_calls_back_on_the_primary_end_to_end(any_store):
    store = any_store
    recorder = EventRecorder()
    async with (
        CartesiaEmulator(fault="hang", speed=20) as cartesia,
        ElevenLabsEmulator(speed=20) as eleven,
    ):

        def failover():
            return FailoverTTSService(
                services={"cartesia": cartesia_ws(cartesia), "elevenlabs": elevenlabs_ws(eleven)},
                store=store,
                first_audio_timeout=0.5,
                cooldown=1.8,
                probes={"cartesia": probe_for(cartesia)},
                probe_backoff=0.2,
                alerters=[recorder],
            )

        def recovery_probes() -> list[ProbeFinished]:
            return [
                e
                for e in recorder.events
                if isinstance(e, ProbeFinished) and e.purpose == "recovery"
            ]

        async with PipelineHarness(failover()) as h:
            await h.send(TTSSpeakFrame(SENTENCES[0]))
            await h.wait_for(lambda: h.of(TTSStoppedFrame))
            # The call confirms the failure through its idle primary: the fleet ejects it.
            async with asyncio.timeout(10):
                while (await store.get(["cartesia"]))["cartesia"].down_until is None:
                    await asyncio.sleep(0.02)
        assert h.words == SENTENCES[0].split()
        confirmations = [e for e in recorder.events if isinstance(e, ProbeFinished)]
        assert [(e.purpose, e.ok) for e in confirmations] == [("confirm", False)] * 2
        # The recovery probes run against the still-broken primary and fail...
        async with asyncio.timeout(10):
            while len(recovery_probes()) < 2:
                await asyncio.sleep(0.02)
        assert (await store.get(["cartesia"]))["cartesia"].down_until is not None
        calls_during_outage = len(cartesia.requests)
        # ...a call during the outage sends the primary nothing...
        async with PipelineHarness(failover()) as h:
            await h.send(TTSSpeakFrame(SENTENCES[1]))
        assert h.words == SENTENCES[1].split()
        # ...until the provider is fixed and a probe speaks.
        cartesia.clear_fault()
        async with asyncio.timeout(15):
            while not [e for e in recorder.events if isinstance(e, ProviderUp)]:
                await asyncio.sleep(0.02)
        probes = recovery_probes()
        assert not probes[0].ok and probes[-1].ok
        assert all(not p.ok for p in probes[:-1])
        # Only probes reached the primary meanwhile (no caller's sentence).
        assert all(r.text == PROBE_TEXT for r in cartesia.requests[calls_during_outage:])

        async with PipelineHarness(failover()) as h:
            await h.send(TTSSpeakFrame(SENTENCES[2]))
        assert h.words == SENTENCES[2].split()
        assert cartesia.requests[-1].text == SENTENCES[2]
