"""The Cartesia and ElevenLabs emulators: wire conformance, faults, lifecycle, CLI."""

import asyncio
import base64
import itertools
import json
import logging
import math
import signal
import sys
import time
from collections.abc import Awaitable, Iterable

import aiohttp
import httpx
import numpy as np
import pytest
from cartesia import AsyncCartesia, BadRequestError
from elevenlabs.client import AsyncElevenLabs
from elevenlabs.core.api_error import ApiError
from loguru import logger
from pipecat.frames.frames import TTSStoppedFrame
from pipecat.services.cartesia.tts import CartesiaTTSService
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from pipecat_tts_failover.cli import build_parser
from pipecat_tts_failover.testing import (
    CartesiaEmulator,
    ElevenLabsEmulator,
    Fault,
    FaultKind,
    SynthesisRequest,
)
from pipecat_tts_failover.testing._cli import build_emulator
from pipecat_tts_failover.testing._speech import synthesize
from tests.support.emulators import (
    API_KEY,
    SAMPLE_RATE,
    cartesia_http,
    cartesia_ws,
    elevenlabs_http,
    elevenlabs_ws,
    expected_seconds,
    free_port,
    pcm16,
    rms,
    speak,
)

TEXT = "Hello world, this is a test."
SHORT = "Quick check."
RAW_16K = {"container": "raw", "encoding": "pcm_s16le", "sample_rate": SAMPLE_RATE}
VOICE = {"mode": "id", "id": "emulated-voice"}
# How long to listen for something that must not arrive (hang, stall).
QUIET_S = 0.3


@pytest.fixture
async def cartesia():
    async with CartesiaEmulator() as emu:
        yield emu


@pytest.fixture
async def elevenlabs():
    async with ElevenLabsEmulator() as emu:
        yield emu


@pytest.fixture
async def session():
    async with aiohttp.ClientSession() as s:
        yield s


def cartesia_message(text: str, context_id: str = "ctx-1", **extra) -> str:
    message = {
        "model_id": "sonic-3",
        "voice": VOICE,
        "output_format": RAW_16K,
        "transcript": text,
        "context_id": context_id,
        "continue": False,
        "add_timestamps": True,
    }
    return json.dumps(message | extra)


async def cartesia_context(emu: CartesiaEmulator, text: str = SHORT, **extra) -> list[dict]:
    """Speak one context over a raw WebSocket; every message until done or error."""
    async with connect(emu.websocket_url, additional_headers={"X-API-Key": API_KEY}) as ws:
        await ws.send(cartesia_message(text, **extra))
        messages = []
        async with asyncio.timeout(5):
            while not messages or messages[-1]["type"] not in ("done", "error"):
                messages.append(json.loads(await ws.recv()))
        return messages


def elevenlabs_ws_url(emu: ElevenLabsEmulator, output_format: str = "pcm_16000") -> str:
    return (
        f"{emu.ws_url}/v1/text-to-speech/emulated-voice/multi-stream-input"
        f"?model_id=eleven_flash_v2_5&output_format={output_format}"
    )


async def elevenlabs_context(ws, text: str = SHORT, context_id: str = "ctx-1") -> None:
    """Open a context, send text, and close it, as pipecat does."""
    await ws.send(json.dumps({"text": " ", "context_id": context_id}))
    await ws.send(json.dumps({"text": text, "context_id": context_id}))
    await ws.send(json.dumps({"context_id": context_id, "flush": True}))
    await ws.send(json.dumps({"context_id": context_id, "close_context": True}))


async def elevenlabs_replies(ws) -> list[dict]:
    """Messages until isFinal."""
    messages = []
    async with asyncio.timeout(5):
        while not messages or not messages[-1].get("isFinal"):
            messages.append(json.loads(await ws.recv()))
    return messages


async def cartesia_bytes(
    session: aiohttp.ClientSession, emu: CartesiaEmulator, text: str = SHORT, **headers
) -> aiohttp.ClientResponse:
    return await session.post(
        f"{emu.http_url}/tts/bytes",
        json={"model_id": "sonic-3", "transcript": text, "voice": VOICE, "output_format": RAW_16K},
        headers={"X-API-Key": API_KEY, "Cartesia-Version": "2026-03-01"} | headers,
    )


async def elevenlabs_stream(
    session: aiohttp.ClientSession, emu: ElevenLabsEmulator, text: str = SHORT, **headers
) -> aiohttp.ClientResponse:
    return await session.post(
        f"{emu.http_url}/v1/text-to-speech/emulated-voice/stream",
        params={"output_format": "pcm_16000"},
        json={"text": text, "model_id": "eleven_flash_v2_5"},
        headers={"xi-api-key": API_KEY} | headers,
    )


async def status_of(response: Awaitable[aiohttp.ClientResponse]) -> int:
    """The status of a response, read to the end so its connection is released."""
    async with await response as r:
        await r.read()
        return r.status


def audio_of(messages: Iterable[dict], key: str = "data") -> bytes:
    return b"".join(base64.b64decode(m[key]) for m in messages if m.get(key))


# -- the official SDKs ------------------------------------------------------


async def test_cartesia_sdk_generate_returns_speech_as_long_as_the_text(cartesia):
    client = AsyncCartesia(api_key=API_KEY, base_url=cartesia.http_url, max_retries=0)
    async with client:
        response = await client.tts.generate(
            model_id="sonic-3", transcript=TEXT, voice=VOICE, output_format=RAW_16K
        )
        raw = await response.read()
        wav_response = await client.tts.generate(
            model_id="sonic-3",
            transcript=TEXT,
            voice=VOICE,
            output_format={"container": "wav", "encoding": "pcm_s16le", "sample_rate": 24000},
        )
        wav = await wav_response.read()
    assert len(raw) / 2 / SAMPLE_RATE == pytest.approx(expected_seconds(TEXT), abs=0.05)
    assert rms(raw) > 0.02
    assert wav[:4] == b"RIFF" and wav[8:16] == b"WAVEfmt "
    assert int.from_bytes(wav[24:28], "little") == 24000
    assert (
        len(wav) - 44
        == int.from_bytes(wav[40:44], "little")
        == 2 * round(expected_seconds(TEXT) * 24000)
    )


async def test_cartesia_sdk_websocket_context_streams_chunks_timestamps_and_done(cartesia):
    client = AsyncCartesia(
        api_key=API_KEY,
        base_url=cartesia.http_url,
        websocket_base_url=cartesia.ws_url,
        max_retries=0,
    )
    async with client, client.tts.websocket_connect() as connection:
        context = connection.context(
            model_id="sonic-3", voice=VOICE, output_format=RAW_16K, add_timestamps=True
        )
        await context.push("Hello there. ")
        await context.push("Second part.")
        await context.no_more_inputs()
        events = [event async for event in context.receive()]
    audio = b"".join(e.audio for e in events if e.type == "chunk")
    words = [w for e in events if e.type == "timestamps" for w in e.word_timestamps.words]
    starts = [s for e in events if e.type == "timestamps" for s in e.word_timestamps.start]
    assert events[-1].type == "done"
    assert words == ["Hello", "there.", "Second", "part."]
    assert starts == sorted(starts) and starts[-1] < len(audio) / 2 / SAMPLE_RATE
    assert len(audio) / 2 / SAMPLE_RATE == pytest.approx(
        expected_seconds("Hello there. Second part."), abs=0.05
    )
    assert rms(audio) > 0.02
    assert [r.text for r in cartesia.requests] == ["Hello there. Second part."]


async def test_cartesia_sdk_sse_streams_chunks_and_timestamps(cartesia):
    client = AsyncCartesia(api_key=API_KEY, base_url=cartesia.http_url, max_retries=0)
    async with client:
        stream = await client.tts.generate_sse(
            model_id="sonic-3",
            transcript=TEXT,
            voice=VOICE,
            output_format=RAW_16K,
            add_timestamps=True,
        )
        events = [event async for event in stream]
    audio = b"".join(e.audio for e in events if e.type == "chunk")
    words = [w for e in events if e.type == "timestamps" for w in e.word_timestamps.words]
    assert events[-1].type == "done"
    assert words == TEXT.split()
    assert rms(audio) > 0.02


async def test_elevenlabs_sdk_stream_returns_pcm_speech(elevenlabs):
    async with httpx.AsyncClient() as http:
        client = AsyncElevenLabs(api_key=API_KEY, base_url=elevenlabs.http_url, httpx_client=http)
        audio = b"".join(
            [
                chunk
                async for chunk in client.text_to_speech.stream(
                    "emulated-voice", text=TEXT, output_format="pcm_22050"
                )
            ]
        )
    assert len(audio) / 2 / 22050 == pytest.approx(expected_seconds(TEXT), abs=0.05)
    assert rms(audio) > 0.02
    assert elevenlabs.requests[0].sample_rate == 22050


async def test_elevenlabs_sdk_stream_with_timestamps_aligns_every_character(elevenlabs):
    async with httpx.AsyncClient() as http:
        client = AsyncElevenLabs(api_key=API_KEY, base_url=elevenlabs.http_url, httpx_client=http)
        chunks = [
            chunk
            async for chunk in client.text_to_speech.stream_with_timestamps(
                "emulated-voice", text=TEXT, output_format="pcm_44100"
            )
        ]
    audio = b"".join(base64.b64decode(c.audio_base_64) for c in chunks)
    aligned = [c.alignment for c in chunks if c.alignment]
    characters = "".join(ch for a in aligned for ch in a.characters)
    starts = [t for a in aligned for t in a.character_start_times_seconds]
    ends = [t for a in aligned for t in a.character_end_times_seconds]
    assert characters == TEXT
    assert starts == sorted(starts) and all(e > s for s, e in zip(starts, ends))
    assert ends[-1] == pytest.approx(len(audio) / 2 / 44100, abs=0.01)
    assert rms(audio) > 0.02


async def test_elevenlabs_sdk_sees_the_real_401_shape_for_a_wrong_key(elevenlabs):
    async with httpx.AsyncClient() as http:
        client = AsyncElevenLabs(api_key="wrong", base_url=elevenlabs.http_url, httpx_client=http)
        with pytest.raises(ApiError) as raised:
            async for _ in client.text_to_speech.stream(
                "emulated-voice", text=SHORT, output_format="pcm_16000"
            ):
                pass
    assert raised.value.status_code == 401
    assert raised.value.body["detail"]["status"] == "invalid_api_key"


# -- pipecat's services in a real pipeline ----------------------------------


@pytest.mark.parametrize("kind", ["cartesia_ws", "elevenlabs_ws", "elevenlabs_http"])
async def test_pipecat_services_with_timestamps_speak_every_word_through_the_emulator(
    kind, session
):
    emulator_class = CartesiaEmulator if kind.startswith("cartesia") else ElevenLabsEmulator
    async with emulator_class() as emu:
        if kind == "cartesia_ws":
            service = cartesia_ws(emu)
        elif kind == "elevenlabs_ws":
            service = elevenlabs_ws(emu)
        else:
            service = elevenlabs_http(emu, session)
        spoken = await speak(service, TEXT, SHORT)

    assert spoken.errors == []
    assert spoken.words == TEXT.split() + SHORT.split()
    assert spoken.started_and_stopped
    assert {f.sample_rate for f in spoken.audio_frames} == {SAMPLE_RATE}
    assert spoken.seconds == pytest.approx(expected_seconds(TEXT + SHORT), abs=0.15)
    assert rms(spoken.audio) > 0.02
    assert [r.text.strip() for r in emu.requests] == [TEXT, SHORT]


async def test_pipecat_cartesia_http_service_speaks_through_the_emulator(cartesia):
    spoken = await speak(cartesia_http(cartesia), TEXT)

    assert spoken.errors == []
    assert spoken.words == [TEXT]  # no timestamps over HTTP: pipecat sends the sentence
    assert spoken.started_and_stopped
    assert {f.sample_rate for f in spoken.audio_frames} == {SAMPLE_RATE}
    assert spoken.seconds == pytest.approx(expected_seconds(TEXT), abs=0.05)
    assert rms(spoken.audio) > 0.02
    assert cartesia.requests[0].path == "/tts/bytes"


async def test_pipecat_cartesia_ws_reports_an_in_band_error_as_an_error_frame():
    async with CartesiaEmulator(fault="error") as emu:
        spoken = await speak(cartesia_ws(emu), TEXT)
    assert any("Speech generation failed" in e.error for e in spoken.errors)
    assert spoken.count(TTSStoppedFrame) == 1


async def test_pipecat_ws_services_hear_nothing_from_a_hung_provider():
    async with CartesiaEmulator(fault="hang") as emu:
        spoken = await speak(cartesia_ws(emu), SHORT)
    assert spoken.audio == b""
    assert any("completed with no audio" in e.error for e in spoken.errors)


async def test_pipecat_elevenlabs_ws_reports_no_error_frame_when_the_socket_closes_mid_sentence():
    # A pipecat quirk the failover must cover itself: the sentence is cut short
    # and pipecat only logs a reconnect.
    async with ElevenLabsEmulator(fault="close-1011:80") as emu:
        spoken = await speak(elevenlabs_ws(emu), TEXT)
    assert 0 < spoken.seconds < expected_seconds(TEXT) / 2
    assert spoken.errors == []
    assert spoken.count(TTSStoppedFrame) == 0


async def test_pipecat_services_get_an_error_frame_for_a_rejected_key(session):
    async with ElevenLabsEmulator(api_key="another-key") as emu:
        ws_spoken = await speak(elevenlabs_ws(emu), SHORT)
        http_spoken = await speak(elevenlabs_http(emu, session), SHORT)
    # As on the real API, the WebSocket opens, then closes with 1008.
    assert any("1008 (policy violation) Invalid API key" in e.error for e in ws_spoken.errors)
    assert any("invalid_api_key" in e.error for e in http_spoken.errors)
    assert ws_spoken.audio == http_spoken.audio == b""


# -- the wire protocols -----------------------------------------------------


async def test_cartesia_websocket_accepts_the_key_as_a_query_parameter(cartesia):
    url = f"{cartesia.websocket_url}?api_key={API_KEY}&cartesia_version=2026-03-01"
    async with connect(url) as ws:
        await ws.send(cartesia_message(SHORT))
        first = json.loads(await ws.recv())
    assert first["type"] == "chunk" and first["context_id"] == "ctx-1"
    assert first["status_code"] == 206 and first["done"] is False


async def test_cartesia_cancel_stops_a_context_and_others_go_on(cartesia):
    # The cancelled context is shorter than the kept one: had it gone on, its
    # done would arrive first.
    async with connect(cartesia.websocket_url, additional_headers={"X-API-Key": API_KEY}) as ws:
        await ws.send(cartesia_message(SHORT, "doomed"))
        first = json.loads(await ws.recv())
        await ws.send(json.dumps({"context_id": "doomed", "cancel": True}))
        await ws.send(cartesia_message(TEXT, "kept"))
        messages = []
        async with asyncio.timeout(5):
            while not messages or messages[-1]["type"] != "done":
                messages.append(json.loads(await ws.recv()))
    doomed = [m for m in messages if m["context_id"] == "doomed"]
    assert first["context_id"] == "doomed"
    assert all(m["type"] != "done" for m in doomed)
    assert messages[-1]["context_id"] == "kept"
    assert len(audio_of(m for m in messages if m["context_id"] == "kept")) == 2 * round(
        expected_seconds(TEXT) * SAMPLE_RATE
    )


async def test_cartesia_flush_answers_flush_done_between_transcripts(cartesia):
    async with connect(cartesia.websocket_url, additional_headers={"X-API-Key": API_KEY}) as ws:
        await ws.send(cartesia_message("One. ", "c", **{"continue": True, "flush": True}))
        await ws.send(cartesia_message("Two.", "c"))
        messages = []
        async with asyncio.timeout(5):
            while not messages or messages[-1]["type"] != "done":
                messages.append(json.loads(await ws.recv()))
    types = [m["type"] for m in messages]
    assert types.count("flush_done") == 1 and messages[types.index("flush_done")]["flush_id"] == 1
    assert types.index("flush_done") < len(types) - 2
    assert len(cartesia.requests) == 1 and cartesia.requests[0].text == "One. Two."


async def test_cartesia_websocket_word_timestamps_match_the_audio(cartesia):
    messages = await cartesia_context(cartesia, TEXT)
    audio = audio_of(messages)
    stamps = [m["word_timestamps"] for m in messages if m["type"] == "timestamps"]
    words = [w for s in stamps for w in s["words"]]
    starts = [t for s in stamps for t in s["start"]]
    samples = pcm16(audio)
    assert words == TEXT.split()
    # Each word starts voiced; the gap before it is silent.
    for start in starts[1:]:
        at = round(start * SAMPLE_RATE)
        assert np.abs(samples[at : at + 400]).max() > 0.05
        assert np.abs(samples[at - 300 : at - 100]).max() == 0.0


async def test_elevenlabs_websocket_contexts_answer_with_audio_alignment_and_is_final(elevenlabs):
    async with connect(
        elevenlabs_ws_url(elevenlabs), additional_headers={"xi-api-key": API_KEY}
    ) as ws:
        await ws.send(json.dumps({"text": ""}))  # keepalive: no context
        await elevenlabs_context(ws, TEXT, "a")
        replies = await elevenlabs_replies(ws)
    audio = audio_of(replies, "audio")
    alignments = [m["alignment"] for m in replies if m.get("alignment")]
    assert replies[-1] == {"isFinal": True, "contextId": "a"}
    assert all(m["contextId"] == "a" for m in replies)
    assert "".join(c for a in alignments for c in a["chars"]).strip() == TEXT
    assert all(a == m["normalizedAlignment"] for m in replies if (a := m.get("alignment")))
    # Alignment restarts at 0 in every message and its spans tile the audio.
    spans = [a["charStartTimesMs"][-1] + a["charDurationsMs"][-1] for a in alignments]
    assert all(a["charStartTimesMs"][0] == 0 for a in alignments)
    assert sum(spans) / 1000 == pytest.approx(len(audio) / 2 / SAMPLE_RATE, abs=0.05)
    assert [r.text for r in elevenlabs.requests] == [TEXT]


async def test_elevenlabs_close_socket_closes_the_connection_normally(elevenlabs):
    async with connect(
        elevenlabs_ws_url(elevenlabs), additional_headers={"xi-api-key": API_KEY}
    ) as ws:
        await ws.send(json.dumps({"close_socket": True}))
        async with asyncio.timeout(5):
            await ws.wait_closed()
    assert ws.close_code == 1000
    assert elevenlabs.connections == 1


@pytest.mark.parametrize("output_format,rate", [("pcm_16000", 16000), ("pcm_24000", 24000)])
async def test_elevenlabs_honours_the_output_format(elevenlabs, session, output_format, rate):
    response = await session.post(
        f"{elevenlabs.http_url}/v1/text-to-speech/emulated-voice/stream",
        params={"output_format": output_format},
        json={"text": TEXT},
        headers={"xi-api-key": API_KEY},
    )
    audio = await response.read()
    assert len(audio) == 2 * round(expected_seconds(TEXT) * rate)


async def test_elevenlabs_refuses_mp3_which_it_cannot_produce(elevenlabs, session):
    response = await session.post(
        f"{elevenlabs.http_url}/v1/text-to-speech/emulated-voice/stream",
        json={"text": TEXT},
        headers={"xi-api-key": API_KEY},
    )
    body = await response.json()
    assert response.status == 400
    assert "mp3_44100_128" in body["detail"]["message"]


@pytest.mark.parametrize("headers", [{}, {"X-API-Key": "wrong"}])
async def test_cartesia_wrong_or_missing_key_gets_401_over_http_and_websocket(
    cartesia, session, headers
):
    response = await session.post(
        f"{cartesia.http_url}/tts/bytes", json={"transcript": SHORT}, headers=headers
    )
    body = await response.json()
    with pytest.raises(InvalidStatus) as raised:
        async with connect(cartesia.websocket_url, additional_headers=headers):
            pass
    assert response.status == 401
    assert {"error_code", "title", "message", "request_id"} <= body.keys()
    assert raised.value.response.status_code == 401
    assert cartesia.requests == []


async def test_audio_is_speech_like_and_deterministic(cartesia, session):
    first = await (await cartesia_bytes(session, cartesia, TEXT)).read()
    second = await (await cartesia_bytes(session, cartesia, TEXT)).read()
    samples = pcm16(first)
    voiced = samples[np.abs(samples) > 0.01]
    zero_crossing_rate = np.mean(np.abs(np.diff(np.sign(voiced)))) / 2
    silent = np.mean(samples == 0.0)
    assert first == second
    assert 0.02 < rms(first) < 0.3
    assert zero_crossing_rate < 0.15  # white noise would be near 0.5
    assert 0.1 < silent < 0.5  # gaps between words, but mostly voiced


# -- faults -----------------------------------------------------------------


@pytest.mark.parametrize(
    "spec,fault",
    [
        ("slow-ttfb:800", Fault(FaultKind.SLOW_TTFB, ms=800)),
        ("error@3", Fault("error", nth=3)),
        ("hang%2", Fault("hang", every=2)),
        ("slow-drip:2.5", Fault("slow-drip", factor=2.5)),
        ("Reject-503", Fault("reject-503")),
        ("stall:0@1", Fault("stall", ms=0, nth=1)),
        ("flap", Fault("flap")),
    ],
)
def test_fault_strings_parse_and_print_back(spec, fault):
    assert Fault.parse(spec) == fault
    assert Fault.parse(str(fault)) == fault


@pytest.mark.parametrize(
    "spec,words",
    [
        ("explode", "unknown kind"),
        ("hang:5", "takes no ':VALUE'"),
        ("error:soon", "whole milliseconds"),
        ("error@0", "nth must be"),
        ("error@2%3", "syntax"),
        ("slow-drip:0.5", "> 1"),
        ("flap%2", "flap chooses"),
        ("", "expected KIND"),
    ],
)
def test_bad_fault_strings_raise_value_error_saying_why(spec, words):
    with pytest.raises(ValueError, match=words):
        Fault.parse(spec)


@pytest.mark.parametrize("status", [401, 429, 503])
async def test_reject_faults_refuse_http_and_websocket_with_the_status(status, session):
    async with ElevenLabsEmulator(fault=f"reject-{status}") as emu:
        response = await elevenlabs_stream(session, emu)
        body = await response.json()
        with pytest.raises(InvalidStatus) as raised:
            async with connect(elevenlabs_ws_url(emu), additional_headers={"xi-api-key": API_KEY}):
                pass
    assert response.status == status
    assert set(body["detail"]) == {"status", "message"}
    assert raised.value.response.status_code == status
    assert emu.rejected_handshakes == 1
    assert emu.requests[0].fault == Fault(f"reject-{status}")


async def test_cartesia_error_fault_sends_the_error_message_after_some_audio():
    async with CartesiaEmulator(fault="error:80") as emu:
        messages = await cartesia_context(emu, TEXT)
    error = messages[-1]
    assert [m["type"] for m in messages if m["type"] != "timestamps"] == ["chunk"] * 2 + ["error"]
    assert error["type"] == "error" and error["done"] is True
    assert error["status_code"] == 500 and error["context_id"] == "ctx-1"
    assert {"error_code", "title", "message", "request_id"} <= error.keys()
    assert len(audio_of(messages)) == 2 * round(0.08 * SAMPLE_RATE)


async def test_elevenlabs_error_fault_sends_the_error_then_closes_1008():
    async with (
        ElevenLabsEmulator(fault="error:40") as emu,
        connect(elevenlabs_ws_url(emu), additional_headers={"xi-api-key": API_KEY}) as ws,
    ):
        await elevenlabs_context(ws, TEXT)
        messages = []
        with pytest.raises(ConnectionClosed) as closed:
            async with asyncio.timeout(5):
                while True:
                    messages.append(json.loads(await ws.recv()))
    assert "audio" in messages[0]
    assert messages[-1]["code"] == 1008
    assert closed.value.rcvd.code == 1008
    assert closed.value.rcvd.reason == (
        "We are sorry, something went wrong. You are not charged for this request."
    )


async def test_close_1011_fault_closes_the_websocket_or_aborts_the_body(session):
    async with CartesiaEmulator(fault="close-1011") as emu:
        async with connect(emu.websocket_url, additional_headers={"X-API-Key": API_KEY}) as ws:
            await ws.send(cartesia_message(TEXT))
            with pytest.raises(ConnectionClosed) as closed:
                async with asyncio.timeout(5):
                    while True:
                        await ws.recv()
        response = await cartesia_bytes(session, emu, TEXT)
        with pytest.raises(aiohttp.ClientPayloadError):
            await response.read()
    assert closed.value.rcvd.code == 1011
    assert response.status == 200


async def test_hang_fault_accepts_but_never_answers(session):
    async with CartesiaEmulator(fault="hang") as emu:
        async with connect(emu.websocket_url, additional_headers={"X-API-Key": API_KEY}) as ws:
            await ws.send(cartesia_message(SHORT))
            with pytest.raises(TimeoutError):
                async with asyncio.timeout(QUIET_S):
                    await ws.recv()
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(QUIET_S):
                await cartesia_bytes(session, emu)
        await emu.wait_for_requests(2)


async def test_stall_fault_sends_some_audio_then_goes_quiet():
    async with (
        ElevenLabsEmulator(fault="stall:80") as emu,
        connect(elevenlabs_ws_url(emu), additional_headers={"xi-api-key": API_KEY}) as ws,
    ):
        await elevenlabs_context(ws, TEXT)
        received = [json.loads(await ws.recv()), json.loads(await ws.recv())]
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(QUIET_S):
                await ws.recv()
    assert len(audio_of(received, "audio")) == 2 * round(0.08 * SAMPLE_RATE)


async def test_zeros_fault_sends_digital_silence_of_the_normal_length(session):
    async with CartesiaEmulator(fault="zeros") as emu:
        spoken = await speak(cartesia_ws(emu), TEXT)
        http_audio = await (await cartesia_bytes(session, emu, TEXT)).read()
    assert spoken.seconds == pytest.approx(expected_seconds(TEXT), abs=0.15)
    assert spoken.words == TEXT.split()
    assert set(spoken.audio) == {0} and set(http_audio) == {0}
    assert len(http_audio) == 2 * round(expected_seconds(TEXT) * SAMPLE_RATE)


async def test_empty_fault_finishes_without_audio():
    async with CartesiaEmulator(fault="empty") as cartesia:
        messages = await cartesia_context(cartesia)
    async with (
        ElevenLabsEmulator(fault="empty") as elevenlabs,
        connect(elevenlabs_ws_url(elevenlabs), additional_headers={"xi-api-key": API_KEY}) as ws,
    ):
        await elevenlabs_context(ws)
        replies = await elevenlabs_replies(ws)
    assert [m["type"] for m in messages] == ["done"]
    assert replies == [{"isFinal": True, "contextId": "ctx-1"}]


async def test_slow_ttfb_fault_delays_the_first_audio(session):
    async with ElevenLabsEmulator(fault="slow-ttfb:400", speed=math.inf) as emu:
        began = time.monotonic()
        response = await elevenlabs_stream(session, emu)
        await response.content.readany()
        first_audio = time.monotonic() - began
    assert first_audio >= 0.4


async def test_slow_drip_fault_streams_slower_than_real_time(session):
    async with CartesiaEmulator(fault="slow-drip:2", speed=math.inf) as emu:
        began = time.monotonic()
        audio = await (await cartesia_bytes(session, emu, "Hi.")).read()
        took = time.monotonic() - began
    assert took >= 2 * len(audio) / 2 / SAMPLE_RATE - 0.05  # the last chunk is not waited for


async def test_nth_and_every_pick_which_requests_fail(session):
    async with ElevenLabsEmulator(fault="reject-503@2") as emu:
        nth = [await status_of(elevenlabs_stream(session, emu)) for _ in range(3)]
        emu.set_fault("reject-429%2")
        every = [await status_of(elevenlabs_stream(session, emu)) for _ in range(4)]
        emu.set_fault("flap")
        flap = [await status_of(elevenlabs_stream(session, emu)) for _ in range(4)]
    assert nth == [200, 503, 200]
    assert every == [200, 429, 200, 429]
    assert flap == [200, 503, 200, 503]


async def test_selected_websocket_contexts_are_refused_in_band():
    results = []
    async with (
        CartesiaEmulator(fault="reject-429@2") as emu,
        connect(emu.websocket_url, additional_headers={"X-API-Key": API_KEY}) as ws,
    ):
        for context_id in ("one", "two", "three"):
            await ws.send(cartesia_message(SHORT, context_id))
            async with asyncio.timeout(5):
                while (message := json.loads(await ws.recv()))["type"] not in ("done", "error"):
                    pass
            results.append((message["type"], message.get("status_code")))
    assert results == [("done", 206), ("error", 429), ("done", 206)]
    assert [r.fault for r in emu.requests] == [None, Fault("reject-429", nth=2), None]


async def test_faults_switch_at_runtime_and_count_from_the_switch(cartesia, session):
    before = await status_of(cartesia_bytes(session, cartesia))
    cartesia.set_fault(Fault("reject-503", nth=1))
    switched = [await status_of(cartesia_bytes(session, cartesia)) for _ in range(2)]
    cartesia.set_fault("reject-401")
    rejected = await status_of(cartesia_bytes(session, cartesia))
    cartesia.clear_fault()
    after = await status_of(cartesia_bytes(session, cartesia))
    assert (before, switched, rejected, after) == (200, [503, 200], 401, 200)
    assert cartesia.fault is None
    assert [r.ordinal for r in cartesia.requests] == [1, 2, 3, 4, 5]
    assert isinstance(cartesia.requests[0], SynthesisRequest)


# -- lifecycle --------------------------------------------------------------


async def test_emulators_bind_distinct_free_ports_on_localhost():
    async with CartesiaEmulator() as a, ElevenLabsEmulator() as b:
        assert a.clients["CartesiaTTSService"] == f'url="{a.websocket_url}"'
        assert b.clients["ElevenLabsTTSService"] == f'url="{b.ws_url}"'
        assert a.port != b.port
        assert a.http_url == f"http://127.0.0.1:{a.port}"
        assert b.ws_url == f"ws://127.0.0.1:{b.port}"
        assert a.websocket_url == f"ws://127.0.0.1:{a.port}/tts/websocket"


async def test_stop_closes_websockets_and_cancels_hung_requests(session):
    emu = await CartesiaEmulator(fault="hang").start()
    ws = await connect(emu.websocket_url, additional_headers={"X-API-Key": API_KEY})
    await ws.send(cartesia_message(SHORT))
    hung = asyncio.ensure_future(cartesia_bytes(session, emu))
    await emu.wait_for_requests(2)
    assert emu.open_connections == 1

    await emu.stop()
    await emu.stop()  # safe twice

    async with asyncio.timeout(5):
        await ws.wait_closed()
        with pytest.raises(aiohttp.ClientError):
            await hung
    assert ws.close_code == 1001
    assert emu.open_connections == 0
    leftover = [t for t in asyncio.all_tasks() if t is not asyncio.current_task() and not t.done()]
    assert leftover == []


def test_bad_constructor_arguments_raise_value_error():
    with pytest.raises(ValueError, match="speed"):
        CartesiaEmulator(speed=0)
    with pytest.raises(ValueError, match="unknown kind"):
        ElevenLabsEmulator(fault="explode")
    with pytest.raises(ValueError, match="port"):
        CartesiaEmulator(port=70000)


# -- command line -----------------------------------------------------------


async def test_cli_emulates_until_sigterm_and_exits_cleanly(session):
    port = free_port()
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "pipecat_tts_failover.cli",
        "emulate",
        "cartesia",
        "--port",
        str(port),
        "--speed",
        "8",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        printed = []
        async with asyncio.timeout(30):
            while not printed or "curl -X DELETE" not in printed[-1]:
                printed.append((await process.stdout.readline()).decode())
        ready = printed[0]
        async with session.post(
            f"http://127.0.0.1:{port}/_control/fault", json={"fault": "reject-503@1"}
        ) as r:
            control_status = r.status
        body = {
            "model_id": "sonic-3",
            "voice": VOICE,
            "transcript": SHORT,
            "output_format": RAW_16K,
        }
        url = f"http://127.0.0.1:{port}/tts/bytes"
        broken = await status_of(session.post(url, json=body, headers={"X-API-Key": API_KEY}))
        response = await session.post(url, json=body, headers={"X-API-Key": API_KEY})
        audio = await response.read()
        process.send_signal(signal.SIGTERM)
        async with asyncio.timeout(10):
            code = await process.wait()
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert f"http://127.0.0.1:{port}" in ready
    # The exact argument each client needs, the WebSocket path included.
    assert f'  CartesiaTTSService(url="ws://127.0.0.1:{port}/tts/websocket", ...)\n' in printed
    assert f'  CartesiaHttpTTSService(base_url="http://127.0.0.1:{port}", ...)\n' in printed
    assert (control_status, broken) == (200, 503)
    assert response.status == 200 and rms(audio) > 0.02
    assert code == 0


async def test_cli_rejects_a_bad_fault_with_a_clear_message():
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "pipecat_tts_failover.cli",
        "emulate",
        "elevenlabs",
        "--fault",
        "explode@2",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    async with asyncio.timeout(30):
        _, stderr = await process.communicate()
    assert process.returncode == 2
    assert "bad fault 'explode@2': unknown kind 'explode'" in stderr.decode()


# -- the real services' own triggers -----------------------------------------


def elevenlabs_url(emu: ElevenLabsEmulator, endpoint: str = "multi-stream-input", **query) -> str:
    params = {"model_id": "eleven_flash_v2_5", "output_format": "pcm_16000"} | query
    query_text = "&".join(f"{k}={v}" for k, v in params.items())
    return f"{emu.ws_url}/v1/text-to-speech/emulated-voice/{endpoint}?{query_text}"


async def until_closed(ws) -> tuple[list[dict], ConnectionClosed]:
    """Every message until the server closes the socket, and how it closed."""
    messages = []
    with pytest.raises(ConnectionClosed) as closed:
        async with asyncio.timeout(5):
            while True:
                messages.append(json.loads(await ws.recv()))
    return messages, closed.value


async def cartesia_until(ws, context_id: str, types=("done", "error")) -> dict:
    """The first message of ``context_id`` whose type is one of ``types``."""
    async with asyncio.timeout(5):
        while True:
            message = json.loads(await ws.recv())
            if message.get("context_id") == context_id and message["type"] in types:
                return message


async def test_cartesia_contexts_past_the_plan_limit_get_429_concurrency_limited(session):
    async with (
        CartesiaEmulator(concurrency_limit=2) as emu,
        connect(emu.websocket_url, additional_headers={"X-API-Key": API_KEY}) as ws,
    ):
        # Contexts left open (continue: true) count until done or cancel.
        for context_id in ("a", "b"):
            await ws.send(cartesia_message(SHORT, context_id, **{"continue": True}))
            await cartesia_until(ws, context_id, ("chunk",))
        await ws.send(cartesia_message(SHORT, "c"))
        refused = await cartesia_until(ws, "c")
        http_status = await status_of(cartesia_bytes(session, emu))
        await ws.send(json.dumps({"context_id": "a", "cancel": True}))
        await ws.send(cartesia_message(SHORT, "d"))
        after_cancel = await cartesia_until(ws, "d")
    assert refused["type"] == "error" and refused["status_code"] == 429
    assert refused["error_code"] == "concurrency_limited"
    assert http_status == 429
    assert after_cancel["type"] == "done"
    assert [r.refusal for r in emu.requests] == [
        None,
        None,
        "concurrency_limited",
        "concurrency_limited",
        None,
    ]


async def test_cartesia_refuses_a_handshake_past_ten_sockets_per_concurrency():
    async with CartesiaEmulator(concurrency_limit=1) as emu:
        headers = {"X-API-Key": API_KEY}
        sockets = [await connect(emu.websocket_url, additional_headers=headers) for _ in range(10)]
        try:
            with pytest.raises(InvalidStatus) as raised:
                await connect(emu.websocket_url, additional_headers=headers)
        finally:
            await asyncio.gather(*(ws.close() for ws in sockets))
    assert raised.value.response.status_code == 429
    assert b"your plan allows 10" in raised.value.response.body


async def test_cartesia_closes_an_idle_socket_and_pipecat_reconnects_for_the_next_sentence():
    from pipecat.tests.utils import SleepFrame

    async with CartesiaEmulator(idle_timeout=0.5) as emu:
        async with connect(emu.websocket_url, additional_headers={"X-API-Key": API_KEY}) as ws:
            began = time.monotonic()
            async with asyncio.timeout(5):
                await ws.wait_closed()
            idle = time.monotonic() - began
        spoken = await speak(cartesia_ws(emu), SHORT, SleepFrame(sleep=1.0), TEXT)
    assert ws.close_code == 1000 and ws.close_reason == "connection idle timeout"
    assert idle >= 0.5
    assert spoken.errors == []
    assert spoken.words == SHORT.split() + TEXT.split()
    assert emu.connections == 3  # the probe socket, then pipecat's first and its reconnect


@pytest.mark.parametrize("model", ["no-such-model", None])
async def test_cartesia_refuses_an_unknown_or_missing_model_in_band_and_over_http(model):
    async with CartesiaEmulator() as emu:
        messages = await cartesia_context(emu, model_id=model)
        client = AsyncCartesia(api_key=API_KEY, base_url=emu.http_url, max_retries=0)
        async with client:
            with pytest.raises(BadRequestError) as raised:
                await client.tts.generate(
                    model_id=model, transcript=SHORT, voice=VOICE, output_format=RAW_16K
                )
    code = "model_not_found" if model else "invalid_request"
    assert [m["type"] for m in messages] == ["error"]
    assert messages[0]["status_code"] == 400 and messages[0]["error_code"] == code
    assert raised.value.body["error_code"] == code
    assert [r.refusal for r in emu.requests] == [code, code]


async def test_pipecat_cartesia_reports_an_unknown_model_and_speaks_nothing():
    async with CartesiaEmulator() as emu:
        settings = CartesiaTTSService.Settings(voice="emulated-voice", model="no-such-model")
        spoken = await speak(cartesia_ws(emu, settings=settings), SHORT)
    assert spoken.audio == b""
    assert any("model_not_found" in e.error for e in spoken.errors)


async def test_cartesia_chunks_carry_their_flush_id_and_done_says_206(cartesia):
    async with connect(cartesia.websocket_url, additional_headers={"X-API-Key": API_KEY}) as ws:
        await ws.send(cartesia_message("One. ", "c", **{"continue": True, "flush": True}))
        await ws.send(cartesia_message("Two.", "c"))
        messages = []
        async with asyncio.timeout(5):
            while not messages or messages[-1]["type"] != "done":
                messages.append(json.loads(await ws.recv()))
    flush_at = next(i for i, m in enumerate(messages) if m["type"] == "flush_done")
    before = {m["flush_id"] for m in messages[:flush_at] if m["type"] in ("chunk", "timestamps")}
    after = {m["flush_id"] for m in messages[flush_at:] if m["type"] in ("chunk", "timestamps")}
    assert (before, messages[flush_at]["flush_id"], after) == ({1}, 1, {2})
    assert messages[-1]["status_code"] == 206


async def test_elevenlabs_sixth_open_context_closes_the_socket_with_max_active_conversations():
    async with (
        ElevenLabsEmulator() as emu,
        connect(elevenlabs_url(emu), additional_headers={"xi-api-key": API_KEY}) as ws,
    ):
        for i in range(5):
            await ws.send(json.dumps({"text": " ", "context_id": f"c{i}"}))
        # A closed context frees its slot once its isFinal is out.
        await ws.send(json.dumps({"context_id": "c0", "close_context": True}))
        assert (await elevenlabs_replies(ws))[-1] == {"isFinal": True, "contextId": "c0"}
        await ws.send(json.dumps({"text": " ", "context_id": "c5"}))
        await ws.send(json.dumps({"text": " ", "context_id": "c6"}))
        messages, closed = await until_closed(ws)
    reason = (
        "Maximum simultaneous contexts per WebSocket connection exceeded (5). "
        "Please close an existing context before opening a new one."
    )
    assert messages == [
        {"message": reason, "error": "max_active_conversations", "code": 1008, "contextId": "c6"}
    ]
    assert (closed.rcvd.code, closed.rcvd.reason) == (1008, reason[:123])
    assert emu.requests[-1].refusal == "max_active_conversations"


SETTINGS_RULE = (
    "voice_settings field must be provided in the first message and then either be not "
    "provided or not change."
)


@pytest.mark.parametrize(
    "first,later",
    [
        ({"stability": 0.5}, {"stability": 0.7}),  # changed
        (None, {"stability": 0.5}),  # the keepalive came first (pipecat#4520's race)
    ],
)
async def test_elevenlabs_voice_settings_that_change_close_the_socket_1008(first, later):
    async with (
        ElevenLabsEmulator() as emu,
        connect(elevenlabs_url(emu), additional_headers={"xi-api-key": API_KEY}) as ws,
    ):
        opening = {"text": " " if first else "", "context_id": "c"}
        await ws.send(json.dumps(opening | ({"voice_settings": first} if first else {})))
        await ws.send(json.dumps({"text": " ", "context_id": "c", "voice_settings": first}))
        await ws.send(json.dumps({"text": "Hi. ", "context_id": "c", "voice_settings": later}))
        _, closed = await until_closed(ws)
    assert (closed.rcvd.code, closed.rcvd.reason) == (1008, SETTINGS_RULE)


async def test_elevenlabs_same_voice_settings_again_are_accepted(elevenlabs):
    settings = {"stability": 0.5, "similarity_boost": 0.8}
    async with connect(
        elevenlabs_url(elevenlabs), additional_headers={"xi-api-key": API_KEY}
    ) as ws:
        await ws.send(json.dumps({"text": " ", "context_id": "a", "voice_settings": settings}))
        await ws.send(json.dumps({"text": SHORT, "context_id": "a", "voice_settings": settings}))
        await ws.send(json.dumps({"context_id": "a", "close_context": True}))
        replies = await elevenlabs_replies(ws)
    assert replies[-1] == {"isFinal": True, "contextId": "a"}


async def test_elevenlabs_inactivity_timeout_closes_with_input_timeout_exceeded():
    async with ElevenLabsEmulator() as emu:
        headers = {"xi-api-key": API_KEY}
        async with connect(
            elevenlabs_url(emu, inactivity_timeout=1), additional_headers=headers
        ) as ws:
            # Keepalives (empty text) hold it open past the timeout...
            began = time.monotonic()
            for _ in range(5):
                await ws.send(json.dumps({"text": ""}))
                with pytest.raises(TimeoutError):
                    async with asyncio.timeout(0.3):
                        await ws.recv()
            kept_open = time.monotonic() - began
            # ...silence does not.
            messages, closed = await until_closed(ws)
        with pytest.raises(InvalidStatus) as too_long:
            await connect(elevenlabs_url(emu, inactivity_timeout=181), additional_headers=headers)
    assert kept_open > 1.2
    assert messages[0]["error"] == "input_timeout_exceeded" and messages[0]["code"] == 1008
    assert messages[0]["message"].startswith(
        "Have not received a new text input within the timeout of 1 seconds."
    )
    assert closed.rcvd.code == 1008
    assert too_long.value.response.status_code == 400
    with pytest.raises(ValueError, match="at most 180"):
        ElevenLabsEmulator(inactivity_timeout=200)


async def test_elevenlabs_websocket_opens_then_closes_1008_for_a_bad_key_model_or_voice():
    results = {}
    async with ElevenLabsEmulator(voices=["emulated-voice"]) as emu:
        cases = {
            "key": (elevenlabs_url(emu), {"xi-api-key": "wrong"}),
            "model": (elevenlabs_url(emu, model_id="no-such-model"), {"xi-api-key": API_KEY}),
            "v3": (elevenlabs_url(emu, model_id="eleven_v3"), {"xi-api-key": API_KEY}),
            "voice": (
                elevenlabs_url(emu).replace("emulated-voice", "other-voice"),
                {"xi-api-key": API_KEY},
            ),
        }
        for case, (url, headers) in cases.items():
            async with connect(url, additional_headers=headers) as ws:  # the handshake succeeds
                messages, closed = await until_closed(ws)
            results[case] = (messages[0]["error"], closed.rcvd.code)
        single_v3 = elevenlabs_url(emu, "stream-input", model_id="eleven_v3")
        async with connect(single_v3, additional_headers={"xi-api-key": API_KEY}) as ws:
            await ws.send(json.dumps({"text": " "}))
            await ws.send(json.dumps({"text": SHORT}))
            await ws.send(json.dumps({"text": ""}))
            v3_single, _ = await until_closed(ws)
    assert results == {
        "key": ("invalid_api_key", 1008),
        "model": ("model_not_found", 1008),
        "v3": ("unsupported_model", 1008),
        "voice": ("voice_not_found", 1008),
    }
    assert v3_single[-1] == {"isFinal": True}  # eleven_v3 is served on stream-input


@pytest.mark.parametrize("key,served", [(API_KEY, True), ("wrong", False), (None, False)])
async def test_elevenlabs_takes_the_key_from_the_first_message_when_no_header(key, served):
    async with (
        ElevenLabsEmulator() as emu,
        connect(elevenlabs_url(emu)) as ws,
    ):
        first = {"text": " ", "context_id": "a"} | ({"xi_api_key": key} if key else {})
        await ws.send(json.dumps(first))
        await ws.send(json.dumps({"text": SHORT, "context_id": "a", "close_context": True}))
        if served:
            replies = await elevenlabs_replies(ws)
        else:
            replies, closed = await until_closed(ws)
    if served:
        assert replies[-1] == {"isFinal": True, "contextId": "a"} and audio_of(replies, "audio")
    else:
        expected = "invalid_api_key" if key else "needs_authorization"
        assert replies[0]["error"] == expected and closed.rcvd.code == 1008


async def test_elevenlabs_close_socket_finishes_every_flushed_context_first(elevenlabs):
    async with connect(
        elevenlabs_url(elevenlabs), additional_headers={"xi-api-key": API_KEY}
    ) as ws:
        for context_id in ("a", "b"):
            await ws.send(json.dumps({"text": " ", "context_id": context_id}))
            await ws.send(json.dumps({"text": SHORT, "context_id": context_id, "flush": True}))
        await ws.send(json.dumps({"close_socket": True}))
        messages, closed = await until_closed(ws)
    finals = [m["contextId"] for m in messages if m.get("isFinal")]
    for context_id in ("a", "b"):
        audio = audio_of((m for m in messages if m.get("contextId") == context_id), "audio")
        assert len(audio) == 2 * round(expected_seconds(" " + SHORT) * SAMPLE_RATE)
    assert sorted(finals) == ["a", "b"]
    assert closed.rcvd.code == 1000


async def test_elevenlabs_stream_input_serves_one_context_per_socket_in_the_sdk_shapes(
    elevenlabs,
):
    from elevenlabs.types import AudioOutput, FinalOutput

    url = elevenlabs_url(elevenlabs, "stream-input")
    async with connect(url) as ws:
        await ws.send(json.dumps({"text": " ", "xi-api-key": API_KEY}))
        await ws.send(json.dumps({"text": TEXT + " "}))
        await ws.send(json.dumps({"text": ""}))  # end of input
        messages, closed = await until_closed(ws)
    audio = [AudioOutput.model_validate(m) for m in messages[:-1]]
    final = FinalOutput.model_validate(messages[-1])
    chars = "".join(c for a in audio if a.alignment for c in a.alignment.chars or [])
    assert final.is_final is True and all("contextId" not in m for m in messages)
    assert chars.strip() == TEXT
    assert closed.rcvd.code == 1000
    assert [r.path for r in elevenlabs.requests] == [
        "/v1/text-to-speech/emulated-voice/stream-input"
    ]


async def test_elevenlabs_alignment_splits_words_across_messages_as_the_real_api_does(
    elevenlabs,
):
    async with connect(
        elevenlabs_url(elevenlabs), additional_headers={"xi-api-key": API_KEY}
    ) as ws:
        await elevenlabs_context(ws, TEXT)
        replies = await elevenlabs_replies(ws)
    async with (
        ElevenLabsEmulator(split_words=False) as whole,
        connect(elevenlabs_url(whole), additional_headers={"xi-api-key": API_KEY}) as ws,
    ):
        await elevenlabs_context(ws, TEXT)
        whole_replies = await elevenlabs_replies(ws)
    texts = ["".join(m["alignment"]["chars"]) for m in replies if m.get("alignment")]
    whole_texts = ["".join(m["alignment"]["chars"]) for m in whole_replies if m.get("alignment")]
    # Some message ends inside a word: its last character and the next message's first are letters.
    assert any(a[-1].isalpha() and b[0].isalpha() for a, b in itertools.pairwise(texts))
    assert not any(a[-1].isalpha() and b[0].isalpha() for a, b in itertools.pairwise(whole_texts))
    assert "".join(texts).strip() == "".join(whole_texts).strip() == TEXT


async def test_elevenlabs_http_past_the_plan_limit_gets_429_with_the_concurrency_headers(
    session,
):
    async with ElevenLabsEmulator(concurrency_limit=1, speed=2.0) as emu:
        first = await elevenlabs_stream(session, emu, TEXT)
        await first.content.readany()  # streaming: it counts
        async with httpx.AsyncClient() as http:
            client = AsyncElevenLabs(api_key=API_KEY, base_url=emu.http_url, httpx_client=http)
            with pytest.raises(ApiError) as raised:
                async for _ in client.text_to_speech.stream(
                    "emulated-voice", text=SHORT, output_format="pcm_16000"
                ):
                    pass
        await first.read()  # done: it no longer counts
        second = await elevenlabs_stream(session, emu)
        await second.read()
    assert raised.value.status_code == 429
    assert raised.value.body["detail"]["status"] == "too_many_concurrent_requests"
    assert "maximum of 1 concurrent requests" in raised.value.body["detail"]["message"]
    assert raised.value.headers["current-concurrent-requests"] == "1"
    assert raised.value.headers["maximum-concurrent-requests"] == "1"
    assert second.status == 200 and second.headers["maximum-concurrent-requests"] == "1"


async def test_quota_exceeded_fault_answers_as_each_provider_does(session):
    async with ElevenLabsEmulator(fault="quota-exceeded") as emu:
        async with httpx.AsyncClient() as http:
            client = AsyncElevenLabs(api_key=API_KEY, base_url=emu.http_url, httpx_client=http)
            with pytest.raises(ApiError) as raised:
                async for _ in client.text_to_speech.stream(
                    "emulated-voice", text=SHORT, output_format="pcm_16000"
                ):
                    pass
        async with connect(elevenlabs_url(emu), additional_headers={"xi-api-key": API_KEY}) as ws:
            await elevenlabs_context(ws, SHORT)
            messages, closed = await until_closed(ws)
    async with CartesiaEmulator(fault="quota-exceeded") as cartesia:
        cartesia_status = await status_of(cartesia_bytes(session, cartesia))
    assert raised.value.status_code == 401
    assert raised.value.body["detail"]["status"] == "quota_exceeded"
    assert raised.value.body["detail"]["message"].startswith("This request exceeds your quota")
    assert messages[-1]["error"] == "quota_exceeded" and closed.rcvd.code == 1008
    assert cartesia_status == 402


async def test_elevenlabs_http_refuses_a_voice_it_does_not_know(session):
    async with (
        ElevenLabsEmulator(voices=["emulated-voice"]) as emu,
        httpx.AsyncClient() as http,
    ):
        client = AsyncElevenLabs(api_key=API_KEY, base_url=emu.http_url, httpx_client=http)
        with pytest.raises(ApiError) as raised:
            async for _ in client.text_to_speech.stream(
                "someone-else", text=SHORT, output_format="pcm_16000"
            ):
                pass
    assert raised.value.status_code == 404
    assert raised.value.body["detail"]["status"] == "voice_not_found"


# -- control and hang-ups -----------------------------------------------------


async def test_control_endpoint_sets_and_clears_the_fault_of_a_running_emulator(session):
    async with CartesiaEmulator() as emu:
        before = await status_of(cartesia_bytes(session, emu))
        async with session.post(emu.control_url, json={"fault": "reject-503"}) as r:
            set_answer = (r.status, await r.json())
        broken = await status_of(cartesia_bytes(session, emu))
        async with session.post(emu.control_url, json={"fault": "explode"}) as r:
            bad_answer = (r.status, (await r.json())["error"])
        async with session.get(emu.control_url) as r:
            still = await r.json()
        async with session.delete(emu.control_url) as r:
            cleared = await r.json()
        after = await status_of(cartesia_bytes(session, emu))
    assert (before, broken, after) == (200, 503, 200)
    assert set_answer == (200, {"fault": "reject-503"})
    assert bad_answer[0] == 400 and "unknown kind 'explode'" in bad_answer[1]
    assert still == {"fault": "reject-503"} and cleared == {"fault": None}
    assert emu.fault is None


@pytest.mark.parametrize("endpoint", ["cartesia_bytes", "elevenlabs_stream"])
async def test_a_client_hanging_up_mid_answer_is_normal_and_logs_no_error(
    endpoint, session, caplog
):
    errors = []
    sink = logger.add(lambda m: errors.append(m), level="ERROR")
    emulator_class = CartesiaEmulator if endpoint.startswith("cartesia") else ElevenLabsEmulator
    try:
        async with emulator_class(speed=1.0) as emu:
            request = cartesia_bytes if endpoint.startswith("cartesia") else elevenlabs_stream
            response = await request(session, emu, TEXT)
            await response.content.readany()
            response.close()  # hang up mid-answer
            handlers = list(emu._handler_tasks)
            async with asyncio.timeout(5):
                await asyncio.wait(handlers)
            active = emu.active
    finally:
        logger.remove(sink)
    assert handlers  # the answer was still streaming when the client left
    assert [r for r in caplog.records if r.levelno >= logging.ERROR] == []
    assert errors == []
    assert active == 0


# -- defaults ---------------------------------------------------------------


def test_the_command_line_and_the_python_api_share_their_defaults():
    args = build_parser().parse_args(["emulate", "elevenlabs"])
    emulator = build_emulator(args)
    python = ElevenLabsEmulator()
    assert args.speed == python.speed == 4.0
    assert emulator.concurrency_limit == python.concurrency_limit == 15
    assert emulator.inactivity_timeout == python.inactivity_timeout == 20.0
    assert emulator.max_contexts_per_socket == python.max_contexts_per_socket == 5
    cartesia = build_emulator(build_parser().parse_args(["emulate", "cartesia"]))
    assert cartesia.idle_timeout == CartesiaEmulator().idle_timeout == 300.0


@pytest.mark.parametrize("text", ["...", ":)", "'", "*", "\U0001f600", "\u2014"])
def test_text_with_nothing_to_say_is_silent_as_real_providers_answer_it(text):
    speech = synthesize(f"Hello {text} there", 16000)
    silent = synthesize(text, 16000)
    assert len(silent.samples) and not np.any(silent.samples)
    # ...and between words it is a gap, while the words are voiced.
    assert np.any(speech.samples)


def test_words_keep_their_apostrophes_and_hyphens_voiced():
    speech = synthesize("don't re-do", 16000)
    char = len(speech.samples) // len("don't re-do")
    for i, c in enumerate("don't re-do"):
        voiced = np.any(speech.samples[i * char : (i + 1) * char])
        assert voiced == (c != " "), c
