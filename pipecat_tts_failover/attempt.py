"""One sentence on one provider: its deadlines, what it lets through, and its verdict."""

import asyncio
import dataclasses
import re
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
from pipecat.utils.text.base_text_aggregator import TextType

from pipecat_tts_failover.detection import FailureReason, is_audible, reason_for_error
from pipecat_tts_failover.timeline import WordTimeline

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
        first_audio_at: Event-loop time the first audible audio reached the caller.
        lost: The attempt was dropped because another one (a hedge) spoke first.
        unannounced: Text frames of words the audio shows were heard in full
            but that had not been passed on when the attempt broke off (their
            words are in ``spoken_words``): the caller-facing stream owes them.
    """

    reason: FailureReason | None = None
    error: str | None = None
    spoken_words: list[str] = field(default_factory=list)
    audible: bool = False
    first_audio_at: float | None = None
    lost: bool = False
    unannounced: list[Frame] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """Whether the sentence was spoken in full."""
        return self.reason is None and not self.lost


class Attempt:
    """Watches what one provider pushes for one sentence and forwards what the caller should hear.

    The provider link hands every frame of the attempt to :meth:`on_frame` as
    the service pushes it, so audio is forwarded without another task hop.
    Audio is forwarded as soon as it is audible; digital silence before the
    first audible chunk is held back (and dropped if nothing audible follows),
    so a provider streaming zeros adds no dead air before the replay. Word
    frames travel in order with the audio. The attempt fails on an error, on no
    audio within the first-audio deadline, on a gap in the audio longer than
    the stall deadline, on too long a run of silence, or on an end with no
    audible audio.

    A word the provider timed (its frame's pts is later than the word
    before it) has started when its text comes, and is passed on once the
    audio shows it was said (see :class:`WordTimeline`) or the next word
    starts; a word cut mid-way is not passed on, and is said again by the
    next attempt. Text the service pushes without timing it
    (pipecat's "force-complete" of the words left when a context ends,
    which it does on a reconnect as on a normal end) is held until audio
    follows it or the service finishes the sentence, and dropped if the
    attempt fails first: a dropped socket must not pass the rest of the
    sentence off as spoken. Once every word of the sentence has been heard,
    the sentence is spoken whatever the provider does next (a stall where
    the end message should be, an error after the last word): saying it
    again would make the caller hear it twice.

    One timer watches both deadlines: it is armed for the first-audio deadline,
    moved to the stall deadline by the first chunk, and from then on re-armed
    lazily, only when it fires before the stall deadline has passed, so a
    chunk costs no timer work.

    Args:
        deadlines: The attempt's time limits.
        forward: Called with each frame the caller should get.
    """

    def __init__(self, provider_id: str, deadlines: Deadlines, forward: Forward):
        self.provider_id = provider_id
        self._deadlines = deadlines
        self._forward = forward
        self._loop = asyncio.get_running_loop()
        self.done: asyncio.Future[AttemptResult] = self._loop.create_future()
        self.started_at = self._loop.time()
        self._timer: asyncio.TimerHandle | None = None
        self._last_audio_at: float | None = None
        self._held: list[Frame] = []
        # Untimed text after audible audio, waiting for audio or the end to follow.
        self._untimed: list[Frame] = []
        self._last_word_pts: int | None = None
        self._text: str | None = None
        self._silent_run = 0.0
        self._timeline: WordTimeline | None = None
        # Seconds of audio received when the first timed words' text arrived.
        self._arrived: dict[int, float] = {}
        # The word being said (its text frame and the progress frames after it).
        self._saying: list[Frame] = []
        self.result = AttemptResult()
        # Whether the service ended the sentence itself, with nothing wrong
        # reported: otherwise it may still hold some of it.
        self.service_done = False

    @property
    def finished(self) -> bool:
        """Whether the verdict is in."""
        return self.done.done()

    @property
    def has_audio(self) -> bool:
        """Whether any audio (audible or not) has arrived."""
        return self._last_audio_at is not None

    @property
    def first_audio_latency(self) -> float | None:
        """Seconds from the request to the first audible audio, once there was some."""
        at = self.result.first_audio_at
        return None if at is None else at - self.started_at

    def expect(self, text: str, seconds_per_char: float | None = None):
        """Tell the attempt the text the provider was asked to speak.

        Args:
            text: The text; the attempt knows from it when all was heard.
            seconds_per_char: The provider's speech rate, when it was measured.
        """
        self._text = text
        self._timeline = WordTimeline(text, seconds_per_char)

    @property
    def speech_rate(self) -> float | None:
        """Seconds per character the provider spoke at in this attempt, once two words told."""
        return None if self._timeline is None else self._timeline.measured_rate

    def limit_stall(self, seconds: float | None):
        """Keep the stall deadline below ``seconds``.

        A service that ends a sentence on its own after a quiet spell (pipecat's
        ``stop_frame_timeout_s`` with ``push_stop_frames``) pushes its stop
        frame, and the words it never spoke, as if the sentence were over: the
        stall must be caught before that.
        """
        if seconds is not None and seconds < self._deadlines.stall:
            self._deadlines = dataclasses.replace(self._deadlines, stall=seconds)

    def extend_first_audio(self, seconds: float):
        """Wait for the first audio until ``seconds`` after the request, if that is later."""
        if self.has_audio or self.done.done() or seconds <= self._deadlines.first_audio:
            return
        self._deadlines = dataclasses.replace(self._deadlines, first_audio=seconds)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = self._loop.call_at(self.started_at + seconds, self._on_timer)

    def start(self):
        """Start the first-audio deadline (call once the request is sent)."""
        self.started_at = self._loop.time()
        self._timer = self._loop.call_at(
            self.started_at + self._deadlines.first_audio, self._on_timer
        )

    async def wait(self) -> AttemptResult:
        """Start the deadline and wait for the verdict."""
        self.start()
        return await self.done

    def lose(self):
        """Drop the attempt: another one spoke first."""
        self.result.lost = True
        self._finish()

    async def on_frame(self, frame: Frame):
        """Take one frame the provider's service pushed for this sentence."""
        if self.done.done():
            return
        if isinstance(frame, TTSAudioRawFrame):
            if self._timeline is not None:
                self._timeline.add_audio(_seconds(frame))
            first = self._last_audio_at is None
            self._last_audio_at = self._loop.time()
            if first and self._timer is not None:
                # From now on the stall deadline is the one that matters.
                self._timer.cancel()
                self._timer = self._loop.call_at(
                    self._last_audio_at + self._deadlines.stall, self._on_timer
                )
            await self._on_audio(frame)
        elif isinstance(frame, (TTSTextFrame, AggregatedTextProgressFrame)):
            timeline = self._timeline
            first_word = timeline is not None and timeline.current_index is None
            if first_word and isinstance(frame, TTSTextFrame) and frame.pts:
                # Where the first timed word sits in the audio.
                self._arrived[frame.id] = timeline.received
            await self._pass(frame)
        elif isinstance(frame, ErrorFrame):
            self._fail_on_error(frame)
        elif isinstance(frame, TTSStoppedFrame):
            self.service_done = True
            if self._last_audio_at is None:
                # pipecat reports a context that ended silent as an error of its
                # own, right behind the stop frame: the reason is the silence.
                self._fail(FailureReason.NO_AUDIO)
            elif not self.result.audible:
                self._fail(FailureReason.SILENT_AUDIO)
            else:
                # Some services (pipecat's Cartesia, on a provider error message)
                # push a stop frame and then the error in the same step: decide
                # once that step is over.
                self._loop.call_soon(self._succeed)
        # TTSStartedFrame and the service's own announcements are the
        # caller-facing stream's business, not the attempt's.

    def _on_timer(self):
        now = self._loop.time()
        if self._last_audio_at is None:
            self._fail(FailureReason.NO_FIRST_AUDIO)
            return
        stall_at = self._last_audio_at + self._deadlines.stall
        if now >= stall_at:
            self._fail(FailureReason.STALLED)
        else:
            self._timer = self._loop.call_at(stall_at, self._on_timer)

    def _succeed(self):
        """The sentence was spoken: the text still held of it is owed to the caller."""
        if self.done.done():
            return
        self._owe([*self._saying, *self._untimed])
        self._held.clear()
        self._untimed.clear()
        self._saying.clear()
        self._finish()

    def _finish(self):
        if self._timer is not None:
            self._timer.cancel()
        if not self.done.done():
            self.done.set_result(self.result)

    async def _on_audio(self, frame: TTSAudioRawFrame):
        """Forward or hold an audio chunk; fail once silence has gone on too long."""
        await self._confirm_untimed()
        if is_audible(frame.audio, self._deadlines.silence_floor):
            self._silent_run = 0.0
            if not self.result.audible:
                self.result.audible = True
                self.result.first_audio_at = self._loop.time()
                await self._flush_held(frame)
            else:
                await self._forward(frame)
        else:
            self._silent_run += _seconds(frame)
            if self._silent_run > self._deadlines.stall:
                self._fail(FailureReason.SILENT_AUDIO)
                return
            if not self.result.audible:
                self._held.append(frame)
                return
            await self._forward(frame)
        if self._saying and self._timeline is not None and self._timeline.current_said:
            await self._release_saying()

    async def _pass(self, frame: Frame):
        """Forward a word frame in order with the audio around it."""
        if not self.result.audible:
            self._held.append(frame)
        elif self._untimed or (isinstance(frame, TTSTextFrame) and not self._timed(frame)):
            # A progress frame travels with the text before it.
            self._untimed.append(frame)
        elif isinstance(frame, TTSTextFrame):
            # A word starts: the one before it has ended.
            await self._release_saying()
            self._start_word(frame)
        elif self._saying:
            self._saying.append(frame)
        else:
            await self._emit_text(frame)

    def _start_word(self, frame: TTSTextFrame):
        assert frame.pts
        self._last_word_pts = max(frame.pts, self._last_word_pts or 0)
        self._saying = [frame]
        if self._timeline is not None:
            arrived = self._arrived.pop(frame.id, self._timeline.received)
            self._timeline.word_started(len(self.result.spoken_words), frame.pts, arrived)

    async def _release_saying(self):
        """The word being said was heard: pass it on."""
        saying, self._saying = self._saying, []
        for frame in saying:
            await self._emit_text(frame)

    def _timed(self, frame: TTSTextFrame) -> bool:
        """Whether the provider timed this word: a pts later than the word before it."""
        if not frame.pts:
            return False
        return self._last_word_pts is None or frame.pts > self._last_word_pts

    async def _confirm_untimed(self):
        """Audio (or the end of the sentence) followed the untimed text: it was spoken."""
        if not self._untimed:
            return
        await self._release_saying()
        untimed, self._untimed = self._untimed, []
        for frame in untimed:
            await self._emit_text(frame)

    async def _flush_held(self, first_audible: TTSAudioRawFrame):
        """Release what was held once audio turned audible: the audio first, then the words.

        The words held so far have timestamps for the output to play them in
        step with the audio; the audio goes out first, so that the caller's
        first sound waits for no text.
        """
        held, self._held = self._held, []
        for frame in held:
            if isinstance(frame, TTSAudioRawFrame):
                await self._forward(frame)
        await self._forward(first_audible)
        for frame in held:
            if not isinstance(frame, TTSAudioRawFrame):
                await self._pass(frame)

    async def _emit_text(self, frame: Frame):
        if isinstance(frame, TTSTextFrame):
            self.result.spoken_words.extend(frame.text.split())
        await self._forward(frame)

    def _settle_words_at_break(self):
        """Keep, of the words not passed on yet, those the audio shows were said in full.

        The word being said when the attempt broke off counts if most of it was
        heard, and so do words after it that the audio covers though their
        text never came; they are owed to the caller-facing stream. A word cut
        before then is left for the next attempt to say.
        """
        saying, self._saying = self._saying, []
        timeline = self._timeline
        if timeline is None or timeline.current_index is None:
            return
        if saying and not timeline.current_said:
            return
        self._owe(saying)
        words = timeline.said_after_current()
        if words and timeline.current_index == len(self.result.spoken_words) - 1:
            self._owe([TTSTextFrame(" ".join(words), TextType.WORD)])

    def _owe(self, frames: list[Frame]):
        """Count these text frames' words as spoken; the caller-facing stream is to pass them on."""
        for frame in frames:
            if isinstance(frame, TTSTextFrame):
                self.result.spoken_words.extend(frame.text.split())
        self.result.unannounced.extend(frames)

    def _heard_everything(self) -> bool:
        """Whether every word of the sentence has reached the caller."""
        if self._text is None or not self.result.audible or not self.result.spoken_words:
            return False
        return unspoken_text(self._text, self.result.spoken_words).strip() == ""

    def _fail_on_error(self, frame: ErrorFrame):
        usable = frame.processor.is_usable if frame.processor else True
        reason = reason_for_error(frame.category, raised=frame.exception is not None, usable=usable)
        self._fail(reason, frame.error)

    def _fail(self, reason: FailureReason, error: str | None = None):
        self.service_done = False
        if self.done.done():
            return
        self._settle_words_at_break()
        self._untimed.clear()
        if self._heard_everything():
            # The caller heard the whole sentence: what went wrong after its
            # last word (no end message, an error, trailing silence) is not
            # worth hearing it twice.
            self._succeed()
            return
        self.result.reason = reason
        self.result.error = error
        self._finish()


def _seconds(frame: TTSAudioRawFrame) -> float:
    return len(frame.audio) / (2 * frame.num_channels * frame.sample_rate)


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
