"""Bare and wrapped: one scenario through a pipecat TTS service alone and inside FailoverTTSService.

A scenario is a list of frames to send and waits (:func:`until`). :func:`run`
plays it through a real pipeline and records what reached either end;
:func:`frame_signature` turns a recording into comparable lines, so that a
healthy call through ``FailoverTTSService`` can be asserted line for line
equal to the bare service's. What may differ between two runs of the same
service is normalized away, nothing else:

- ``pts``: word times are counted from the clock when a context's first audio
  arrives, so each pts is written as its exact offset (in ns) from the run's
  first word frame (``<w0`` before it). The fake provider's words last far
  longer than a frame takes to cross a pipeline, so a later context's words
  are timed from the previous word, not the clock, and their offsets are
  exact too. A segment announcement (``AggregatedTextFrame``) is stamped with
  the clock or the last word's pts, whichever is later: it is written as
  ``clock`` before any word, else as ``=``, ``>`` or ``<`` the last word's.
- context ids are uuids: each is written as the order it first appeared in
  (``c0``, ``c1``...), also inside error messages.
- segment ids name an ``AggregatedTextFrame`` of the run: written as that
  frame's ordinal among them (``seg0``...).
- frame ids, names, a processor's instance number in an error message
  (``ElevenLabsTTSService#n``) and the processor of an error (its class is kept).
- RTVI messages (the pipeline worker adds an RTVI observer by default) are
  urgent frames, whose place among the service's frames is a race in any
  run: they are compared on their own, in order.

Audio is written as its length and a hash of its bytes, so a resampled or
altered chunk shows. ``merge_audio`` joins consecutive chunks of one context
first, for services whose chunking follows the network (HTTP streaming).
"""

import asyncio
import dataclasses
import difflib
import hashlib
import re
from collections.abc import AsyncGenerator, Awaitable, Callable, Sequence
from dataclasses import dataclass

import numpy as np
from loguru import logger
from pipecat.frames.frames import (
    AggregatedTextFrame,
    ErrorFrame,
    Frame,
    OutputTransportMessageUrgentFrame,
    TTSAudioRawFrame,
    TTSStoppedFrame,
    TTSTextFrame,
)
from pipecat.processors.frame_processor import FrameProcessor
from pipecat.services.settings import TTSSettings
from pipecat.services.tts_service import TTSService
from pipecat.utils.text.skip_tags_aggregator import SkipTagsAggregator

from pipecat_tts_failover import FailoverTTSService, InMemoryHealthStore
from tests.support.pipeline import PipelineHarness
from tests.support.scripted import word_code

# Audio (and word-time spacing) of each word a fake provider speaks: far longer
# than a pipeline takes to move a frame, so the clock never overtakes the word
# times (see the module docstring on pts).
WORD_SECONDS = 0.2
SAMPLE_RATE = 16000
_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
# A processor's instance number, as in "ElevenLabsTTSService#3".
_INSTANCE = re.compile(r"#\d+\b")
_MARKUP = re.compile(r"<[^>]*>")
# Fields that name a frame rather than describe it, and fields normalized apart.
_IDENTITY_FIELDS = {"id", "name", "broadcast_sibling_id", "metadata", "num_frames"}
_NORMALIZED_FIELDS = {"pts", "context_id", "segment_id", "audio", "processor", "exception", "error"}


#
# A fake provider
#


def spoken_words(text: str) -> list[str]:
    """The words a fake provider says for ``text``: its words, inline markup left out."""
    return [w for w in (_MARKUP.sub("", word) for word in text.split()) if w]


def word_audio(word: str, provider_index: int, sample_rate: int) -> bytes:
    """A word's audio from a fake provider: constant samples that name the word and provider."""
    samples = round(sample_rate * WORD_SECONDS)
    return np.full(samples, word_code(word, provider_index), dtype="<i2").tobytes()


class FakeTTSService(TTSService):
    """A pipecat TTS service whose provider is a script, as pipecat's own TTS tests fake one.

    Every word is one chunk of :func:`word_audio`, timed (when the provider
    reports word timestamps) at ``WORD_SECONDS`` per word from the start of
    its audio context, as a real provider times a context's words.

    Args:
        transport: ``"http"``: audio is yielded from ``run_tts`` and pipecat
            ends the context (``push_stop_frames``); ``"ws"``: audio comes from
            a receive task, in request order, and the context ends when pipecat
            flushes it at the end of the turn.
        word_timestamps: Report word timestamps; otherwise pipecat pushes each
            request's text after its audio (``push_text_frames``).
        word_times: Word timestamps to report per request, in request order,
            instead of the words of the text (an empty list reports none).
        provider_index: Encoded into the audio, to tell providers apart.
        fail_request: ``(request index, words spoken first)``: that request's
            provider reports an error, in the stream after those words.
        tags: Inline markup pairs kept whole by the service's own aggregator
            (a ``SkipTagsAggregator``, as ``CartesiaTTSService`` sets up).
        **kwargs: Passed to ``TTSService`` (``skip_text_types``,
            ``text_transforms``, ``text_aggregation_mode``, ``sample_rate``).
    """

    def __init__(
        self,
        *,
        transport: str = "ws",
        word_timestamps: bool = True,
        word_times: Sequence[Sequence[tuple[str, float]]] | None = None,
        provider_index: int = 0,
        fail_request: tuple[int, int] | None = None,
        tags: Sequence[tuple[str, str]] | None = None,
        **kwargs,
    ):
        ws = transport == "ws"
        super().__init__(
            push_start_frame=True,
            push_stop_frames=not ws,
            push_text_frames=not word_timestamps,
            settings=TTSSettings(model=None, voice=None, language=None),
            **kwargs,
        )
        if tags:
            self._text_aggregator = SkipTagsAggregator(
                list(tags), aggregation_type=self._text_aggregation_mode
            )
        self.transport = transport
        self.word_timestamps = word_timestamps
        self._word_times = list(word_times) if word_times is not None else None
        self.provider_index = provider_index
        self.fail_request = fail_request
        self.requests: list[str] = []
        self.requested = asyncio.Event()
        # Seconds of audio each context has had so far: its next word's time.
        self._context_time: dict[str, float] = {}
        self._outbox: asyncio.Queue | None = None
        self._receiver: asyncio.Task | None = None

    def can_generate_metrics(self) -> bool:
        return True

    async def run_tts(self, text: str, context_id: str) -> AsyncGenerator[Frame | None, None]:
        index = len(self.requests)
        self.requests.append(text)
        self.requested.set()
        if self.transport == "ws":
            await self._send(("speak", index, text, context_id))
            yield None
            return
        for frame in self._speech(index, text, context_id):
            if isinstance(frame, list):
                await self.add_word_timestamps(frame, context_id)
            else:
                yield frame

    async def flush_audio(self, context_id: str | None = None):
        context_id = context_id or self.get_active_audio_context_id()
        if self.transport == "ws" and context_id:
            await self._send(("close", context_id))

    async def cleanup(self):
        await super().cleanup()
        if self._receiver is not None:
            await self.cancel_task(self._receiver)
            self._receiver = None

    def _speech(self, index: int, text: str, context_id: str) -> list:
        """What the provider sends for a request: word-timestamp lists, audio and error frames."""
        out: list = []
        start = self._context_time.get(context_id, 0.0)
        words = spoken_words(text)
        given = None
        if self._word_times is not None:
            given = list(self._word_times[index]) if index < len(self._word_times) else []
            if self.word_timestamps and given:
                out.append([(w, start + t) for w, t in given])
        for i, word in enumerate(words):
            if self.fail_request == (index, i):
                out.append(ErrorFrame(f"provider error speaking [{word}]"))
                return out
            if self.word_timestamps and given is None:
                out.append([(word, start + i * WORD_SECONDS)])
            out.append(
                TTSAudioRawFrame(
                    word_audio(word, self.provider_index, self.sample_rate),
                    self.sample_rate,
                    1,
                    context_id=context_id,
                )
            )
        self._context_time[context_id] = start + len(words) * WORD_SECONDS
        return out

    async def _send(self, message: tuple):
        if self._outbox is None:
            self._outbox = asyncio.Queue()
            self._receiver = self.create_task(self._receive(), name=f"{self}::receive")
        await self._outbox.put(message)

    async def _receive(self):
        """The provider's side of the socket: answers each message in order."""
        assert self._outbox is not None
        while True:
            message = await self._outbox.get()
            if message[0] == "close":
                context_id = message[1]
                self._context_time.pop(context_id, None)
                if self.audio_context_available(context_id):
                    await self.append_to_audio_context(
                        context_id, TTSStoppedFrame(context_id=context_id)
                    )
                    await self.remove_audio_context(context_id)
                continue
            _, index, text, context_id = message
            for item in self._speech(index, text, context_id):
                if isinstance(item, list):
                    await self.add_word_timestamps(item, context_id)
                else:
                    # An error goes in the stream too: pipecat reports it in playing order.
                    await self.append_to_audio_context(context_id, item)


#
# Running a scenario
#


@dataclass
class Recording:
    """The frames that reached the end of the pipeline (``down``) and its start (``up``)."""

    down: list[Frame]
    up: list[Frame]

    def of(self, *types: type) -> list[Frame]:
        return [f for f in self.down if isinstance(f, types)]

    @property
    def words(self) -> list[str]:
        return [f.text for f in self.of(TTSTextFrame)]

    @property
    def errors(self) -> list[ErrorFrame]:
        return [f for f in self.up if isinstance(f, ErrorFrame)]


Step = Frame | Callable[[PipelineHarness], Awaitable[None]]


def until(predicate: Callable[[Recording], bool], timeout: float = 5.0) -> Step:
    """A step that waits until ``predicate`` holds for what has come out so far.

    A run that never gets there goes on to its end after ``timeout``, so the
    comparison shows what came out instead.
    """

    async def wait(h: PipelineHarness):
        try:
            await h.wait_for(lambda: predicate(Recording(h.down, h.up)), timeout=timeout)
        except TimeoutError:
            logger.warning(f"{h.processor}: scenario wait timed out after {timeout}s")

    return wait


def requested(service: FakeTTSService, count: int, timeout: float = 5.0) -> Step:
    """A step that waits until ``service`` has sent ``count`` requests to its provider."""

    async def wait(h: PipelineHarness):
        try:
            async with asyncio.timeout(timeout):
                while len(service.requests) < count:
                    service.requested.clear()
                    await service.requested.wait()
        except TimeoutError:
            logger.warning(f"{service}: {count} requests awaited, {len(service.requests)} came")

    return wait


def count(*types: type, at_least: int = 1) -> Callable[[Recording], bool]:
    """A predicate: at least ``at_least`` frames of ``types`` came out."""
    return lambda r: len(r.of(*types)) >= at_least


async def run(
    processor: FrameProcessor, steps: Sequence[Step], *, sample_rate: int = SAMPLE_RATE
) -> Recording:
    """Play ``steps`` through ``processor`` in a real pipeline, then end it with an EndFrame."""
    async with PipelineHarness(processor, audio_out_sample_rate=sample_rate) as h:
        for step in steps:
            if isinstance(step, Frame):
                await h.send(step)
            else:
                await step(h)
    return Recording(list(h.down), list(h.up))


def wrap(
    primary: TTSService, backup: TTSService | Callable[[], TTSService], **kwargs
) -> FailoverTTSService:
    """``primary`` and ``backup`` (or its factory) inside a FailoverTTSService with a store of its own."""
    return FailoverTTSService(
        services={"primary": primary, "backup": backup},
        store=kwargs.pop("store", InMemoryHealthStore()),
        **kwargs,
    )


#
# Comparing runs
#


class _Names:
    """Stable names for what differs between two runs of the same scenario."""

    def __init__(self, down: Sequence[Frame]):
        self.contexts: dict[str, str] = {}
        segments = [f.id for f in down if isinstance(f, AggregatedTextFrame)]
        self.segments = {fid: f"seg{i}" for i, fid in enumerate(segments)}
        first_word = next((f.pts for f in down if isinstance(f, TTSTextFrame) and f.pts), None)
        self.first_word_pts = first_word
        self.last_word_pts: int | None = None

    def context(self, context_id: str | None) -> str | None:
        if context_id is None:
            return None
        return self.contexts.setdefault(context_id, f"c{len(self.contexts)}")

    def segment(self, segment_id: int | None) -> str | None:
        if segment_id is None:
            return None
        return self.segments.get(segment_id, "seg?")

    def pts(self, frame: Frame) -> str | None:
        pts = frame.pts
        if not pts:
            return None if pts is None else "0"
        if isinstance(frame, AggregatedTextFrame):
            # An announcement: stamped with the clock, or the last word's pts if later.
            last = self.last_word_pts
            if last is None:
                return "clock"
            return "=last word" if pts == last else (">last word" if pts > last else "<last word")
        if isinstance(frame, TTSTextFrame):
            self.last_word_pts = pts
        if self.first_word_pts is None:
            return "set"
        offset = pts - self.first_word_pts
        return "<w0" if offset < 0 else f"w0+{offset}ns"

    def text(self, text: str) -> str:
        text = _UUID.sub(lambda m: self.context(m.group()) or "", text)
        return _INSTANCE.sub("#n", text)


def _describe(frame: Frame, names: _Names) -> str:
    fields = {}
    for field in dataclasses.fields(frame):
        if field.name in _IDENTITY_FIELDS or field.name in _NORMALIZED_FIELDS:
            continue
        fields[field.name] = getattr(frame, field.name)
    fields["pts"] = names.pts(frame)
    if hasattr(frame, "context_id"):
        fields["context_id"] = names.context(frame.context_id)
    if hasattr(frame, "segment_id"):
        fields["segment_id"] = names.segment(frame.segment_id)
    if isinstance(frame, TTSAudioRawFrame):
        fields["audio"] = f"{len(frame.audio)}B:{hashlib.sha1(frame.audio).hexdigest()[:10]}"
    if isinstance(frame, ErrorFrame):
        fields["error"] = names.text(frame.error)
        fields["processor"] = type(frame.processor).__name__ if frame.processor else None
        exc = frame.exception
        fields["exception"] = (
            None if exc is None else f"{type(exc).__name__}({names.text(str(exc))})"
        )
    body = ", ".join(f"{k}={v!r}" for k, v in sorted(fields.items()))
    return f"{type(frame).__name__}({body})"


def _merged(frames: Sequence[Frame]) -> list[Frame]:
    """Consecutive audio chunks of one context, rate and layout joined into one chunk."""
    out: list[Frame] = []
    for frame in frames:
        last = out[-1] if out else None
        if (
            isinstance(frame, TTSAudioRawFrame)
            and isinstance(last, TTSAudioRawFrame)
            and (last.context_id, last.sample_rate, last.num_channels)
            == (frame.context_id, frame.sample_rate, frame.num_channels)
        ):
            joined = TTSAudioRawFrame(
                last.audio + frame.audio,
                last.sample_rate,
                last.num_channels,
                context_id=last.context_id,
            )
            joined.pts = last.pts
            joined.transport_destination = last.transport_destination
            out[-1] = joined
        else:
            out.append(frame)
    return out


def frame_signature(
    down: Sequence[Frame], up: Sequence[Frame] = (), *, merge_audio: bool = False
) -> tuple[list[str], list[str]]:
    """Lines describing a run's downstream and upstream frames, equal for equal streams.

    Args:
        down: The frames that reached the end of the pipeline, in order.
        up: The frames that reached its start, in order.
        merge_audio: Join consecutive audio chunks of a context first.

    Returns:
        ``(downstream lines, upstream lines)``.
    """
    names = _Names(down)
    down = [f for f in down if not is_rtvi(f)]
    down = _merged(down) if merge_audio else down
    return [_describe(f, names) for f in down], [_describe(f, names) for f in up]


def is_rtvi(frame: Frame) -> bool:
    """Whether a frame is an RTVI message (the pipeline worker's RTVI observer adds them)."""
    message = getattr(frame, "message", None)
    return isinstance(frame, OutputTransportMessageUrgentFrame) and (
        isinstance(message, dict) and message.get("label") == "rtvi-ai"
    )


def rtvi_messages(frames: Sequence[Frame]) -> list[str]:
    """The types of the RTVI messages among ``frames``, in order."""
    return [f.message.get("type") for f in frames if is_rtvi(f)]


def assert_same_frames(bare: Recording, wrapped: Recording, *, merge_audio: bool = False):
    """The wrapped run's frames, both ways, are the bare run's, line for line."""
    bare_down, bare_up = frame_signature(bare.down, bare.up, merge_audio=merge_audio)
    wrapped_down, wrapped_up = frame_signature(wrapped.down, wrapped.up, merge_audio=merge_audio)
    assert wrapped_down == bare_down, _diff("downstream", bare_down, wrapped_down)
    assert wrapped_up == bare_up, _diff("upstream", bare_up, wrapped_up)
    bare_rtvi, wrapped_rtvi = rtvi_messages(bare.down), rtvi_messages(wrapped.down)
    assert wrapped_rtvi == bare_rtvi, _diff("RTVI", bare_rtvi, wrapped_rtvi)


def _diff(direction: str, bare: list[str], wrapped: list[str]) -> str:
    lines = difflib.unified_diff(bare, wrapped, "bare", "wrapped", lineterm="", n=2)
    return f"{direction} frames differ from the bare service's:\n" + "\n".join(lines)
