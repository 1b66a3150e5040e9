"""Helpers for tests against the provider emulators: pipecat services pointed at them, audio checks."""

import asyncio
import socket
from collections.abc import Sequence
from dataclasses import dataclass

import aiohttp
import numpy as np
from pipecat.frames.frames import (
    ErrorFrame,
    Frame,
    TTSAudioRawFrame,
    TTSSpeakFrame,
    TTSStartedFrame,
    TTSStoppedFrame,
    TTSTextFrame,
)
from pipecat.pipeline.worker import PipelineParams
from pipecat.services.cartesia.tts import CartesiaHttpTTSService, CartesiaTTSService
from pipecat.services.elevenlabs.tts import ElevenLabsHttpTTSService, ElevenLabsTTSService
from pipecat.services.tts_service import TTSService
from pipecat.tests.utils import run_test

from pipecat_tts_failover.testing import CartesiaEmulator, ElevenLabsEmulator

API_KEY = "test-key"
SAMPLE_RATE = 16000
# Seconds pipecat waits for more audio before closing a context; short so
# faulty contexts end quickly.
STOP_FRAME_TIMEOUT_S = 0.6


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def pcm16(audio: bytes) -> np.ndarray:
    """Decode s16le mono bytes to float samples in [-1, 1]."""
    return np.frombuffer(audio, dtype="<i2").astype(np.float64) / 32768.0


def rms(audio: bytes) -> float:
    """RMS level of s16le audio, 0.0 for no audio."""
    samples = pcm16(audio)
    return float(np.sqrt(np.mean(samples**2))) if len(samples) else 0.0


def expected_seconds(text: str, ms_per_char: float = 60.0) -> float:
    """How long the emulators speak ``text`` for."""
    return len(text) * ms_per_char / 1000


def cartesia_ws(emu: CartesiaEmulator, **kwargs) -> CartesiaTTSService:
    """``CartesiaTTSService`` pointed at the emulator."""
    return CartesiaTTSService(
        api_key=API_KEY,
        url=emu.websocket_url,
        settings=kwargs.pop("settings", CartesiaTTSService.Settings(voice="emulated-voice")),
        stop_frame_timeout_s=STOP_FRAME_TIMEOUT_S,
        **kwargs,
    )


def cartesia_http(emu: CartesiaEmulator, **kwargs) -> CartesiaHttpTTSService:
    """``CartesiaHttpTTSService`` pointed at the emulator."""
    return CartesiaHttpTTSService(
        api_key=API_KEY,
        base_url=emu.http_url,
        settings=kwargs.pop("settings", CartesiaHttpTTSService.Settings(voice="emulated-voice")),
        stop_frame_timeout_s=STOP_FRAME_TIMEOUT_S,
        **kwargs,
    )


def elevenlabs_ws(emu: ElevenLabsEmulator, **kwargs) -> ElevenLabsTTSService:
    """``ElevenLabsTTSService`` pointed at the emulator."""
    return ElevenLabsTTSService(
        api_key=API_KEY,
        url=emu.ws_url,
        settings=kwargs.pop("settings", ElevenLabsTTSService.Settings(voice="emulated-voice")),
        stop_frame_timeout_s=STOP_FRAME_TIMEOUT_S,
        **kwargs,
    )


def elevenlabs_http(
    emu: ElevenLabsEmulator, session: aiohttp.ClientSession, **kwargs
) -> ElevenLabsHttpTTSService:
    """``ElevenLabsHttpTTSService`` pointed at the emulator."""
    return ElevenLabsHttpTTSService(
        api_key=API_KEY,
        base_url=emu.http_url,
        aiohttp_session=session,
        settings=kwargs.pop("settings", ElevenLabsHttpTTSService.Settings(voice="emulated-voice")),
        stop_frame_timeout_s=STOP_FRAME_TIMEOUT_S,
        **kwargs,
    )


@dataclass
class Spoken:
    """What came out of a pipeline that spoke some sentences."""

    down: Sequence[Frame]
    up: Sequence[Frame]

    @property
    def audio_frames(self) -> list[TTSAudioRawFrame]:
        return [f for f in self.down if isinstance(f, TTSAudioRawFrame)]

    @property
    def audio(self) -> bytes:
        return b"".join(f.audio for f in self.audio_frames)

    @property
    def seconds(self) -> float:
        return len(self.audio) / 2 / SAMPLE_RATE

    @property
    def words(self) -> list[str]:
        return [f.text for f in self.down if isinstance(f, TTSTextFrame)]

    @property
    def errors(self) -> list[ErrorFrame]:
        return [f for f in self.up if isinstance(f, ErrorFrame)]

    def count(self, frame_type: type) -> int:
        return sum(isinstance(f, frame_type) for f in self.down)

    @property
    def started_and_stopped(self) -> bool:
        return self.count(TTSStartedFrame) >= 1 and self.count(TTSStoppedFrame) >= 1


async def speak(service: TTSService, *texts: str | Frame, timeout: float = 20.0) -> Spoken:
    """Speak ``texts`` (one ``TTSSpeakFrame`` each) through ``service`` in a real pipeline.

    Args:
        service: The TTS service under test.
        *texts: Sentences to speak; a frame (a ``SleepFrame`` between two
            sentences, say) is sent as it is.
        timeout: Seconds the whole run may take.

    Returns:
        The frames that reached either end of the pipeline.
    """
    async with asyncio.timeout(timeout):
        down, up = await run_test(
            service,
            frames_to_send=[t if isinstance(t, Frame) else TTSSpeakFrame(t) for t in texts],
            pipeline_params=PipelineParams(audio_out_sample_rate=SAMPLE_RATE),
        )
    return Spoken(down, up)
