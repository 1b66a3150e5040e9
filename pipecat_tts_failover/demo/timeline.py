"""What the caller heard: the bot's audio played out as it arrived, sentence by sentence, and the dead air.

Audio reaches the end of the pipeline in bursts; a caller's phone plays it in
real time. A frame starts playing when it arrives or when the audio before it
has finished, whichever is later, so a provider that streams ahead builds a
buffer and one that goes quiet empties it. Dead air is the caller waiting for
the bot: from the moment a sentence is due (its turn was sent, and the
sentence before it has been heard) until its first audible audio plays. A
sentence that never comes leaves dead air until the call gives up on its turn.

Times are seconds of the call from :meth:`CallTimeline.begin`; with a ``speed``
above 1 the measured times are multiplied by it, so a call run faster looks
the same.
"""

import time
import wave
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

import numpy as np

from pipecat_tts_failover.config import DEFAULT_SILENCE_FLOOR
from pipecat_tts_failover.demo.script import PRIMARY, Timing, Turn

# A sentence counts as heard when this much of its expected audio played.
_HEARD_FRACTION = 0.85
# Frames of one provider closer than this are drawn as one bar.
_SEGMENT_JOIN = 0.25


class Status(StrEnum):
    """How much of a sentence the caller heard."""

    WAITING = "waiting"  # not spoken yet
    SPEAKING = "speaking"  # its audio is arriving
    HEARD = "heard"  # all of it
    CUT = "cut"  # the start of it only
    SILENT = "silent"  # only digital silence
    LOST = "lost"  # nothing


@dataclass(frozen=True, slots=True)
class Segment:
    """A stretch of one sentence's audio from one provider, as played."""

    provider: str
    start: float
    end: float


@dataclass(slots=True)
class SentenceView:
    """One bot sentence as the caller heard it.

    Parameters:
        index: 0-based position in the script.
        turn: The turn it belongs to.
        text: The sentence.
        status: How much of it the caller heard.
        sent: When its turn was sent to TTS.
        due: When the caller was ready for it.
        start: When its first audible audio started playing.
        end: When its last audio finished playing.
        dead_air: Seconds the caller waited for it (a lost sentence at the end
            of a turn carries the wait until the call gave up).
        seconds: Seconds of its audio.
        segments: Its audio by provider, in play-out order.
    """

    index: int
    turn: int
    text: str
    status: Status = Status.WAITING
    sent: float | None = None
    due: float | None = None
    start: float | None = None
    end: float | None = None
    dead_air: float | None = None
    seconds: float = 0.0
    segments: list[Segment] = field(default_factory=list)

    @property
    def providers(self) -> list[str]:
        """The providers heard in this sentence, in order, without repeats."""
        seen: list[str] = []
        for segment in self.segments:
            if segment.provider not in seen:
                seen.append(segment.provider)
        return seen


@dataclass(frozen=True, slots=True)
class CallerLine:
    """A caller's line: the bot is quiet, nothing is owed."""

    text: str
    start: float
    end: float


@dataclass(frozen=True, slots=True)
class Event:
    """Something that happened during the call: ``break``, ``fix``, ``failover``,
    ``down``, ``probe``, ``up``, ``back``, ``switch``, ``start``."""

    at: float
    kind: str
    text: str


@dataclass(slots=True)
class CallView:
    """A call's timeline, ready to draw or to send to another process as JSON.

    Parameters:
        label: What ran the call (``FailoverTTSService``, ``ServiceSwitcher``, ``worker 2``).
        started: Wall-clock time (``time.time()``) the call began.
        first_provider: The provider the call started on.
        sentences: Every bot sentence of the script.
        callers: The caller's lines so far.
        events: What happened, in order.
        length: Seconds from the call's start to the end of its last audio.
        sample_rate: The audio's sample rate.
        finished: Whether the call is over.
    """

    label: str
    started: float
    first_provider: str | None
    sentences: list[SentenceView]
    callers: list[CallerLine]
    events: list[Event]
    length: float
    sample_rate: int
    finished: bool = False

    @property
    def heard(self) -> int:
        """Sentences heard in full."""
        return sum(s.status == Status.HEARD for s in self.sentences)

    @property
    def longest_dead_air(self) -> SentenceView | None:
        """The sentence the caller waited longest for."""
        waited = [s for s in self.sentences if s.dead_air is not None]
        return max(waited, key=lambda s: s.dead_air or 0.0, default=None)

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "CallView":
        """Rebuild a view from :meth:`to_json`'s dict."""
        sentences = []
        for s in data["sentences"]:
            segments = [Segment(**seg) for seg in s["segments"]]
            sentences.append(
                SentenceView(**{**s, "status": Status(s["status"]), "segments": segments})
            )
        return cls(
            **{
                **data,
                "sentences": sentences,
                "callers": [CallerLine(**c) for c in data["callers"]],
                "events": [Event(**e) for e in data["events"]],
            }
        )


# Calls that start closer together than this (seconds of the call) are drawn
# each from its own start: one clock would only shift them by a blur.
_SAME_START = 0.5


@dataclass(frozen=True, slots=True)
class TimeOrigin:
    """The one clock the tables and the picture show several calls on.

    Calls that started together (one process, ``--compare``) are each shown
    from their own start. Calls that started apart (``--workers``) are shown
    on the first one's clock, so what one worker did lines up with what
    another saw; ``offsets`` say where each call starts on it.

    Parameters:
        offsets: For each call, seconds of the call from the origin to its start.
        first: The label of the call the clock starts with.
        shared: Whether the calls share the first one's clock.
    """

    offsets: tuple[float, ...]
    first: str = ""
    shared: bool = False

    @classmethod
    def of(cls, views: Sequence[CallView], speed: float) -> "TimeOrigin":
        """The origin of some calls that ran ``speed`` times faster than real time."""
        started = [v for v in views if v.started]
        if not started:
            return cls(tuple(0.0 for _ in views))
        first = min(started, key=lambda v: v.started)
        offsets = [
            max(0.0, (v.started - first.started) * speed) if v.started else 0.0 for v in views
        ]
        if max(offsets) < _SAME_START:
            return cls(tuple(0.0 for _ in views), first.label)
        return cls(tuple(offsets), first.label, shared=True)

    def axis_label(self) -> str:
        """What the time axis measures."""
        if self.shared:
            return f"seconds since {self.first}'s call started (as the callers hear it)"
        if len(self.offsets) > 1:
            return "seconds into each call (as the caller hears it)"
        return "seconds into the call (as the caller hears it)"

    def start_note(self, index: int) -> str:
        """Where call ``index`` starts on the clock, for its title; empty on its own clock."""
        if not self.shared:
            return ""
        if not self.offsets[index]:
            return "at 0.0 s (the clock starts with this call)"
        return f"at {self.offsets[index]:.1f} s on {self.first}'s clock"


@dataclass(slots=True)
class _Played:
    """One audio frame, placed where it plays."""

    sentence: int
    provider: str
    start: int  # sample offset from the call's start
    samples: np.ndarray  # int16
    audible: bool

    @property
    def end(self) -> int:
        return self.start + len(self.samples)


@dataclass(slots=True)
class _Sentence:
    index: int
    turn: int
    text: str
    stopped: bool = False
    frames: list[_Played] = field(default_factory=list)


class CallTimeline:
    """Builds one call's timeline as its frames arrive: play-out, statuses, dead air.

    Args:
        label: What runs the call.
        script: The call's turns.
        timing: The call's timings (``speed`` and the emulators' speaking rate).
        sample_rate: The pipeline's output sample rate; the WAV's rate.
        preferred: The primary provider: coming back to it is an event.
        clock: Monotonic seconds, injectable for tests.
    """

    def __init__(
        self,
        label: str,
        script: Sequence[Turn],
        timing: Timing,
        sample_rate: int,
        *,
        preferred: str = PRIMARY,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.label = label
        self.sample_rate = sample_rate
        self._timing = timing
        self._preferred = preferred
        self._clock = clock
        self._sentences: list[_Sentence] = []
        for t, turn in enumerate(script):
            for text in turn.bot:
                self._sentences.append(_Sentence(len(self._sentences), t, text))
        self._turn_sent: dict[int, float] = {}
        self._turn_over: dict[int, float] = {}
        self._callers: list[CallerLine] = []
        self._events: list[Event] = []
        self._cursor = 0  # samples: where the audio played so far ends
        self._t0: float | None = None
        self._started_wall = 0.0
        self._first_provider: str | None = None
        self._last_provider: str | None = None
        self._finished = False

    # -- the call's clock -------------------------------------------------

    def begin(self, first_provider: str | None):
        """Start the call's clock."""
        self._t0 = self._clock()
        self._started_wall = time.time()
        self._first_provider = first_provider

    def now(self) -> float:
        """Seconds of the call so far."""
        if self._t0 is None:
            return 0.0
        return (self._clock() - self._t0) * self._timing.speed

    def wall_until(self, at: float) -> float:
        """Wall-clock seconds from now until ``at`` seconds of the call."""
        return max(0.0, self._timing.wall(at - self.now()))

    @property
    def playout_end(self) -> float:
        """Seconds of the call at which the audio received so far has finished playing."""
        return self._cursor / self.sample_rate

    # -- what happens -----------------------------------------------------

    def turn_sent(self, turn: int):
        """The turn's sentences were sent to TTS."""
        self._turn_sent[turn] = self.now()

    def turn_over(self, turn: int):
        """The call has stopped waiting for the turn (spoken, or given up)."""
        self._turn_over[turn] = self.now()

    def stopped(self, sentence: int):
        """TTS said the sentence is finished."""
        self._sentences[sentence].stopped = True

    def caller(self, text: str, start: float, end: float):
        """The caller spoke from ``start`` to ``end``."""
        self._callers.append(CallerLine(text, start, end))

    def event(self, kind: str, text: str, at: float | None = None):
        """Something happened (now, unless ``at`` says when)."""
        self._events.append(Event(self.now() if at is None else at, kind, text))

    def finish(self):
        """The call is over."""
        self._finished = True

    def audio(self, sentence: int, provider: str, audio: bytes, sample_rate: int):
        """A frame of the sentence's audio reached the caller's end of the pipeline."""
        samples = np.frombuffer(audio, dtype="<i2")
        if sample_rate != self.sample_rate and len(samples):
            samples = _resample(samples, sample_rate, self.sample_rate)
        if not len(samples):
            return
        arrival = round(self.now() * self.sample_rate)
        start = max(arrival, self._cursor)
        rms = float(np.sqrt(np.mean(samples.astype(np.float64) ** 2)))
        played = _Played(sentence, provider, start, samples, rms > DEFAULT_SILENCE_FLOOR)
        self._cursor = played.end
        target = self._sentences[sentence]
        first_audible = played.audible and not any(f.audible for f in target.frames)
        target.frames.append(played)
        if not played.audible:
            return
        if (
            first_audible
            and provider == self._preferred
            and self._last_provider not in (None, self._preferred)
        ):
            self.event("back", f"call back on {provider}", at=start / self.sample_rate)
        self._last_provider = provider

    # -- results ----------------------------------------------------------

    def view(self) -> CallView:
        """The timeline so far."""
        rate = self.sample_rate
        views = [self._sentence_view(s) for s in self._sentences]
        for turn, sent in self._turn_sent.items():
            self._dead_air([v for v in views if v.turn == turn], sent, self._turn_over.get(turn))
        return CallView(
            label=self.label,
            started=self._started_wall,
            first_provider=self._first_provider,
            sentences=views,
            callers=list(self._callers),
            events=sorted(self._events, key=lambda e: e.at),
            length=self._cursor / rate,
            sample_rate=rate,
            finished=self._finished,
        )

    def _sentence_view(self, sentence: _Sentence) -> SentenceView:
        rate = self.sample_rate
        frames = sentence.frames
        view = SentenceView(sentence.index, sentence.turn, sentence.text)
        view.sent = self._turn_sent.get(sentence.turn)
        view.seconds = sum(len(f.samples) for f in frames) / rate
        audible = [f for f in frames if f.audible]
        if frames:
            view.end = frames[-1].end / rate
        if audible:
            view.start = audible[0].start / rate
        for frame in frames:
            start, end = frame.start / rate, frame.end / rate
            last = view.segments[-1] if view.segments else None
            if last and last.provider == frame.provider and start <= last.end + _SEGMENT_JOIN:
                view.segments[-1] = Segment(last.provider, last.start, end)
            else:
                view.segments.append(Segment(frame.provider, start, end))
        over = sentence.stopped or sentence.turn in self._turn_over
        if not frames:
            view.status = Status.LOST if sentence.turn in self._turn_over else Status.WAITING
        elif not over:
            view.status = Status.SPEAKING
        elif not audible:
            view.status = Status.SILENT
        elif view.seconds >= _HEARD_FRACTION * self._timing.expected(sentence.text):
            view.status = Status.HEARD
        else:
            view.status = Status.CUT
        return view

    @staticmethod
    def _dead_air(views: list[SentenceView], sent: float, over: float | None):
        """Fill in when each sentence of one turn was due and how long the caller waited."""
        ready = sent
        missing: list[SentenceView] = []
        for view in views:
            if view.start is not None:
                view.due = ready
                view.dead_air = max(0.0, view.start - ready)
                ready = max(ready, view.end or view.start)
                missing = []
            elif view.status in (Status.LOST, Status.SILENT):
                missing.append(view)
        if missing and over is not None:
            # Nothing audible came after these: the caller waited until the call gave up.
            until = max([over] + [v.end for v in missing if v.end is not None])
            missing[0].due = ready
            missing[0].dead_air = max(0.0, until - ready)

    def pcm(self) -> np.ndarray:
        """The caller's audio from the call's start: 16-bit mono, silence where nothing played."""
        out = np.zeros(self._cursor, dtype=np.int16)
        for sentence in self._sentences:
            for frame in sentence.frames:
                out[frame.start : frame.end] = frame.samples
        return out

    def write_wav(self, path: Path) -> Path:
        """Write :meth:`pcm` as a 16-bit mono WAV at the pipeline's sample rate."""
        with wave.open(str(path), "wb") as wav:
            wav.setnchannels(1)
            wav.setsampwidth(2)
            wav.setframerate(self.sample_rate)
            wav.writeframes(self.pcm().tobytes())
        return path


def _resample(samples: np.ndarray, rate_in: int, rate_out: int) -> np.ndarray:
    count = max(1, round(len(samples) * rate_out / rate_in))
    positions = np.linspace(0, len(samples) - 1, count)
    return np.interp(positions, np.arange(len(samples)), samples).astype(np.int16)
