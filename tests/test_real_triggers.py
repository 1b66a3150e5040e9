"""The real services' own triggers, no fault injected: pipecat's services alone and inside FailoverTTSService.

The emulators fail a call the way the providers do on their own (ElevenLabs'
5-context cap, a plan's concurrency limit, an account's credits, a settings
change); these tests drive real pipecat pipelines into them, as the fault
matrix's "Real triggers" rows do, and check what the caller hears.
"""

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Sequence

import aiohttp
import pytest
from pipecat.frames.frames import (
    AggregatedTextFrame,
    InterruptionFrame,
    LLMFullResponseEndFrame,
    LLMFullResponseStartFrame,
    LLMTextFrame,
    TTSAudioRawFrame,
    TTSSpeakFrame,
    TTSTextFrame,
    TTSUpdateSettingsFrame,
)
from pipecat.services.elevenlabs.tts import ElevenLabsTTSService
from websockets.asyncio.client import connect

from pipecat_tts_failover import FailureReason, InMemoryHealthStore
from pipecat_tts_failover.testing import CartesiaEmulator, ElevenLabsEmulator
from tests.support.emulators import API_KEY, SAMPLE_RATE
from tests.support.integration import (
    MS_PER_CHAR,
    SENTENCES,
    Call,
    Kind,
    Providers,
    failover,
    hear,
    provider_of,
    reference,
    speak_call,
)
from tests.support.pipeline import PipelineHarness

# Replies the caller barges in on; none of their words is a word of SENTENCES.
BARGED_REPLIES = tuple(
    f"Reply {n} opens with a rather long clause about shipping and handling charges."
    for n in ("one", "two", "three", "four", "five")
)


@contextlib.asynccontextmanager
async def emulators(
    *, speed: float = 20.0, cartesia: dict | None = None, elevenlabs: dict | None = None
) -> AsyncIterator[Providers]:
    """Both emulators with the plan's numbers a test needs (or a pace of their own), and HTTP."""
    common = {"speed": speed, "ms_per_char": MS_PER_CHAR}
    async with (
        CartesiaEmulator(**common | (cartesia or {})) as c,
        ElevenLabsEmulator(**common | (elevenlabs or {})) as e,
        aiohttp.ClientSession() as session,
    ):
        yield Providers(c, e, session)


def with_backup(p: Providers, primary: Kind, store: InMemoryHealthStore | None = None):
    """FailoverTTSService: ``primary``, then the other provider's WebSocket service."""
    backup: Kind = "elevenlabs_ws" if provider_of(primary) == "cartesia" else "cartesia_ws"
    tts = failover(
        {provider_of(primary): p.service(primary), provider_of(backup): p.service(backup)},
        store=store or InMemoryHealthStore(),
    )
    call = Call(SENTENCES)
    call.watch(tts)
    return tts, call


def times_heard(audio: bytes, sentence: str) -> int:
    """How many times every word of ``sentence`` is in the audio, whole (the least of them)."""

    def count(word: str) -> int:
        ref = reference(word)
        found, at = 0, audio.find(ref)
        while at >= 0:
            found += at % 2 == 0
            at = audio.find(ref, at + 1)
        return found

    return min(count(w) for w in sentence.split())


def assert_each_heard_once(audio: bytes, sentences: Sequence[str]):
    assert hear(audio, sentences).missing == []
    assert [times_heard(audio, s) for s in sentences] == [1] * len(sentences)


#
# The emulators' knobs the triggers use
#


async def test_elevenlabs_auto_mode_speaks_each_text_message_without_a_flush():
    # pipecat asks for auto_mode=true when it sends whole sentences: ElevenLabs then
    # generates each message as it comes, with no buffer to wait on.
    async with ElevenLabsEmulator(speed=20.0) as emu:
        url = (
            f"{emu.ws_url}/v1/text-to-speech/v/multi-stream-input"
            "?model_id=eleven_flash_v2_5&output_format=pcm_16000&auto_mode=true"
        )
        async with connect(url, additional_headers={"xi-api-key": API_KEY}) as ws:
            await ws.send(json.dumps({"text": " ", "context_id": "c"}))
            await ws.send(json.dumps({"text": "Your package shipped.", "context_id": "c"}))
            chars = ""
            async with asyncio.timeout(5):
                while chars.strip() != "Your package shipped.":
                    message = json.loads(await ws.recv())
                    chars += "".join((message.get("alignment") or {}).get("chars", []))
    assert emu.requests[0].text == "Your package shipped."


async def test_elevenlabs_character_quota_refuses_what_the_credits_do_not_cover():
    first, second = SENTENCES[0], SENTENCES[1]
    async with (
        ElevenLabsEmulator(speed=20.0, character_quota=len(first) + 2) as emu,
        aiohttp.ClientSession() as session,
    ):
        url = f"{emu.http_url}/v1/text-to-speech/v/stream?output_format=pcm_16000"
        headers = {"xi-api-key": API_KEY}
        async with session.post(url, json={"text": first}, headers=headers) as ok:
            spoken = await ok.read()
        async with session.post(url, json={"text": second}, headers=headers) as refused:
            body = await refused.json()
    assert ok.status == 200 and spoken
    assert refused.status == 401
    assert body["detail"] == {
        "status": "quota_exceeded",
        "message": (
            f"This request exceeds your quota of {len(first) + 2}. You have 2 credits "
            f"remaining, while {len(second)} credits are required for this request."
        ),
    }
    assert [r.refusal for r in emu.requests] == [None, "quota_exceeded"]
    assert emu.characters_used == len(first)


def test_character_quota_is_a_whole_number_of_credits():
    with pytest.raises(ValueError, match="character_quota"):
        ElevenLabsEmulator(character_quota=0)


#
# Through pipecat's services and FailoverTTSService
#


async def test_barge_ins_past_the_context_cap_leave_no_sentence_of_the_next_reply_unheard():
    # At 2x, each reply cut short is still streaming (its context open) when the
    # next opens one: the reply that counts opens the 6th context on the socket.
    async with emulators(speed=2.0, cartesia={"speed": 20.0}) as p:
        tts, call = with_backup(p, "elevenlabs_ws")
        async with PipelineHarness(tts, audio_out_sample_rate=SAMPLE_RATE) as h:
            for reply in BARGED_REPLIES:
                played = len(h.audio)
                await h.send(TTSSpeakFrame(reply))
                await h.wait_for(lambda played=played: len(h.audio) > played)
                await h.send(InterruptionFrame())
            mark = len(h.down)
            call.harness = h
            await h.send(*(TTSSpeakFrame(s) for s in SENTENCES[:2]))
            await h.wait_for(lambda: hear(call.audio, SENTENCES[:2]).missing == [], timeout=8)
        audio = b"".join(f.audio for f in h.down[mark:] if isinstance(f, TTSAudioRawFrame))
    assert [r.refusal for r in p.elevenlabs.requests].count("max_active_conversations") == 1
    assert call.failovers and call.failovers[0][:2] == ("elevenlabs", "cartesia")
    assert_each_heard_once(audio, SENTENCES[:2])


async def test_a_fleet_over_its_concurrency_plan_hears_every_sentence_once_with_failover():
    store = InMemoryHealthStore()  # shared, as a fleet's workers share Redis
    async with emulators(cartesia={"concurrency_limit": 1}) as p:

        async def one_call() -> Call:
            tts, call = with_backup(p, "cartesia_ws", store)
            return await speak_call(tts, SENTENCES[:2], call=call)

        calls = await asyncio.gather(*(one_call() for _ in range(3)))
    assert "concurrency_limited" in {r.refusal for r in p.cartesia.requests}
    for call in calls:
        assert call.ended_gracefully
        assert_each_heard_once(call.audio, SENTENCES[:2])


@pytest.mark.parametrize("primary", ["elevenlabs_ws", "elevenlabs_http"])
async def test_an_account_out_of_credits_mid_call_has_the_backup_say_the_rest(primary: Kind):
    credits = len(SENTENCES[0]) + 2
    async with emulators(elevenlabs={"character_quota": credits}) as p:
        tts, call = with_backup(p, primary)
        await speak_call(tts, SENTENCES, call=call)
    assert "quota_exceeded" in {r.refusal for r in p.elevenlabs.requests}
    assert call.failovers and call.failovers[0][:2] == ("elevenlabs", "cartesia")
    assert_each_heard_once(call.audio, SENTENCES)


async def test_a_settings_change_mid_reply_leaves_no_sentence_unheard_with_failover():
    store = InMemoryHealthStore()
    async with emulators() as p:
        tts, call = with_backup(p, "elevenlabs_ws", store)
        async with PipelineHarness(tts, audio_out_sample_rate=SAMPLE_RATE) as h:
            call.harness = h
            await h.send(LLMFullResponseStartFrame())
            await h.send(LLMTextFrame(SENTENCES[0]), LLMTextFrame(" " + SENTENCES[1]))
            await h.wait_for(lambda: bool(h.audio))
            # pipecat closes the reply's context to apply the new voice settings.
            await h.send(TTSUpdateSettingsFrame(delta=ElevenLabsTTSService.Settings(stability=0.3)))
            await h.send(*(LLMTextFrame(" " + s) for s in SENTENCES[2:]), LLMFullResponseEndFrame())
            with contextlib.suppress(TimeoutError):
                await h.wait_for(lambda: hear(call.audio, SENTENCES).missing == [], timeout=3)
    assert_each_heard_once(call.audio, SENTENCES)
    # The sentences the closed context never spoke failed there, and the backup said
    # them from the first word not heard.
    assert call.failovers == [("elevenlabs", "cartesia", FailureReason.NO_AUDIO)]
    assert p.cartesia.requests[0].text.startswith(SENTENCES[1])
    # Downstream (the transcript, the context) has each word and each sentence once.
    words = " ".join(f.text for f in h.down if isinstance(f, TTSTextFrame)).split()
    assert words == " ".join(SENTENCES).split()
    announced = [f.text.strip() for f in h.down if type(f) is AggregatedTextFrame]
    assert announced == list(SENTENCES)
    # The app's own settings change closed the context: not held against the provider.
    elevenlabs = (await store.get(["elevenlabs"]))["elevenlabs"]
    assert (elevenlabs.failures, elevenlabs.window_failures) == (0, 0)
