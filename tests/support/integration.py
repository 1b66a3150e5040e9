"""FailoverTTSService with pipecat's real Cartesia and ElevenLabs services, against the emulators.

The emulators' audio is a pure function of the text: every word is one run of
voiced samples whose shape depends only on the word, between silent gaps
(whitespace and punctuation). :func:`hear` uses that to read back, from the
audio that reached the end of the pipeline, which words the caller heard
whole and in order, and what else was heard between them (a word cut short
by a failing provider, a word heard twice, audio of an abandoned attempt).
"""

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from functools import cache
from typing import Literal

import aiohttp
import numpy as np
from pipecat.frames.frames import EndFrame, ErrorFrame, TTSSpeakFrame, TTSStoppedFrame
from pipecat.processors.frame_processor import FrameProcessor
from pipecat.services.cartesia.tts import CartesiaHttpTTSService, CartesiaTTSService
from pipecat.services.elevenlabs.tts import ElevenLabsHttpTTSService, ElevenLabsTTSService
from pipecat.services.tts_service import TTSService

from pipecat_tts_failover import FailoverTTSService, FailureReason, InMemoryHealthStore
from pipecat_tts_failover.testing import CartesiaEmulator, ElevenLabsEmulator
from pipecat_tts_failover.testing._speech import encode, synthesize
from tests.support.emulators import API_KEY, SAMPLE_RATE, STOP_FRAME_TIMEOUT_S
from tests.support.pipeline import PipelineHarness

Kind = Literal["cartesia_ws", "cartesia_http", "elevenlabs_ws", "elevenlabs_http"]
KINDS: tuple[Kind, ...] = ("cartesia_ws", "cartesia_http", "elevenlabs_ws", "elevenlabs_http")

# Each sentence opens with a word longer than the 120 ms of audio a cut fault
# sends before it strikes (60 ms a character), so the cut always falls inside
# that word; no word repeats, so each is found in the audio once.
SENTENCES = (
    "Thanks for calling Acme support today.",
    "Your package shipped yesterday morning.",
    "Delivery should happen within three days.",
    "Anything else worth checking tonight?",
)
MS_PER_CHAR = 60.0
VOICE = "emulated-voice"
# Emulator pace: many times faster than real time, as providers stream.
SPEED = 20.0
# Zero samples in a row that split unmatched audio into separate fragments.
_FRAGMENT_GAP = 64


def provider_of(kind: Kind) -> str:
    """The provider id a kind of service speaks for."""
    return kind.split("_")[0]


@cache
def reference(word: str) -> bytes:
    """The s16le samples of ``word``'s voiced run, as the emulators send them inside a sentence.

    A word's samples depend only on the token (punctuation included, for its
    pitch) and its length; the silent punctuation around it is left out, as
    are the zero samples at the run's ends.
    """
    samples = np.frombuffer(encode(synthesize(word, SAMPLE_RATE, MS_PER_CHAR).samples), "<i2")
    voiced = np.flatnonzero(samples)
    assert len(voiced), f"{word!r} has no voiced audio"
    return samples[voiced[0] : voiced[-1] + 1].tobytes()


@dataclass(frozen=True)
class Fragment:
    """Audible audio between the words found that is not an expected whole word.

    Attributes:
        before: Index of the next word found after it (or the word count).
        seconds: Its length.
        begins: The expected words it is the beginning of (empty: none).
    """

    before: int
    seconds: float
    begins: frozenset[str]


@dataclass
class Heard:
    """What the caller heard, read back from the audio.

    Attributes:
        missing: Expected words whose whole audio was not found in order.
        fragments: Audible audio that is no whole expected word.
        seconds: Length of the audio.
    """

    missing: list[str]
    fragments: list[Fragment] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def whole(self) -> bool:
        """Every word heard whole, in order, and nothing else."""
        return not self.missing and not self.fragments


def hear(audio: bytes, sentences: Sequence[str]) -> Heard:
    """Read the words of ``sentences`` back from the audio the caller heard.

    Each word's voiced run is searched for, in order, after the previous word
    found. What lies between the words found and is audible is a fragment:
    a word cut short when a provider failed mid-word is the beginning of that
    word; anything else (a word heard twice, audio of an abandoned attempt)
    begins no word.

    Args:
        audio: s16le mono audio at ``SAMPLE_RATE``.
        sentences: What should have been heard, in order.

    Returns:
        What was heard.
    """
    words = [w for s in sentences for w in s.split()]
    pos = 0
    missing: list[str] = []
    gaps: list[tuple[int, bytes]] = []
    for i, word in enumerate(words):
        ref = reference(word)
        at = _find_aligned(audio, ref, pos)
        if at < 0:
            missing.append(word)
            continue
        gaps.append((i, audio[pos:at]))
        pos = at + len(ref)
    gaps.append((len(words), audio[pos:]))
    fragments = []
    for before, gap in gaps:
        for piece in _audible_pieces(gap):
            begins = frozenset(
                w
                for w in words
                if len(piece) < len(reference(w)) and reference(w).startswith(piece)
            )
            fragments.append(Fragment(before, len(piece) / 2 / SAMPLE_RATE, begins))
    return Heard(missing, fragments, len(audio) / 2 / SAMPLE_RATE)


def sentences_heard(audio: bytes, sentences: Sequence[str]) -> int:
    """How many of ``sentences`` the caller heard in full (every word whole, in order)."""
    missing = set(hear(audio, sentences).missing)
    return sum(1 for s in sentences if not missing & set(s.split()))


def _find_aligned(audio: bytes, ref: bytes, start: int) -> int:
    at = audio.find(ref, start)
    while at >= 0 and at % 2:
        at = audio.find(ref, at + 1)
    return at


def _audible_pieces(gap: bytes) -> list[bytes]:
    """Runs of nonzero samples in ``gap``, split at silences."""
    samples = np.frombuffer(gap[: len(gap) & ~1], "<i2")
    nonzero = np.flatnonzero(samples)
    if not len(nonzero):
        return []
    splits = np.flatnonzero(np.diff(nonzero) > _FRAGMENT_GAP)
    starts = [nonzero[0], *nonzero[splits + 1]]
    ends = [*nonzero[splits], nonzero[-1]]
    return [samples[a : b + 1].tobytes() for a, b in zip(starts, ends)]


#
# Providers and calls
#


@dataclass
class Providers:
    """Both emulators and an HTTP session, for services to be pointed at."""

    cartesia: CartesiaEmulator
    elevenlabs: ElevenLabsEmulator
    session: aiohttp.ClientSession

    def emulator(self, kind: Kind) -> CartesiaEmulator | ElevenLabsEmulator:
        return self.cartesia if provider_of(kind) == "cartesia" else self.elevenlabs

    def service(
        self,
        kind: Kind,
        *,
        stop_frame_timeout_s: float | None = STOP_FRAME_TIMEOUT_S,
        voice: str = VOICE,
        **kwargs,
    ) -> TTSService:
        """A pipecat service of ``kind`` pointed at its emulator.

        Args:
            kind: Which service.
            stop_frame_timeout_s: pipecat's wait for more audio before it ends a
                sentence by itself; short by default so broken sentences end
                quickly, None for pipecat's default.
            voice: The voice asked for (the emulators accept any unless told otherwise).
            **kwargs: More arguments for the service (``sample_rate``, say).
        """
        if stop_frame_timeout_s is not None:
            kwargs["stop_frame_timeout_s"] = stop_frame_timeout_s
        if kind == "cartesia_ws":
            return CartesiaTTSService(
                api_key=API_KEY,
                url=self.cartesia.websocket_url,
                settings=CartesiaTTSService.Settings(voice=voice),
                **kwargs,
            )
        if kind == "cartesia_http":
            return CartesiaHttpTTSService(
                api_key=API_KEY,
                base_url=self.cartesia.http_url,
                settings=CartesiaHttpTTSService.Settings(voice=voice),
                **kwargs,
            )
        if kind == "elevenlabs_ws":
            return ElevenLabsTTSService(
                api_key=API_KEY,
                url=self.elevenlabs.ws_url,
                settings=ElevenLabsTTSService.Settings(voice=voice),
                **kwargs,
            )
        return ElevenLabsHttpTTSService(
            api_key=API_KEY,
            base_url=self.elevenlabs.http_url,
            aiohttp_session=self.session,
            settings=ElevenLabsHttpTTSService.Settings(voice=voice),
            **kwargs,
        )

    def requests(self, kind: Kind) -> list[str]:
        """The texts the emulator behind ``kind`` was asked to speak, whitespace tidied."""
        return [" ".join(r.text.split()) for r in self.emulator(kind).requests]


@contextlib.asynccontextmanager
async def providers(speed: float = SPEED) -> AsyncIterator[Providers]:
    """Start both emulators on free 127.0.0.1 ports, and an HTTP session; stop them on exit."""
    async with (
        CartesiaEmulator(speed=speed, ms_per_char=MS_PER_CHAR) as cartesia,
        ElevenLabsEmulator(speed=speed, ms_per_char=MS_PER_CHAR) as elevenlabs,
        aiohttp.ClientSession() as session,
    ):
        yield Providers(cartesia, elevenlabs, session)


@dataclass
class Call:
    """What came out of one call, and what the failover reported."""

    sentences: Sequence[str]
    harness: PipelineHarness | None = None
    ended_gracefully: bool | None = None
    failures: list[tuple[str, FailureReason]] = field(default_factory=list)
    failovers: list[tuple[str, str, FailureReason]] = field(default_factory=list)
    all_failed: list[str] = field(default_factory=list)

    @property
    def audio(self) -> bytes:
        assert self.harness is not None
        return b"".join(f.audio for f in self.harness.audio)

    @property
    def heard(self) -> Heard:
        return hear(self.audio, self.sentences)

    @property
    def words(self) -> list[str]:
        """Words of the TTSTextFrames that reached downstream (what the context records)."""
        assert self.harness is not None
        return self.harness.words

    @property
    def expected_words(self) -> list[str]:
        return [w for s in self.sentences for w in s.split()]

    @property
    def errors(self) -> list[ErrorFrame]:
        assert self.harness is not None
        return [f for f in self.harness.up if isinstance(f, ErrorFrame)]

    def watch(self, tts: FailoverTTSService):
        """Record the failover's events."""

        @tts.event_handler("on_sentence_failed")
        async def on_failed(processor, provider_id, reason):
            self.failures.append((provider_id, reason))

        @tts.event_handler("on_failover")
        async def on_failover(processor, from_id, to_id, reason):
            self.failovers.append((from_id, to_id, reason))

        @tts.event_handler("on_all_providers_failed")
        async def on_all_failed(processor, text):
            self.all_failed.append(text)


async def speak_call(
    processor: FrameProcessor,
    sentences: Sequence[str] = SENTENCES,
    *,
    before: dict[int, Callable[[], None]] | None = None,
    sentence_timeout: float = 5.0,
    quiet: float | None = None,
    end_timeout: float = 5.0,
    on_stuck: Callable[[], Awaitable[None]] | None = None,
    call: Call | None = None,
) -> Call:
    """Speak ``sentences`` one after the other through ``processor`` in a real pipeline.

    Each sentence is a ``TTSSpeakFrame`` sent once the previous one has ended
    (its ``TTSStoppedFrame`` came out), as a conversation goes, so a fault
    switched on between two sentences strikes the next one. The call then
    ends with an ``EndFrame``. A pipeline still busy after ``end_timeout`` (a
    service stuck on a request that never ends) gets ``on_stuck`` called, then
    is cancelled if that did not free it.

    Args:
        processor: The TTS processor under test.
        sentences: What to say.
        before: Called just before the sentence at that index is sent.
        sentence_timeout: Seconds to wait at most for a sentence to end.
        quiet: Also stop waiting once nothing has come downstream for this
            long (for a service alone, which may never end a broken sentence).
        end_timeout: Seconds the EndFrame may take before the call counts as stuck.
        on_stuck: Awaited when the call is stuck (stopping the emulators, say,
            which ends the requests pipecat's HTTP services wait on for 5 minutes).
        call: Where to record (one made for ``processor`` with :meth:`Call.watch`,
            say); a new one by default.

    Returns:
        The call.
    """
    before = before or {}
    call = call or Call(sentences)
    h = _CallHarness(processor, audio_out_sample_rate=SAMPLE_RATE)
    call.harness = h
    async with h:
        for i, sentence in enumerate(sentences):
            if i in before:
                before[i]()
            await h.send(TTSSpeakFrame(sentence))
            with contextlib.suppress(TimeoutError):
                await _wait_for_end(h, i + 1, sentence_timeout, quiet)
        call.ended_gracefully = await h.finish(end_timeout, on_stuck)
    return call


class _CallHarness(PipelineHarness):
    """A harness whose call can be cancelled when it will not end."""

    async def finish(
        self, timeout: float, on_stuck: Callable[[], Awaitable[None]] | None = None
    ) -> bool:
        """Send an EndFrame; if the pipeline has not ended within ``timeout``, free or cancel it.

        Returns:
            Whether the pipeline ended on the EndFrame in time.
        """
        self._ended = True
        await self._worker.queue_frame(EndFrame())
        assert self._run is not None
        graceful = await self._ended_within(timeout)
        if not graceful:
            if on_stuck is not None:
                await on_stuck()
            if not await self._ended_within(timeout):
                await self._worker.cancel(reason="the call did not end")
                async with asyncio.timeout(timeout):
                    await self._run
        self.down[:] = [f for f in self.down if not isinstance(f, EndFrame)]
        return graceful

    async def _ended_within(self, timeout: float) -> bool:
        assert self._run is not None
        try:
            async with asyncio.timeout(timeout):
                await asyncio.shield(self._run)
        except TimeoutError:
            return False
        return True


async def _wait_for_end(h: PipelineHarness, stops: int, timeout: float, quiet: float | None):
    """Wait for the ``stops``-th TTSStoppedFrame; TimeoutError after ``timeout`` or a ``quiet`` spell."""
    async with asyncio.timeout(timeout):
        while len(h.of(TTSStoppedFrame)) < stops:
            count = len(h.down)
            await h.wait_for(lambda count=count: len(h.down) != count, timeout=quiet or timeout)


def failover(services: dict[str, TTSService], **kwargs) -> FailoverTTSService:
    """A FailoverTTSService with small deadlines and, unless given, a store of its own."""
    kwargs.setdefault("first_audio_timeout", 0.8)
    kwargs.setdefault("stall_timeout", 0.5)
    kwargs.setdefault("store", InMemoryHealthStore())
    return FailoverTTSService(services=services, **kwargs)
