"""SpeechWatch: which segments a context's end leaves unsaid, and the stream bare vs wrapped around it.

pipecat completes the words it never got timed at the end of their audio
context: the last word of an ElevenLabs context (its partial word is never
flushed), and every segment the provider never spoke (a context closed under
them). The watch tells the two apart by the context's audio.
"""

import contextlib
from collections.abc import AsyncIterator

import aiohttp
import numpy as np
import pytest
from pipecat.frames.frames import (
    AggregatedTextFrame,
    LLMFullResponseEndFrame,
    LLMFullResponseStartFrame,
    LLMTextFrame,
    TTSAudioRawFrame,
    TTSStartedFrame,
    TTSStoppedFrame,
    TTSTextFrame,
)
from pipecat.utils.text.base_text_aggregator import TextType

from pipecat_tts_failover.detection import FailureReason
from pipecat_tts_failover.testing import CartesiaEmulator, ElevenLabsEmulator
from pipecat_tts_failover.watch import Deadlines, SpeechWatch
from tests.support.conformance import assert_same_frames, count, run, until, wrap
from tests.support.integration import Providers

SAMPLE_RATE = 16000
# Seconds of speech per character, as the emulators speak.
CHAR_SECONDS = 0.06
CONTEXT = "ctx"


class Speaker:
    """Drives a SpeechWatch as a pipecat ElevenLabs service would, one context, no pipeline."""

    def __init__(self, *sentences: str):
        self.failures: list[FailureReason] = []
        self.watch = SpeechWatch(
            Deadlines(first_audio=5.0, stall=5.0, silence_floor=100.0),
            lambda reason, error: self.failures.append(reason),
            word_timestamps=True,
        )
        self.segments = [AggregatedTextFrame(s, TextType.SENTENCE) for s in sentences]
        for segment in self.segments:
            self.watch.request(CONTEXT)
            self.watch.announced(segment)
        self.watch.started(TTSStartedFrame(context_id=CONTEXT))
        self._pts = 1_000_000

    def audio(self, chars: int):
        """Audible audio lasting ``chars`` characters."""
        samples = np.full(round(chars * CHAR_SECONDS * SAMPLE_RATE), 3000, dtype=np.int16)
        self.watch.audio(TTSAudioRawFrame(samples.tobytes(), SAMPLE_RATE, 1, context_id=CONTEXT))

    def word(self, segment: int, text: str, *, timed: bool = True) -> bool:
        """A word frame of a segment; an untimed one gets the pts of the word before."""
        if timed:
            self._pts += 1_000_000
        frame = TTSTextFrame(text, TextType.WORD)
        frame.pts = self._pts
        frame.segment_id = self.segments[segment].id
        frame.context_id = CONTEXT
        return self.watch.word(frame)

    def say(self, segment: int, *, but_last: bool = False):
        """Speak a segment word by word, each word's frame after its audio."""
        words = self.segments[segment].text.split()
        for word in words[:-1] if but_last else words:
            self.audio(len(word) + 1)
            self.word(segment, word)

    def stop(self):
        self.watch.stopped(TTSStoppedFrame(context_id=CONTEXT))


FIRST = "Thanks for calling Acme support today."
SECOND = "Your package shipped yesterday morning."
THIRD = "Delivery should happen within three days."


async def test_sentences_a_closed_context_never_spoke_fail_the_provider():
    s = Speaker(FIRST, SECOND, THIRD)
    s.say(0, but_last=True)
    s.audio(len(" today."))
    # The context closed under the rest: pipecat completes its words at its end.
    assert not s.word(0, "today.", timed=False)
    assert not s.word(1, SECOND, timed=False)
    assert not s.word(2, THIRD, timed=False)
    s.stop()
    assert s.failures == [FailureReason.NO_AUDIO]
    # The last word of the sentence spoken was heard (its audio came); the others were not.
    assert s.watch.words_said_after_last() == ["today."]
    assert not s.watch.segment_done(s.segments[1].id)


async def test_a_one_word_sentence_completed_at_the_end_of_its_audio_is_spoken():
    s = Speaker(FIRST, "Bye!")
    s.say(0, but_last=True)
    s.audio(len(" today. Bye!"))
    s.word(0, "today.", timed=False)
    s.word(1, "Bye!", timed=False)
    s.stop()
    assert s.failures == []
    assert s.watch.idle


async def test_a_one_word_sentence_the_audio_never_reached_is_left_to_pipecat():
    # pipecat's ElevenLabs service times no context's last word: a one-word
    # sentence at the end comes completed whether it was said or not.
    s = Speaker(FIRST, "Bye!")
    s.say(0, but_last=True)
    s.audio(len(" today."))
    s.word(0, "today.", timed=False)
    s.word(1, "Bye!", timed=False)
    s.stop()
    assert s.failures == []


async def test_a_sentence_spoken_without_word_timestamps_is_spoken():
    # The provider dropped the second sentence's timestamps, not its audio.
    s = Speaker(FIRST, SECOND)
    s.say(0)
    s.audio(len(" " + SECOND))
    assert not s.word(1, SECOND, timed=False)
    s.stop()
    assert s.failures == []
    assert s.watch.segment_done(s.segments[1].id)


async def test_an_unspoken_sentence_after_a_spoken_one_word_sentence_fails_from_itself():
    s = Speaker(FIRST, "Sure.", SECOND)
    s.say(0)
    s.audio(len(" Sure."))
    s.word(1, "Sure.", timed=False)
    s.word(2, SECOND, timed=False)
    s.stop()
    assert s.failures == [FailureReason.NO_AUDIO]
    assert s.watch.words_said_after_last() == ["Sure."]
    assert s.watch.segment_done(s.segments[1].id)
    assert not s.watch.segment_done(s.segments[2].id)


async def test_a_one_word_sentence_timed_with_the_pts_before_it_is_spoken_once_words_follow():
    s = Speaker(FIRST, "Sure.", SECOND)
    s.say(0)
    # Its word shares the pts of the word before (one token across two messages).
    assert not s.word(1, "Sure.", timed=False)
    s.audio(len(" Sure."))
    s.say(2)
    s.stop()
    assert s.failures == []
    assert all(s.watch.segment_done(seg.id) for seg in s.segments[:2])


#
# pipecat's ElevenLabs service, bare and wrapped
#


@contextlib.asynccontextmanager
async def emulators() -> AsyncIterator[Providers]:
    async with (
        CartesiaEmulator(speed=20.0) as cartesia,
        ElevenLabsEmulator(speed=20.0) as elevenlabs,
        aiohttp.ClientSession() as session,
    ):
        yield Providers(cartesia, elevenlabs, session)


@pytest.mark.parametrize(
    "texts",
    [
        ("Thanks for calling Acme support today. ", "Bye!"),
        ("Thanks for calling. ", "Sure. ", "Your order shipped today."),
    ],
    ids=["last", "middle"],
)
async def test_a_reply_with_a_one_word_sentence_on_elevenlabs_is_the_bare_services(texts):
    def steps():
        return [
            LLMFullResponseStartFrame(),
            *(LLMTextFrame(t) for t in texts),
            LLMFullResponseEndFrame(),
            until(count(LLMFullResponseEndFrame)),
        ]

    async with emulators() as p:
        bare = await run(p.service("elevenlabs_ws"), steps())
        wrapped = await run(wrap(p.service("elevenlabs_ws"), p.service("cartesia_ws")), steps())
        # ElevenLabs spoke it alone, in one context each time.
        assert len(p.elevenlabs.requests) == 2
        assert p.cartesia.requests == []
    assert " ".join(bare.words).split() == " ".join(texts).split()
    assert_same_frames(bare, wrapped)
