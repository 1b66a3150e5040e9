"""One sentence on one provider: its deadlines, what it lets through, and its verdict."""

import asyncio
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from pipecat.frames.frames import (
    AggregatedTextProgressFrame,
    ErrorFrame,
    Frame,
    TTSAudioRawFrame,
    TTSStoppedFrame,
    TTSTextFrame,
)

from pipecat_tts_failover.detection import FailureReason, is_audible, reason_for_error

Forward = Callable[[Frame], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class Deadlines:
    """The time limits of one attempt.

    Parameters:
        first_audio: Seconds from the request to the first audio byte.
        stall: Longest gap between audio chunks before the end of the sentence,
            and the most digital silence (in seconds of audio) tolerated in a row.
        silence_floor: RMS level (0..32768) at or below which audio is silence.
    """

    first_audio: float
    stall: float
    silence_floor: float


@dataclass
class AttemptResult:
    """How an attempt ended.

    Parameters:
        reason: Why it failed, or None if the sentence was spoken in full.
        error: The provider's error message, when there was one.
        spoken_words: Words whose audio reached the caller, in order.
        audible: Whether any audible audio reached the caller.
        first_audio_at: Monotonic time the first audio reached the caller.
    """

    reason: FailureReason | None = None
    error: str | None = None
    spoken_words: list[str] = field(default_factory=list)
    audible: bool = False
    first_audio_at: float | None = None

    @property
    def ok(self) -> bool:
        """Whether the sentence was spoken in full."""
        return self.reason is None


class Attempt:
    """Watches what one provider pushes for one sentence and forwards what the caller should hear.

    Audio is forwarded as soon as it is audible; digital silence before the
    first audible chunk is held back (and dropped if nothing audible follows),
    so a provider streaming zeros adds no dead air before the replay. Word
    frames travel in order with the audio. The attempt fails on an error, on no
    audio within the first-audio deadline, on a gap in the audio longer than
    the stall deadline, on too long a run of silence, or on an end with no
    audible audio.

    Args:
        inbox: Where the provider link puts the service's frames.
        deadlines: The attempt's time limits.
        forward: Called with each frame the caller should get.
        clock: Monotonic clock, injectable for tests.
    """

    def __init__(
        self,
        inbox: asyncio.Queue[Frame],
        deadlines: Deadlines,
        forward: Forward,
        clock: Callable[[], float] = time.monotonic,
    ):
        self._inbox = inbox
        self._deadlines = deadlines
        self._forward = forward
        self._clock = clock
        self._held: list[Frame] = []
        self._silent_run = 0.0
        self.result = AttemptResult()

    async def run(self) -> AttemptResult:
        """Watch the attempt until the provider finishes the sentence or fails it."""
        started = self._clock()
        deadline = started + self._deadlines.first_audio
        got_audio = False
        while True:
            try:
                async with asyncio.timeout(max(0.0, deadline - self._clock())):
                    frame = await self._inbox.get()
            except TimeoutError:
                return self._fail(
                    FailureReason.STALLED if got_audio else FailureReason.NO_FIRST_AUDIO
                )

            if isinstance(frame, ErrorFrame):
                return self._fail_on_error(frame)
            if isinstance(frame, TTSAudioRawFrame):
                got_audio = True
                deadline = self._clock() + self._deadlines.stall
                if not await self._on_audio(frame):
                    return self._fail(FailureReason.SILENT_AUDIO)
            elif isinstance(frame, (TTSTextFrame, AggregatedTextProgressFrame)):
                await self._pass(frame)
            elif isinstance(frame, TTSStoppedFrame):
                # pipecat reports a context that ended silent as an error of its
                # own, right behind the stop frame: the reason is the silence.
                if not got_audio:
                    return self._fail(FailureReason.NO_AUDIO)
                if error := await self._error_right_behind():
                    return self._fail_on_error(error)
                if not self.result.audible:
                    return self._fail(FailureReason.SILENT_AUDIO)
                await self._flush_held()
                return self.result
            # TTSStartedFrame and the service's own announcements are the
            # caller-facing stream's business, not the attempt's.

    async def _error_right_behind(self) -> ErrorFrame | None:
        """An error the service reported together with its stop frame.

        Some services (pipecat's Cartesia, on a provider error message) push a
        stop frame and then the error in the same step: let that step finish,
        and treat the stop as the error it is.
        """
        await asyncio.sleep(0)
        while not self._inbox.empty():
            frame = self._inbox.get_nowait()
            if isinstance(frame, ErrorFrame):
                return frame
        return None

    def _fail_on_error(self, frame: ErrorFrame) -> AttemptResult:
        usable = frame.processor.is_usable if frame.processor else True
        reason = reason_for_error(frame.category, raised=frame.exception is not None, usable=usable)
        return self._fail(reason, frame.error)

    async def _on_audio(self, frame: TTSAudioRawFrame) -> bool:
        """Forward or hold an audio chunk; False once silence has gone on too long."""
        seconds = len(frame.audio) / (2 * frame.num_channels * frame.sample_rate)
        if is_audible(frame.audio, self._deadlines.silence_floor):
            self._silent_run = 0.0
            if not self.result.audible:
                self.result.audible = True
                self.result.first_audio_at = self._clock()
            await self._flush_held()
            await self._forward(frame)
            return True
        self._silent_run += seconds
        if self._silent_run > self._deadlines.stall:
            return False
        if self.result.audible:
            await self._forward(frame)
        else:
            self._held.append(frame)
        return True

    async def _pass(self, frame: Frame):
        """Forward a word frame in order with the audio around it."""
        if self._held or not self.result.audible:
            self._held.append(frame)
        else:
            await self._emit_text(frame)

    async def _flush_held(self):
        held, self._held = self._held, []
        for frame in held:
            if isinstance(frame, TTSAudioRawFrame):
                await self._forward(frame)
            else:
                await self._emit_text(frame)

    async def _emit_text(self, frame: Frame):
        if isinstance(frame, TTSTextFrame):
            self.result.spoken_words.extend(frame.text.split())
        await self._forward(frame)

    def _fail(self, reason: FailureReason, error: str | None = None) -> AttemptResult:
        self.result.reason = reason
        self.result.error = error
        return self.result


_PUNCTUATION = re.compile(r"[^\w']+", re.UNICODE)


def _word_key(word: str) -> str:
    return _PUNCTUATION.sub("", word).casefold()


def unspoken_text(text: str, spoken_words: list[str]) -> str:
    """The part of ``text`` still to say once ``spoken_words`` have been heard.

    Words are matched in order, ignoring case and punctuation. If the spoken
    words do not line up with the text (a provider that rewrote it, say), the
    whole text is returned: saying a few words twice beats losing some.

    Args:
        text: The sentence.
        spoken_words: Words already heard, in order.

    Returns:
        The remaining text, or the whole text when it cannot be lined up.
    """
    spoken = [k for k in (_word_key(w) for w in spoken_words) if k]
    if not spoken:
        return text
    tokens = text.split()
    i = 0
    for key in spoken:
        while i < len(tokens) and not _word_key(tokens[i]):
            i += 1
        if i >= len(tokens) or _word_key(tokens[i]) != key:
            return text
        i += 1
    return " ".join(tokens[i:])
