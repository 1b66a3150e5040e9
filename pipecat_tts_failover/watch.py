"""Watching one provider's service speak: its deadlines, its silence, and the verdict."""

import asyncio
import dataclasses
from collections.abc import Callable
from dataclasses import dataclass

from pipecat.frames.frames import (
    AggregatedTextFrame,
    AggregatedTextProgressFrame,
    TTSAudioRawFrame,
    TTSStartedFrame,
    TTSStoppedFrame,
    TTSTextFrame,
)

from pipecat_tts_failover.detection import FailureReason, pcm16_rms, pcm16_rms_even
from pipecat_tts_failover.speakable import has_alnum
from pipecat_tts_failover.timeline import HEARD_SHARE, TYPICAL_SECONDS_PER_CHAR, WordTimeline


@dataclass(frozen=True, slots=True)
class Deadlines:
    """The time limits of a provider speaking.

    Parameters:
        first_audio: Seconds from a request to its first audio.
        stall: Longest gap between audio chunks while speech is owed, and the
            most digital silence (in seconds of audio) tolerated in a row.
        silence_floor: RMS level (0..32768) at or below which audio is silence.
    """

    first_audio: float
    stall: float
    silence_floor: float


OnFailure = Callable[[FailureReason, str | None], None]
_NO_CONTEXT = object()
# Seconds of audio past the expected end of a request's last word that are
# still taken for that word (word lengths are estimates).
_TAIL_MARGIN = 0.3
# Share of its first word's expected length the audio must cover for a
# segment pipecat completed untimed to have had audio.
_REACHED_SHARE = 0.5
# Characters of a segment between its first and last timed words for the
# audio between them to measure the provider's speech rate.
_RATE_SPAN = 10


class SpeechWatch:
    """Watches what one provider's service does with the text it was handed.

    The service aggregates text and sends requests to its provider itself; the
    watch is told of each request (pipecat's ``on_tts_request``) and of every
    frame the service pushes. pipecat announces each request's text (an
    ``AggregatedTextFrame`` it will speak) just ahead of its audio, in playing
    order: from that announcement the request's audio is due within
    ``first_audio`` (from the request itself when it was sent with nothing
    playing), and once it has started it must not stop for longer than
    ``stall`` until the request is done. A request is done when its last word
    has been heard (word timestamps), when its text comes after its audio
    (services without them), when the next request's announcement comes out,
    or when its audio context ends. Digital silence for longer than ``stall``,
    or a context that ends with no audible audio, fails too; so does a context
    whose audio never reached a sentence of several words that pipecat
    completed, untimed, at its end (a context closed under the reply's next
    sentences, say: a settings change on ElevenLabs).

    One timer watches both deadlines; a chunk of audio costs no timer work
    (the timer re-arms itself lazily when it fires early).

    Args:
        deadlines: The provider's time limits.
        on_failure: Called once, with the reason and the provider's message.
        word_timestamps: Whether the service reports word timestamps.
        speech_rate: The provider's measured seconds per character, if known.
    """

    # One per span of speech of every call: no instance dict.
    __slots__ = (
        "_announced",
        "_audio_context",
        "_audio_seconds",
        "_awaiting_request",
        "_awaiting_since",
        "_baseline",
        "_clock",
        "_completed",
        "_completed_chars",
        "_completed_rate",
        "_context_audible",
        "_context_audio",
        "_deadlines",
        "_done_segments",
        "_early_words",
        "_first_timed",
        "_last_audio_at",
        "_last_timed",
        "_last_word",
        "_last_word_at",
        "_last_word_pts",
        "_loop",
        "_max_pts",
        "_on_failure",
        "_playing",
        "_requests",
        "_rest_of_segment",
        "_rest_said",
        "_said_after_last",
        "_segment",
        "_segment_context",
        "_segment_speakable",
        "_segment_text",
        "_silent_run",
        "_speech_owed",
        "_speech_rate",
        "_stolen",
        "_tail",
        "_timeline",
        "_timer",
        "_timer_at",
        "_unspoken_contexts",
        "_word_timestamps",
        "_words_in_segment",
        "audible",
        "current_word_id",
        "failed",
        "idle",
        "latencies",
        "requested",
    )

    def __init__(
        self,
        deadlines: Deadlines,
        on_failure: OnFailure,
        *,
        word_timestamps: bool,
        speech_rate: float | None = None,
        clock: Callable[[], int] | None = None,
        stolen: Callable[[float], float] | None = None,
    ):
        self._deadlines = deadlines
        self._stolen = stolen
        self._on_failure = on_failure
        self._word_timestamps = word_timestamps
        self._loop = asyncio.get_running_loop()
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = 0.0
        # Requests sent and not yet spoken in full, by audio context: whether
        # each has anything to say (pipecat's rule: letters or digits), in order.
        self._requests: dict[str | None, list[bool]] = {}
        # Whether nothing is owed (no request left): read on every chunk, kept as it changes.
        self.idle = True
        # How many of them have something to say: only those are owed audio.
        self._speech_owed = 0
        # Audio contexts that ended with nothing to say asked of them.
        self._unspoken_contexts: list[str] = []
        # Segments announced (their text, by the announcement's id) and done.
        self._announced: dict[int, str] = {}
        self._done_segments: set[int] = set()
        # The segment whose words are being spoken, and its audio context.
        self._segment: int | None = None
        self._segment_context: str | None = None
        self._segment_speakable = True
        # Its last word has started (the progress frame said nothing is left).
        self._last_word = False
        # A request finished on its last word: audio until that word's end is its tail.
        self._tail = False
        # When the request now due was sent (or became due), until audible audio came.
        self._awaiting_since: float | None = None
        self._awaiting_request = False
        self._last_audio_at: float | None = None
        self._silent_run = 0.0
        # Audio contexts that had audio, and audible audio.
        self._context_audio: set[str | None] = set()
        self._context_audible: set[str | None] = set()
        self._playing: str | None = None
        # Whether a request was sent, and audible audio came, since the last report.
        self.requested = False
        self.audible = False
        self.failed: FailureReason | None = None
        # First-audio latencies measured since the last report, in seconds.
        self.latencies: list[float] = []
        self._speech_rate = speech_rate
        self._timeline: WordTimeline | None = None
        self._words_in_segment = 0
        self._last_word_pts: int | None = None
        # The segment's text, and where its first and last timed word frames
        # end: (words of the segment up to the frame's last, the context's
        # audio received when the frame came). pipecat queues a word behind
        # its audio, so the audio received by then holds the word.
        self._segment_text = ""
        self._first_timed: tuple[int, float] | None = None
        self._last_timed: tuple[int, float] | None = None
        # Word frames that came before their context's first audio.
        self._early_words: list[TTSTextFrame] = []
        # Word frames each carrying a whole segment, none of it timed: what
        # pipecat completes at the end of a context for the segments the
        # provider never spoke (and for a one-word segment whose word it
        # timed with the pts of the word before, or never timed). Each with
        # whether the context's audio had reached it when it came (None:
        # nothing to tell by) and the audio received then.
        self._completed: list[tuple[TTSTextFrame, bool | None, float]] = []
        # Where the text before the next completed segment ends, in characters
        # after the last timed word, and the speech rate that places it.
        self._completed_chars = 0
        self._completed_rate = TYPICAL_SECONDS_PER_CHAR
        # The words after the last one timed, and those of them the audio
        # covered, when the first segment was completed.
        self._rest_of_segment: list[str] = []
        self._rest_said: list[str] = []
        # The words heard after the last word frame, once the end of a context decided them.
        self._said_after_last: list[str] | None = None
        # The frame of the word last started.
        self.current_word_id: int | None = None
        # The service's clock (ns), and where its word timestamps of the audio
        # context now playing start: pipecat stamps a word with the clock at the
        # context's first audio (or the last word's pts, if later) plus the
        # word's time in the audio, so a word's pts says where it starts in the
        # audio whenever its text arrives.
        self._clock = clock
        self._audio_context: object = _NO_CONTEXT
        self._audio_seconds = 0.0
        self._baseline = 0
        self._max_pts = 0
        self._last_word_at = -1.0

    def segment_done(self, segment_id: int) -> bool:
        """Whether the segment of this announcement was spoken to its last word."""
        return segment_id in self._done_segments

    @property
    def awaiting_audio(self) -> bool:
        """Whether a request is waiting for its first audible audio."""
        return self._awaiting_since is not None

    @property
    def owes_speech(self) -> bool:
        """Whether a request with something to say is still owed."""
        return self._speech_owed > 0

    def speaks_in(self, context_id: str | None) -> bool:
        """Whether a request with something to say is owed in this audio context."""
        return any(self._requests.get(context_id, ()))

    def ended_unspoken(self, error: str | None) -> bool:
        """Whether an error names an audio context that had nothing to say.

        pipecat reports a context that ended with no audio as an error naming
        it; for text with nothing to say that is no failure of the provider.
        """
        if not error:
            return False
        if any(c in error for c in self._unspoken_contexts):
            return True
        return any(c and c in error and not any(f) for c, f in self._requests.items())

    @property
    def speech_rate(self) -> float | None:
        """Seconds per character the provider spoke at, once measured."""
        return self._speech_rate

    def set_deadlines(self, deadlines: Deadlines):
        """Use other deadlines from now on (the last provider left gets longer)."""
        self._deadlines = deadlines
        if self._awaiting_since is not None:
            self._arm(self._awaiting_since + deadlines.first_audio)

    def limit_stall(self, seconds: float | None):
        """Keep the stall deadline below ``seconds`` (a service's own end-of-sentence timer)."""
        if seconds is not None and seconds < self._deadlines.stall:
            self._deadlines = dataclasses.replace(self._deadlines, stall=seconds)

    def request(self, context_id: str | None, *, speakable: bool = True):
        """The service sent a request to its provider, in this audio context.

        Args:
            context_id: The request's audio context.
            speakable: Whether its text has anything to say. Text that has
                not (punctuation, emoji) comes back as silence or nothing:
                no audio is owed for it, and its silence fails nothing.
        """
        if self.failed is not None:
            return
        self.requested = True
        flags = self._requests.get(context_id)
        if flags is None:
            self._requests[context_id] = [speakable]
            self.idle = False
        else:
            flags.append(speakable)
        if not speakable:
            return
        self._speech_owed += 1
        if self._segment is None and self._awaiting_since is None and not self._tail:
            # Nothing is being spoken: the audio is due from the request.
            self._await_audio(from_request=True)

    @property
    def last_audio_at(self) -> float | None:
        """Loop time of the last chunk of audio, if any came."""
        return self._last_audio_at

    def announced(self, frame: AggregatedTextFrame):
        """The service announced a segment it will speak."""
        self._announced[frame.id] = frame.text

    def started(self, frame: TTSStartedFrame):
        """The service opened an audio context."""
        self._playing = frame.context_id

    def audio(self, frame: TTSAudioRawFrame) -> bool:
        """Take a chunk of audio; return whether it is audible."""
        now = self._loop.time()
        self._last_audio_at = now
        context_id = frame.context_id or self._playing
        if context_id != self._audio_context:
            self._start_context_audio(context_id)
        if context_id not in self._context_audio:
            self._context_audio.add(context_id)
        if self._early_words:
            early, self._early_words = self._early_words, []
            for word in early:
                self._time_word(word)
        audio = frame.audio
        size = len(audio)
        seconds = size / (2 * frame.num_channels * frame.sample_rate)
        self._audio_seconds += seconds
        timeline = self._timeline
        if timeline is not None:
            timeline.received = self._audio_seconds
        tail = self._tail
        if tail and (timeline is None or timeline.past_current(_TAIL_MARGIN)):
            # Well past the finished request's last word: this is the next one's
            # audio (its first word frame usually says so first).
            self._tail = False
        level = pcm16_rms(audio) if size & 1 else pcm16_rms_even(audio, 2)
        if level > self._deadlines.silence_floor:
            self._silent_run = 0.0
            self.audible = True
            if context_id not in self._context_audible:
                self._context_audible.add(context_id)
            if self._awaiting_since is not None and not tail:
                if self._awaiting_request:
                    # A first-audio latency only where the request waited on nothing else.
                    self.latencies.append(now - self._awaiting_since)
                self._awaiting_since = None
            if self._last_word and timeline is not None and timeline.current_said:
                self._finish_segment()
            if self._speech_owed and self._awaiting_since is None:
                # Lazily: a timer due earlier re-arms itself when it fires.
                at = now + self._deadlines.stall
                if self._timer is None or self._timer_at > at:
                    self._arm(at)
            return True
        self._silent_run += seconds
        if self._speech_owed and self._silent_run > self._deadlines.stall:
            self._fail(FailureReason.SILENT_AUDIO)
        elif self._speech_owed and self._awaiting_since is None:
            at = now + self._deadlines.stall
            if self._timer is None or self._timer_at > at:
                self._arm(at)
        return False

    def _start_context_audio(self, context_id: str | None):
        """The first audio of an audio context: its word timestamps count from here."""
        self._audio_context = context_id
        self._audio_seconds = 0.0
        now = self._clock() if self._clock is not None else 0
        self._baseline = max(self._max_pts, now)
        self._last_word_at = -1.0
        # Audio of another context is no tail of the word before it.
        self._tail = False
        if self._segment is None:
            self._timeline = None

    def word(self, frame: TTSTextFrame) -> bool:
        """A word frame the service pushed; return whether the provider timed it.

        A timed word has a pts later than the word before it in its segment;
        pipecat pushes the words a provider never timed when their context
        ends (and when a socket drops), stamped with the last word's pts.
        """
        if not self._word_timestamps:
            # A service without word timestamps pushes a request's text after its audio.
            context_id = frame.context_id or self._playing
            if context_id in self._context_audible:
                if frame.segment_id is not None:
                    self._done_segments.add(frame.segment_id)
                self._done(context_id, speakable=has_alnum(frame.text))
            return True
        later = bool(frame.pts) and frame.pts > self._max_pts
        if later:
            self._max_pts = frame.pts
        if frame.segment_id is not None and frame.segment_id != self._segment:
            if frame.segment_id in self._done_segments:
                return False
            if not later and self._whole_segment(frame):
                # Untimed, or timed no later than the word before: the context's
                # end tells which (see _judge_completed).
                self._complete(frame)
                return False
            # Words of a later segment: the segments completed before it were spoken.
            self._enter_completed(self._completed)
            self._enter_segment(frame.segment_id, frame.context_id)
        if (
            not frame.pts
            or (self._last_word_pts is not None and frame.pts <= self._last_word_pts)
            or len(frame.text.split()) > 1
        ):
            # A provider times words one by one; text of several words is what
            # pipecat completes at a context's end, or when its socket drops.
            # The words after them are still placed in the segment's text.
            self._words_in_segment += len(frame.text.split())
            return False
        if (frame.context_id or self._playing) not in self._context_audio:
            # pipecat pushes the words it timed before a context's first audio
            # right ahead of it, and the words it never timed at the end of a
            # context that had none: which these are, the audio will tell.
            self._early_words.append(frame)
            return False
        self._time_word(frame)
        return True

    def _time_word(self, frame: TTSTextFrame):
        self._last_word_pts = frame.pts
        self.current_word_id = frame.id
        if self._timeline is not None:
            # Where the word starts in its context's audio, from its pts; where
            # the timestamps do not run on through the context (they start
            # again for each request), where its text arrived.
            at = max(0.0, (frame.pts - self._baseline) / 1e9)
            if self._clock is None or at < self._last_word_at:
                at = self._timeline.received
            self._last_word_at = at
            self._timeline.word_started(self._words_in_segment, frame.pts, at)
            self._words_in_segment += len(frame.text.split())
            self._last_timed = (self._words_in_segment, self._audio_seconds)
            if self._first_timed is None:
                self._first_timed = self._last_timed
            if self._timeline.measured_rate:
                self._speech_rate = self._timeline.measured_rate

    def _enter_segment(self, segment_id: int, context_id: str | None):
        """The words of another segment started: the one before it is done."""
        if self._segment is not None:
            self._finish_segment()
        self._tail = False
        self._segment = segment_id
        self._segment_context = context_id
        self._last_word = False
        text = self._announced.pop(segment_id, None)
        self._segment_speakable = text is None or has_alnum(text)
        self._segment_text = text or ""
        self._first_timed = self._last_timed = None
        self._timeline = WordTimeline(self._segment_text, self._speech_rate)
        if context_id == self._audio_context:
            self._timeline.received = self._audio_seconds
        self._words_in_segment = 0
        # Each segment's word times start from its own first audio.
        self._last_word_pts = None
        self._early_words.clear()

    def _whole_segment(self, frame: TTSTextFrame) -> bool:
        """Whether a word frame carries all of its segment's text, which has something to say."""
        text = self._announced.get(frame.segment_id)
        return bool(text) and has_alnum(text) and len(frame.text.split()) >= len(text.split())

    def _complete(self, frame: TTSTextFrame):
        """Set aside a whole segment that came untimed, noting whether the audio reached it.

        pipecat completes a context's segments at its end, after all its
        audio: the audio received by then is all there is. The segment's
        place in it follows the last timed word of the segment before it (in
        the same context), at the speech rate its timed words showed.
        """
        reached = None
        last = self._last_timed
        if (
            last is not None
            and self._segment_context == frame.context_id
            and self._audio_context == frame.context_id
        ):
            if not self._completed:
                tokens = self._segment_text.split()
                self._rest_of_segment = tokens[last[0] :]
                self._completed_rate = self._measured_rate(tokens)
                self._rest_said = self._reached_words(self._rest_of_segment, 0, HEARD_SHARE)
                self._completed_chars = sum(len(w) + 1 for w in self._rest_of_segment)
            words = frame.text.split()
            reached = bool(self._reached_words(words[:1], self._completed_chars, _REACHED_SHARE))
            self._completed_chars += len(" ".join(words)) + 1
        self._completed.append((frame, reached, self._audio_seconds))

    def _measured_rate(self, tokens: list[str]) -> float:
        """Seconds per character between the segment's first and last timed words."""
        first, last = self._first_timed, self._last_timed
        if first is not None and last is not None:
            chars = len(" ".join(tokens[first[0] : last[0]])) + 1
            if chars >= _RATE_SPAN and last[1] > first[1]:
                return (last[1] - first[1]) / chars
        return self._speech_rate or TYPICAL_SECONDS_PER_CHAR

    def _reached_words(self, words: list[str], chars: int, share: float) -> list[str]:
        """Of ``words``, ``chars`` characters after the last timed word, those the audio covers.

        A word is covered once the audio received runs ``share`` of its
        expected length into it.
        """
        assert self._last_timed is not None
        audio_after = self._audio_seconds - self._last_timed[1]
        rate = self._completed_rate
        reached = []
        for word in words:
            if audio_after < (chars + 1 + share * len(word)) * rate:
                break
            reached.append(word)
            chars += len(word) + 1
        return reached

    def _enter_completed(self, completed: list[tuple[TTSTextFrame, bool | None, float]]):
        """Completed segments that were spoken: each is entered and done."""
        if not completed:
            return
        spoken = {id(c) for c in completed}
        self._completed = [c for c in self._completed if id(c) not in spoken]
        for frame, _, _ in completed:
            if frame.segment_id is not None and frame.segment_id not in self._done_segments:
                self._enter_segment(frame.segment_id, frame.context_id)
                self._finish_segment()

    def _judge_completed(self, context_id: str | None) -> bool:
        """At the end of a context: whether the segments completed in it were spoken.

        A segment the context's audio never reached got no audio: the
        provider failed it (and every segment after it), as it fails a
        context with no audio. Returns False when it did.
        """
        mine = [c for c in self._completed if c[0].context_id in (context_id, None)]
        playing = self._audio_context == context_id
        spoken = 0
        for _, reached, audio_at in mine:
            if reached is False and not (playing and self._audio_seconds > audio_at):
                break
            spoken += 1
        # pipecat's ElevenLabs services time no context's last word (it never
        # ends with a space), so a one-word segment at the end comes completed
        # whether or not it was said: only a segment of several words that
        # the audio never reached tells the provider left it unsaid.
        if not any(len(frame.text.split()) > 1 for frame, _, _ in mine[spoken:]):
            spoken = len(mine)
        self._enter_completed(mine[:spoken])
        if spoken == len(mine):
            return True
        if spoken:
            words = [w for frame, _, _ in mine[:spoken] for w in frame.text.split()]
            self._said_after_last = self._rest_of_segment + words
        else:
            self._said_after_last = self._rest_said
        self._fail(FailureReason.NO_AUDIO)
        return False

    def progress(self, frame: AggregatedTextProgressFrame):
        """A progress frame: with no text left, the segment's last word has started."""
        if frame.remaining_text.strip() or frame.segment_id != self._segment:
            return
        self._last_word = True
        if self._timeline is not None and self._timeline.current_said:
            self._finish_segment()

    def plays_later(self, frame: TTSStoppedFrame) -> bool:
        """Whether this stop frame came before anything of its audio context did.

        pipecat's Cartesia service pushes a context's stop frame at once when
        the provider reports an error for it, while an earlier context may
        still be playing: the context has not played yet, and what the
        provider sent for it plays after. Its requests stay owed.
        """
        context_id = frame.context_id
        return (
            context_id in self._requests
            and context_id != self._playing
            and context_id not in self._context_audio
        )

    def ends_silent(self, frame: TTSStoppedFrame) -> bool:
        """Whether this end of an audio context fails the provider (it was owed audible audio)."""
        context_id = frame.context_id
        return any(self._requests.get(context_id, ())) and context_id not in self._context_audible

    def stopped(self, frame: TTSStoppedFrame):
        """The service ended an audio context: whatever it was asked in it is done."""
        context_id = frame.context_id
        if self.ends_silent(frame):
            audio = context_id in self._context_audio
            self._fail(FailureReason.SILENT_AUDIO if audio else FailureReason.NO_AUDIO)
            return
        if self._completed and not self._judge_completed(context_id):
            return
        self._context_audio.discard(context_id)
        self._context_audible.discard(context_id)
        if self._segment_context == context_id:
            self._segment = None
            self._tail = False
        self._done(context_id, everything=True)

    def last_word_cut(self) -> bool:
        """Whether the last word started was cut before most of it was heard."""
        timeline = self._timeline
        return (
            self._segment is not None
            and timeline is not None
            and timeline.current_index is not None
            and not timeline.current_said
        )

    def words_said_after_last(self) -> list[str]:
        """Words after the last word frame that the audio received covers."""
        if self._said_after_last is not None:
            return self._said_after_last
        if self._segment is None or self._timeline is None:
            return []
        return self._timeline.said_after_current()

    def fail(self, reason: FailureReason, error: str | None = None):
        """Fail the provider from outside (an error frame, an unusable service)."""
        self._fail(reason, error)

    def close(self):
        """Stop the timer; the watch takes nothing more."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def reported(self):
        """The span of speech so far was reported: count afresh."""
        self.requested = self.audible = False
        self.latencies = []

    def _await_audio(self, *, from_request: bool = False):
        self._awaiting_request = from_request
        # Silence before now (the end of the audio before) is not this request's.
        self._silent_run = 0.0
        self._awaiting_since = self._loop.time()
        self._arm(self._awaiting_since + self._deadlines.first_audio)

    def _finish_segment(self):
        """The segment being spoken was heard to its last word."""
        if self._segment is None or self.failed is not None:
            return
        self._done_segments.add(self._segment)
        self._segment = None
        self._last_word = False
        self._tail = True
        self._done(self._segment_context, speakable=self._segment_speakable)

    def _done(self, context_id: str | None, *, everything: bool = False, speakable: bool = True):
        """One request (or every one) of an audio context was spoken.

        A request with something to say that was spoken says the requests with
        nothing to say before it are done too.
        """
        if self.failed is not None:
            return
        flags = self._requests.get(context_id)
        if flags is None:
            if not self._requests or everything:
                return
            # Told of with another context id: the oldest request is the one done.
            context_id, flags = next(iter(self._requests.items()))
        if everything:
            self._speech_owed -= sum(flags)
            if not any(flags) and context_id is not None:
                self._unspoken_contexts = [*self._unspoken_contexts[-3:], context_id]
            flags.clear()
        elif speakable:
            while flags and not flags[0]:
                del flags[0]
            if flags:
                del flags[0]
                self._speech_owed -= 1
        elif False in flags:
            flags.remove(False)
        elif flags.pop(0):
            self._speech_owed -= 1
        if not flags:
            del self._requests[context_id]
            self.idle = not self._requests
        self._awaiting_since = None
        if self._speech_owed:
            # The next request's audio is due.
            self._await_audio()
        else:
            self.close()

    def _arm(self, at: float):
        if self._timer is not None:
            self._timer.cancel()
        self._timer_at = at
        self._timer = self._loop.call_at(at, self._on_timer)

    def _on_timer(self):
        self._timer = None
        if self.failed is not None or not self._speech_owed:
            return
        now = self._loop.time()
        if self._awaiting_since is not None:
            due = self._awaiting_since + self._deadlines.first_audio
            due += self._grace(self._awaiting_since, self._deadlines.first_audio)
            if now >= due:
                silent = self._silent_run > 0
                self._fail(FailureReason.SILENT_AUDIO if silent else FailureReason.NO_FIRST_AUDIO)
            else:
                self._arm(due)
            return
        if self._last_audio_at is None:
            return
        due = self._last_audio_at + self._deadlines.stall
        due += self._grace(self._last_audio_at, self._deadlines.stall)
        if now >= due:
            self._fail(FailureReason.STALLED)
        else:
            self._arm(due)

    def _grace(self, since: float, deadline: float) -> float:
        """The time this process's loop lost since ``since``: the provider gets it back.

        At most twice the deadline, so a provider that is really gone still
        fails on a loop that stays overloaded.
        """
        if self._stolen is None:
            return 0.0
        return min(self._stolen(since), 2 * deadline)

    def _fail(self, reason: FailureReason, error: str | None = None):
        if self.failed is not None:
            return
        self.failed = reason
        self.close()
        self._on_failure(reason, error)
