"""Where the words of a sentence fall in a provider's audio, and when each was said in full."""

# Speech rate assumed for the first word of an attempt, before the attempt's own
# words tell the provider's (TTS speaks some 14 to 17 characters a second).
TYPICAL_SECONDS_PER_CHAR = 0.06
# Share of a word's expected length that must have been heard for it to count as said.
HEARD_SHARE = 0.75


class WordTimeline:
    """Lines the words of one sentence up with the audio a provider sends for it.

    A pipecat service pushes a word's text stamped with the word's timestamp,
    as the word's audio starts or (when the provider's alignment splits a word
    across messages) later. The watch reads where the first timed word starts
    in the audio from its pts; each later word's start follows from its
    timestamp. How long a word lasts is not sent, so it is estimated from its
    length at the speech rate of the words before it (for the first, the rate
    the provider was last measured at, or a typical one): a word has been said
    once the audio received covers :data:`HEARD_SHARE` of that. A word cut
    before then is not said, and is spoken again by the next provider.

    Args:
        text: The sentence, as the provider was asked to speak it.
        seconds_per_char: The provider's speech rate, if it is known.
    """

    def __init__(self, text: str, seconds_per_char: float | None = None):
        self._tokens = text.split()
        self.received = 0.0
        self._origin: tuple[int, int, float] | None = None
        self._rate = seconds_per_char or TYPICAL_SECONDS_PER_CHAR
        # The rate the words of this sentence showed, once two of them started.
        self.measured_rate: float | None = None
        # The word last started: its index, where it starts and when it counts as said.
        self._current: tuple[int, float, float] | None = None

    def add_audio(self, seconds: float):
        """Count audio received."""
        self.received += seconds

    def word_started(self, index: int, pts: int, arrived_at: float):
        """Note that word ``index`` (of the sentence's words) started.

        Args:
            index: The word's position among the sentence's words.
            pts: Its presentation timestamp, in nanoseconds.
            arrived_at: Where it starts in the audio received, in seconds
                (the audio received when its text arrived, if nothing better is known).
        """
        if self._origin is None:
            self._origin = (index, pts, arrived_at)
        origin, origin_pts, origin_at = self._origin
        start = origin_at + (pts - origin_pts) / 1e9
        if index > origin and start > origin_at:
            chars_before = len(" ".join(self._tokens[origin:index])) + 1
            self._rate = self.measured_rate = (start - origin_at) / chars_before
        self._current = (index, start, start + HEARD_SHARE * self._length(index) * self._rate)

    @property
    def current_index(self) -> int | None:
        """Index of the word last started, if any did."""
        return None if self._current is None else self._current[0]

    def past_current(self, margin: float) -> bool:
        """Whether the audio received runs ``margin`` seconds past the expected end of the word last started."""
        if self._current is None:
            return False
        index, start, _ = self._current
        return self.received >= start + self._length(index) * self._rate + margin

    @property
    def current_said(self) -> bool:
        """Whether the word last started has been heard for most of its expected length."""
        return self._current is not None and self.received >= self._current[2]

    def said_after_current(self) -> list[str]:
        """Words after the one last started that the audio received covers.

        A service may hold a word's text back until the end of the sentence
        (pipecat's ElevenLabs services do with the last word): when the end
        never comes, the audio still tells the word was said.
        """
        if self._current is None:
            return []
        index, start, _ = self._current
        start += (self._length(index) + 1) * self._rate
        said = []
        for word in self._tokens[index + 1 :]:
            if self.received < start + HEARD_SHARE * len(word) * self._rate:
                break
            said.append(word)
            start += (len(word) + 1) * self._rate
        return said

    def _length(self, index: int) -> int:
        return len(self._tokens[index]) if index < len(self._tokens) else 0
