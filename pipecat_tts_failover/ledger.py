"""What the speaking provider was handed and the caller has not heard yet: the replay on a failover."""

import re
from dataclasses import dataclass

from pipecat.frames.frames import (
    AggregatedTextFrame,
    EagerTranscriptionFrame,
    Frame,
    InterimTranscriptionFrame,
    LLMTextFrame,
    TextFrame,
    TranscriptionFrame,
    TTSSpeakFrame,
    TTSTextFrame,
)

# Text frames a TTS service does not speak (it passes them on as they are).
_NOT_SPOKEN = (TranscriptionFrame, InterimTranscriptionFrame, EagerTranscriptionFrame, TTSTextFrame)
# How far ahead of the next unheard word a heard word is looked for, in words:
# a service that rewrote or skipped a few words is followed, one that says
# something else entirely is not.
_LOOKAHEAD_WORDS = 8
_WORD = re.compile(r"\S+")
_NOT_WORD = re.compile(r"[^\w']+", re.UNICODE)


def word_key(word: str) -> str:
    """A word as compared with the words a provider reports: no punctuation, no case."""
    return _NOT_WORD.sub("", word).casefold()


def speaks_text(frame: Frame) -> bool:
    """Whether a TTS service would speak this frame's text."""
    if isinstance(frame, TTSSpeakFrame):
        return True
    return (
        isinstance(frame, TextFrame)
        and not isinstance(frame, _NOT_SPOKEN)
        and not getattr(frame, "skip_tts", False)
    )


@dataclass
class _Entry:
    """One frame handed to the speaking provider.

    A text entry owns ``text[start:end]`` of the ledger's text; any other frame
    is expected to come out of the service again, and sits at ``start`` in the text.
    """

    frame: Frame
    start: int
    end: int
    # Which TTSSpeakFrame of the ledger this is (0, 1, ...), if it is one.
    utterance: int | None = None

    @property
    def is_text(self) -> bool:
        return self.end > self.start or speaks_text(self.frame)


class Ledger:
    """Frames handed to the speaking provider's service that the caller has not had yet.

    Text the service will speak is kept as one running text, as the service
    aggregates it; a cursor moves over its words as the caller hears them
    (the service's word frames). Any other frame the service queues behind its
    audio (the end of an LLM reply, an application's own frames) is kept until
    it comes out of the service. When the provider fails, :meth:`replay` gives
    what the next provider's service must be handed to carry on: the frames
    still owed, with the text cut to the first word not heard.
    """

    def __init__(self):
        self._text = ""
        self._entries: list[_Entry] = []
        self._cursor = 0
        # Where the words heard last start, to go back to a word cut mid-way.
        self._last_word_start: int | None = None
        # TTSSpeakFrames handed over, and those whose stop frame came out.
        self._utterances = 0
        self._utterances_done = 0

    @property
    def empty(self) -> bool:
        """Whether nothing is owed."""
        return not self._entries

    def add(self, frame: Frame):
        """Note a frame handed to the speaking provider's service."""
        if isinstance(frame, TTSSpeakFrame) and not frame.text.strip():
            # pipecat says nothing for it and pushes nothing: no stop frame to settle it.
            return
        start = len(self._text)
        if speaks_text(frame):
            text = frame.text
            # Text of separate utterances must not run into one word.
            separate = isinstance(frame, (AggregatedTextFrame, TTSSpeakFrame))
            if (
                self._text
                and (separate or self._after_utterance())
                and not self._text[-1].isspace()
            ):
                self._text += " "
                start += 1
            self._text += text
        utterance = None
        if isinstance(frame, TTSSpeakFrame):
            utterance, self._utterances = self._utterances, self._utterances + 1
        self._entries.append(_Entry(frame, start, len(self._text), utterance))

    def _after_utterance(self) -> bool:
        last = self._entries[-1].frame if self._entries else None
        return isinstance(last, (AggregatedTextFrame, TTSSpeakFrame))

    def came_out(self, frame: Frame) -> bool:
        """Note that a frame handed over came out of the service; False if it was not one."""
        for i, entry in enumerate(self._entries):
            if entry.frame is frame:
                del self._entries[i]
                self._compact()
                return True
        return False

    def heard(self, text: str):
        """Move past the words the caller heard (a word frame's text, or skipped text)."""
        for match in _WORD.finditer(text):
            key = word_key(match.group())
            if key:
                self._hear(key)
        self._compact()

    def _hear(self, key: str):
        for i, match in enumerate(_WORD.finditer(self._text, self._cursor)):
            if i >= _LOOKAHEAD_WORDS:
                return
            token = word_key(match.group())
            if token == key:
                self._last_word_start = match.start()
                self._cursor = match.end()
                return
            if token and key.startswith(token):
                # A provider reporting "abcdef" for text sent as "abc" and "def".
                key = key[len(token) :]
                self._cursor = match.end()

    def unhear_last_word(self):
        """The last word heard was cut short: it is owed again."""
        if self._last_word_start is not None:
            self._cursor = min(self._cursor, self._last_word_start)
            self._last_word_start = None

    def settle_text(self):
        """The service is done with the text handed to it so far (its reply ended)."""
        self._cursor = len(self._text)
        self._compact()

    def settle_utterance(self, *, heard: bool = True):
        """The service is done with the next ``TTSSpeakFrame`` (its stop frame came out).

        What the provider did not report of its words (text it rewrote, say)
        was spoken all the same.

        Args:
            heard: False for a stop frame pushed ahead of its audio (see
                ``SpeechWatch.plays_later``): the utterance's words stay owed
                until they are heard.
        """
        ordinal = self._utterances_done
        self._utterances_done += 1
        if not heard:
            return
        for entry in self._entries:
            if entry.utterance == ordinal:
                self._cursor = max(self._cursor, entry.end)
                self._compact()
                return

    def clear(self):
        """Forget everything (an interruption)."""
        self._text = ""
        self._entries.clear()
        self._cursor = 0
        self._last_word_start = None
        self._utterances = self._utterances_done = 0

    def unheard_text(self) -> str:
        """The text owed, from the first word not heard."""
        return self._text[self._cursor :].strip()

    def replay(self) -> list[Frame]:
        """The frames to hand the next provider: what is owed, text from the first unheard word."""
        frames: list[Frame] = []
        for entry in self._entries:
            if not entry.is_text:
                frames.append(entry.frame)
                continue
            text = self._text[max(entry.start, self._cursor) : entry.end]
            if entry.start < self._cursor:
                text = text.lstrip()
            if text.strip():
                frames.append(_with_text(entry.frame, text))
        return frames

    def owed_frames(self) -> list[Frame]:
        """The frames owed that are not text (they are to come out of the service)."""
        return [entry.frame for entry in self._entries if not entry.is_text]

    def _compact(self):
        """Drop text entries the caller has heard in full, and the text before the cursor."""
        while self._entries and self._entries[0].is_text and self._entries[0].end <= self._cursor:
            self._entries.pop(0)
        if not self._entries:
            self._text = self._text[self._cursor :] if self._cursor < len(self._text) else ""
            self._cursor = 0
            self._last_word_start = None


def _with_text(frame: Frame, text: str) -> Frame:
    """A fresh frame like ``frame``, carrying ``text``."""
    if isinstance(frame, TTSSpeakFrame):
        new = TTSSpeakFrame(text, append_to_context=frame.append_to_context)
        new.text_type = frame.text_type
        new.interruptible = frame.interruptible
        return new
    if text == frame.text:
        return frame
    if isinstance(frame, AggregatedTextFrame):
        new = AggregatedTextFrame(text, frame.text_type)
    elif isinstance(frame, LLMTextFrame):
        new = LLMTextFrame(text)
    else:
        new = TextFrame(text)
        new.includes_inter_frame_spaces = frame.includes_inter_frame_spaces
    new.append_to_context = frame.append_to_context
    return new
