"""Scripted pipecat TTS services: real TTSService subclasses whose provider side is a script.

Each word is spoken as a block of constant-valued 16-bit samples whose value
encodes the word and the provider (see :func:`word_code`), so a test can decode
exactly what the caller heard, in order, from the audio that reached
downstream.
"""

import asyncio
import zlib
from collections.abc import AsyncGenerator, Callable, Sequence

import numpy as np
from pipecat.frames.frames import ErrorFrame, Frame, TTSAudioRawFrame
from pipecat.services.settings import TTSSettings
from pipecat.services.tts_service import TTSService
from pipecat.utils.errors import ErrorCategory

FAULTS = ("error", "raise", "hang", "stall", "empty", "zeros", "auth", "slow")

FaultPlan = Callable[[int, str], str | None]


def word_code(word: str, provider_index: int) -> int:
    """The sample value a scripted provider uses for a word (always audible)."""
    return 1000 + (zlib.crc32(word.encode()) % 7000) * 4 + provider_index


def decode_audio(
    frames: Sequence[TTSAudioRawFrame], vocabulary: Sequence[str]
) -> list[tuple[str, int]]:
    """Decode the words (and provider indexes) a caller heard from scripted audio.

    Args:
        frames: The audio frames that reached downstream, in order.
        vocabulary: Every word the test spoke.

    Returns:
        ``(word, provider_index)`` for each run of one word's samples.
    """
    by_code = {((zlib.crc32(w.encode()) % 7000) * 4): w for w in vocabulary}
    heard: list[tuple[str, int]] = []
    last = None
    samples = (
        np.concatenate([np.frombuffer(f.audio, dtype="<i2") for f in frames]) if frames else []
    )
    for value in samples:
        value = int(value)
        if value == 0 or value == last:
            last = value
            continue
        last = value
        offset = value - 1000
        heard.append((by_code[offset - offset % 4], offset % 4))
    return heard


def plan(faults: dict[int, str] | None = None, *, every: str | None = None) -> FaultPlan:
    """A fault plan: ``faults`` by request index (0-based), or one fault for every request."""
    faults = faults or {}

    def fault_for(index: int, text: str) -> str | None:
        return every if every is not None else faults.get(index)

    return fault_for


class ScriptedTTSService(TTSService):
    """A pipecat TTS service whose provider follows a fault plan.

    Args:
        provider_index: Encoded into the audio so tests can tell who spoke.
        faults: Which fault (if any) each request suffers; see ``FAULTS``.
        websocket: Deliver audio from a task of its own, as WebSocket services
            do; otherwise yield it from ``run_tts`` as HTTP services do.
        word_timestamps: Report word timestamps (else the base class pushes the
            sentence's text after its audio).
        ms_per_char: Audio length of each character of a word, as real speech
            (and the emulators): a word lasts as long as it is long.
        chunk_ms: Audio length of one chunk.
        pace: Seconds to wait between chunks (0: as fast as possible).
        ttfb: Seconds before the first chunk, or a function of the request index.
        stall_after_words: For ``stall``: words spoken before the audio stops
            (1.5: the first word and half the second).
        **kwargs: Passed to ``TTSService`` (``sample_rate``, for one).
    """

    def __init__(
        self,
        *,
        provider_index: int = 0,
        faults: FaultPlan | None = None,
        websocket: bool = True,
        word_timestamps: bool = True,
        ms_per_char: int = 60,
        chunk_ms: int = 60,
        pace: float = 0.0,
        ttfb: float | Callable[[int], float] = 0.0,
        stall_after_words: float = 2,
        **kwargs,
    ):
        super().__init__(
            push_start_frame=True,
            push_stop_frames=True,
            push_text_frames=not word_timestamps,
            settings=TTSSettings(model=None, voice=None, language=None),
            **kwargs,
        )
        self.provider_index = provider_index
        self.faults = faults or plan()
        self.websocket = websocket
        self.word_timestamps = word_timestamps
        self.ms_per_char = ms_per_char
        self.chunk_ms = chunk_ms
        self.pace = pace
        self.ttfb = ttfb
        self.stall_after_words = stall_after_words
        self.requests: list[str] = []
        self._tasks: dict[str, list[asyncio.Task]] = {}

    def can_generate_metrics(self) -> bool:
        return True

    async def run_tts(self, text: str, context_id: str) -> AsyncGenerator[Frame | None, None]:
        index = len(self.requests)
        self.requests.append(text)
        fault = self.faults(index, text)
        if fault == "raise":
            raise RuntimeError("scripted provider raised")
        if fault == "auth":
            await self.push_error("invalid API key", category=ErrorCategory.AUTHENTICATION)
            return
        ttfb = self.ttfb(index) if callable(self.ttfb) else self.ttfb
        if self.websocket:
            self._chain(context_id, self._deliver(text, context_id, fault, ttfb))
            yield None
            return
        async for frame in self._frames(text, context_id, fault, ttfb):
            if isinstance(frame, ErrorFrame):
                await self.push_error(frame.error)
                return
            yield frame

    def _chain(self, context_id: str, work):
        """Run ``work`` after what the context already has in hand, as a provider answers in order."""
        before = self._tasks.get(context_id, [])
        previous = before[-1] if before else None

        async def after_previous():
            if previous is not None:
                await asyncio.wait({previous})
            await work

        self._tasks[context_id] = [*before, self.create_task(after_previous())]

    async def flush_audio(self, context_id: str | None = None):
        # Like a WebSocket provider's "done": the context ends once everything
        # asked of it was delivered (a turn's sentences share one context).
        if context_id is not None:
            self._chain(context_id, self.remove_audio_context(context_id))

    async def on_audio_context_interrupted(self, context_id: str):
        for task in self._tasks.pop(context_id, []):
            await self.cancel_task(task)

    async def cleanup(self):
        await super().cleanup()
        for tasks in list(self._tasks.values()):
            for task in tasks:
                await self.cancel_task(task)
        self._tasks.clear()

    async def _deliver(self, text: str, context_id: str, fault: str | None, ttfb: float):
        async for frame in self._frames(text, context_id, fault, ttfb):
            if isinstance(frame, ErrorFrame):
                await self.push_error(frame.error)
                return
            await self.append_to_audio_context(context_id, frame)

    async def _frames(self, text: str, context_id: str, fault: str | None, ttfb: float):
        """The frames a request produces; an ErrorFrame stands for a provider error message."""
        if fault == "hang":
            await asyncio.Event().wait()
        if ttfb:
            await asyncio.sleep(ttfb)
        if fault == "empty":
            return
        words = text.split()
        samples_per_chunk = self.sample_rate * self.chunk_ms // 1000
        start = 0.0
        for i, word in enumerate(words):
            seconds = len(word) * self.ms_per_char / 1000
            # A fractional stall_after_words cuts the next word: 1.5 stops half way through the second.
            cut = self.stall_after_words - i if fault == "stall" else 1.0
            if cut <= 0:
                await asyncio.Event().wait()
            if fault == "error" and i == self.stall_after_words:
                yield ErrorFrame("scripted provider error message")
                return
            if self.word_timestamps:
                await self.add_word_timestamps([(word, start)], context_id)
            start += seconds
            value = 0 if fault == "zeros" else word_code(word, self.provider_index)
            audio = np.full(round(self.sample_rate * seconds), value, dtype="<i2").tobytes()
            if cut < 1:
                audio = audio[: int(len(audio) * cut) & ~1]
            for at in range(0, len(audio), samples_per_chunk * 2):
                yield TTSAudioRawFrame(
                    audio[at : at + samples_per_chunk * 2],
                    self.sample_rate,
                    1,
                    context_id=context_id,
                )
                if self.pace:
                    await asyncio.sleep(self.pace)
            if cut < 1:
                await asyncio.Event().wait()
            if fault == "slow":
                await asyncio.sleep(10)
