"""What a caller hears when a TTS provider fails: pipecat's service alone, and inside FailoverTTSService.

Run from the repo root::

    .venv/bin/python benchmarks/fault_matrix.py [--out docs/fault-matrix.md]

For every fault the emulators inject, and every pipecat service as the primary
(CartesiaTTSService, CartesiaHttpTTSService, ElevenLabsTTSService,
ElevenLabsHttpTTSService), a short call of four sentences runs twice through a
real pipeline, the fault switched on at the primary's emulator from the second
sentence on:

- pipecat's service alone: the sentences the caller heard in full, and the
  ErrorFrames pipecat pushed (what the application is told);
- FailoverTTSService with the primary and the other provider's WebSocket
  service as the backup: the sentences heard in full, the reason the failover
  detected, and any other audio heard (the part of a word a provider was
  cutting short when it failed, a word heard twice).

Then the real triggers: no fault injected, the emulators' own limits and
validation fail the call as the real services do (rapid barge-ins past
ElevenLabs' 5-context cap, a fleet over its concurrency plan, a settings change
mid-reply, a call idle past the inactivity timeout, a bad key, an account out of
credits). Each has a driver of its own below, run with pipecat's service alone
and inside FailoverTTSService; the table adds the ErrorFrames pipecat pushed
(text and category) and whether a sentence was heard twice.

What the caller heard is read back from the audio that reached the end of the
pipeline: the emulators' audio for a word is a pure function of the word, so
each word is looked for, whole, in order. Writes the tables to
``docs/fault-matrix.md`` and prints them.
"""

import argparse
import asyncio
import contextlib
import datetime
import inspect
import logging
import os
import platform
import re
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from importlib.metadata import version

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import aiohttp
from loguru import logger
from pipecat.frames.frames import (
    InterruptionFrame,
    LLMFullResponseEndFrame,
    LLMFullResponseStartFrame,
    LLMTextFrame,
    TTSAudioRawFrame,
    TTSSpeakFrame,
    TTSStoppedFrame,
    TTSUpdateSettingsFrame,
)
from pipecat.processors.frame_processor import FrameProcessor
from pipecat.services.elevenlabs.tts import ElevenLabsTTSService
from pipecat.services.tts_service import TTSService

from pipecat_tts_failover import FailoverTTSService, InMemoryHealthStore
from pipecat_tts_failover.testing import CartesiaEmulator, ElevenLabsEmulator, FaultKind
from tests.support.emulators import SAMPLE_RATE
from tests.support.integration import (
    KINDS,
    MS_PER_CHAR,
    Call,
    Kind,
    Providers,
    _CallHarness,
    provider_of,
    providers,
    reference,
    sentences_heard,
    speak_call,
)

SENTENCES = (
    "Thanks for calling Acme.",
    "Your package shipped.",
    "Delivery takes three days.",
    "Anything else tonight?",
)
FAULTS = tuple(kind.value for kind in FaultKind)
# The fault strikes from this sentence on (0-based).
FROM_SENTENCE = 1
FIRST_AUDIO_TIMEOUT = 1.0
STALL_TIMEOUT = 0.5
SPEED = 10.0
# A sentence of pipecat's service alone is over when its TTSStoppedFrame comes,
# or nothing has come downstream for this long (a broken sentence may never end).
QUIET_S = 1.5
# How long the call's EndFrame may take before the service counts as stuck.
END_TIMEOUT_S = 10.0
SENTENCE_TIMEOUT_S = 15.0
CONCURRENCY = 4
# The real triggers run one at a time: their timing (barge-ins, idle sockets, a
# fleet's overlap) is what they test.
TRIGGER_CONCURRENCY = 1
NAMES: dict[str, str] = {
    "cartesia_ws": "CartesiaTTSService",
    "cartesia_http": "CartesiaHttpTTSService",
    "elevenlabs_ws": "ElevenLabsTTSService",
    "elevenlabs_http": "ElevenLabsHttpTTSService",
}


def backup_for(primary: Kind) -> Kind:
    return "elevenlabs_ws" if provider_of(primary) == "cartesia" else "cartesia_ws"


@dataclass
class Row:
    fault: str
    primary: Kind
    alone_heard: int
    alone_errors: int
    alone_ended: bool
    failover_heard: int
    reasons: list[str]
    passed_over: bool
    extra_seconds: float
    failover_ended: bool
    seconds: float


async def run_alone(primary: Kind, fault: str) -> tuple[int, int, bool]:
    """pipecat's service alone: sentences heard in full, ErrorFrames pushed, whether it ended."""
    async with providers(speed=SPEED) as p:
        emulator = p.emulator(primary)
        call = await speak_call(
            p.service(primary, stop_frame_timeout_s=None),
            SENTENCES,
            before={FROM_SENTENCE: lambda: emulator.set_fault(fault)},
            sentence_timeout=SENTENCE_TIMEOUT_S,
            quiet=QUIET_S,
            end_timeout=END_TIMEOUT_S,
            on_stuck=emulator.stop,
        )
        return sentences_heard(call.audio, SENTENCES), len(call.errors), bool(call.ended_gracefully)


async def run_failover(primary: Kind, fault: str) -> tuple[int, list[str], bool, float, bool]:
    """The same call through FailoverTTSService: heard, reasons, passed over, other audio, ended."""
    backup = backup_for(primary)
    async with providers(speed=SPEED) as p:
        emulator = p.emulator(primary)
        tts = FailoverTTSService(
            services={
                provider_of(primary): p.service(primary, stop_frame_timeout_s=None),
                provider_of(backup): p.service(backup, stop_frame_timeout_s=None),
            },
            store=InMemoryHealthStore(),
            first_audio_timeout=FIRST_AUDIO_TIMEOUT,
            stall_timeout=STALL_TIMEOUT,
        )
        call = Call(SENTENCES)
        call.watch(tts)
        await speak_call(
            tts,
            SENTENCES,
            before={FROM_SENTENCE: lambda: emulator.set_fault(fault)},
            sentence_timeout=SENTENCE_TIMEOUT_S,
            end_timeout=END_TIMEOUT_S,
            on_stuck=emulator.stop,
            call=call,
        )
        reasons = list(dict.fromkeys(str(reason) for _, reason in call.failures))
        spoke_backup = len(p.requests(backup)) > 0
        extra = sum(f.seconds for f in call.heard.fragments)
        return (
            sentences_heard(call.audio, SENTENCES),
            reasons,
            spoke_backup and not reasons,
            extra,
            bool(call.ended_gracefully),
        )


async def run_case(primary: Kind, fault: str, limit: asyncio.Semaphore) -> Row:
    async with limit:
        began = time.monotonic()
        alone_heard, alone_errors, alone_ended = await run_alone(primary, fault)
        heard, reasons, passed_over, extra, ended = await run_failover(primary, fault)
        return Row(
            fault,
            primary,
            alone_heard,
            alone_errors,
            alone_ended,
            heard,
            reasons,
            passed_over,
            extra,
            ended,
            time.monotonic() - began,
        )


#
# Real triggers: no fault injected; the emulators' own limits and validation fail the call.
#

# Replies the caller barges in on, one after the other, before the reply that counts.
# None of their words is a word of SENTENCES, so what is heard of them is told apart.
BARGED_REPLIES = tuple(
    f"Reply {n} opens with a rather long clause about shipping and handling charges."
    for n in ("one", "two", "three", "four", "five")
)
# The ElevenLabs emulator's pace for the barge-ins: slow enough that a context the
# caller barged in on is still streaming (still open, as ElevenLabs counts) when the
# next reply opens one, as with a real provider and barge-ins a second apart.
BARGE_IN_SPEED = 1.0
# Calls at once on one emulator whose plan allows FLEET_LIMIT generations at once.
FLEET_CALLS = 6
FLEET_LIMIT = 2
FLEET_SPEED = 4.0
# The idle-timeout rows shorten the providers' timeouts to this (ElevenLabs: 20 s
# by default, Cartesia: 5 min) and leave the call quiet a little longer.
IDLE_TIMEOUT_S = 2.0
IDLE_S = IDLE_TIMEOUT_S + 1.0
# A settings change in the middle of an LLM reply (voice character: stability).
SETTINGS_CHANGE = ElevenLabsTTSService.Settings(stability=0.3)
# How long a reply streamed as an LLM turn may stay quiet before it counts as over.
TURN_QUIET_S = 2.5
_ID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
_PROCESSOR = re.compile(r"#\d+")
# Errors that differ only in numbers (a port, credits, a processor's #) are listed once.
_DIGITS = re.compile(r"\d+")


@dataclass
class Outcome:
    """One run of a real trigger: what the caller heard, and what the application was told.

    Attributes:
        heard: Sentences heard in full, over every call of the run.
        total: Sentences that should have been heard.
        twice: Sentences heard (in full) more than once.
        error_frames: ErrorFrames that reached the start of the pipeline.
        errors: (text, pipecat ErrorCategory) of each distinct ErrorFrame that
            reached the start of the pipeline, context ids masked.
        reasons: The FailureReasons FailoverTTSService recorded (failover only).
        ended: Every call ended on its EndFrame.
        refusals: What the primary's emulator refused on its own, by code, and how often.
        sockets: WebSocket connections the primary's service opened.
    """

    heard: int = 0
    total: int = 0
    twice: int = 0
    error_frames: int = 0
    errors: list[tuple[str, str]] = field(default_factory=list)
    reasons: list[str] = field(default_factory=list)
    ended: bool = True
    refusals: dict[str, int] = field(default_factory=dict)
    sockets: int = 0

    def saw(self, emulator: CartesiaEmulator | ElevenLabsEmulator):
        """Note what the primary's emulator refused and how many sockets it was opened."""
        for request in emulator.requests:
            if request.refusal:
                self.refusals[request.refusal] = self.refusals.get(request.refusal, 0) + 1
        self.sockets = emulator.connections

    def add(self, call: Call, sentences: Sequence[str]):
        """Count one call's audio, errors and failover reasons in."""
        audio = call.audio
        self.heard += sentences_heard(audio, sentences)
        self.total += len(sentences)
        self.twice += sum(1 for s in sentences if _times_heard(audio, s) > 1)
        self.error_frames += len(call.errors)
        seen = {_DIGITS.sub("N", text) for text, _ in self.errors}
        for frame in call.errors:
            category = getattr(frame, "category", None)
            text = _PROCESSOR.sub("#<n>", _ID.sub("<id>", frame.error))
            if _DIGITS.sub("N", text) not in seen:
                seen.add(_DIGITS.sub("N", text))
                self.errors.append((text, category.value if category else "—"))
        for _, reason in call.failures:
            if str(reason) not in self.reasons:
                self.reasons.append(str(reason))
        self.ended = self.ended and bool(call.ended_gracefully)


@dataclass
class TriggerRow:
    trigger: str
    primary: Kind
    alone: Outcome
    failover: Outcome
    seconds: float


def _times_heard(audio: bytes, sentence: str) -> int:
    """How many times every word of ``sentence`` is in the audio, whole (the least of them)."""

    def count(word: str) -> int:
        ref, found, at = reference(word), 0, audio.find(reference(word))
        while at >= 0:
            found += at % 2 == 0
            at = audio.find(ref, at + 1)
        return found

    return min(count(w) for w in sentence.split())


@contextlib.asynccontextmanager
async def _emulators(
    *, speed: float = SPEED, cartesia: dict | None = None, elevenlabs: dict | None = None
) -> AsyncIterator[Providers]:
    """Both emulators, with the plan's numbers (or a pace) a trigger needs, and an HTTP session."""
    common = {"speed": speed, "ms_per_char": MS_PER_CHAR}
    async with (
        CartesiaEmulator(**common | (cartesia or {})) as c,
        ElevenLabsEmulator(**common | (elevenlabs or {})) as e,
        aiohttp.ClientSession() as session,
    ):
        yield Providers(c, e, session)


def _tts(
    p: Providers, primary: Kind, failover: bool, store: InMemoryHealthStore | None = None
) -> tuple[FrameProcessor, Call]:
    """pipecat's service of ``primary`` alone, or inside FailoverTTSService; and its Call."""
    service = p.service(primary, stop_frame_timeout_s=None)
    if not failover:
        return service, Call(SENTENCES)
    backup = backup_for(primary)
    tts = FailoverTTSService(
        services={
            provider_of(primary): service,
            provider_of(backup): p.service(backup, stop_frame_timeout_s=None),
        },
        store=store or InMemoryHealthStore(),
        first_audio_timeout=FIRST_AUDIO_TIMEOUT,
        stall_timeout=STALL_TIMEOUT,
    )
    call = Call(SENTENCES)
    call.watch(tts)
    return tts, call


async def _speak(h: _CallHarness, sentences: Sequence[str], quiet: float | None):
    """Speak each sentence once the one before has ended (or went quiet), as a conversation goes."""
    for sentence in sentences:
        stops = len(h.of(TTSStoppedFrame))
        await h.send(TTSSpeakFrame(sentence))
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(SENTENCE_TIMEOUT_S):
                while len(h.of(TTSStoppedFrame)) <= stops:
                    count = len(h.down)
                    await h.wait_for(
                        lambda count=count: len(h.down) != count,
                        timeout=quiet or SENTENCE_TIMEOUT_S,
                    )


async def _speak_sentences(h: _CallHarness):
    await _speak(h, SENTENCES, QUIET_S)


async def _until_quiet(h: _CallHarness, quiet: float):
    """Wait until nothing has come downstream for ``quiet`` seconds (at most a sentence's timeout)."""
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(SENTENCE_TIMEOUT_S):
            while True:
                count = len(h.down)
                try:
                    await h.wait_for(lambda count=count: len(h.down) != count, timeout=quiet)
                except TimeoutError:
                    return


async def _one_call(
    tts: FrameProcessor,
    call: Call,
    drive: Callable[[_CallHarness], Awaitable[None]],
    on_stuck: Callable[[], Awaitable[None]],
) -> Call:
    """Run ``drive`` on a real pipeline around ``tts``, then end the call."""
    h = _CallHarness(tts, audio_out_sample_rate=SAMPLE_RATE)
    call.harness = h
    async with h:
        await drive(h)
        call.ended_gracefully = await h.finish(END_TIMEOUT_S, on_stuck)
    return call


async def barge_ins(primary: Kind, failover: bool) -> Outcome:
    """Rapid barge-ins on ElevenLabs' WebSocket: five replies cut short, then the reply that counts.

    The caller barges in on each reply as soon as its first audio plays
    (pipecat closes its context); the contexts cut short are still streaming
    when the next opens, so the reply that counts opens the 6th context on the
    socket: ``max_active_conversations`` and a 1008 close.
    """
    async with _emulators(elevenlabs={"speed": BARGE_IN_SPEED}) as p:
        tts, call = _tts(p, primary, failover)

        async def drive(h: _CallHarness):
            for reply in BARGED_REPLIES:
                played = len(h.of(TTSAudioRawFrame))
                await h.send(TTSSpeakFrame(reply))
                with contextlib.suppress(TimeoutError):
                    await h.wait_for(
                        lambda played=played: len(h.of(TTSAudioRawFrame)) > played,
                        timeout=SENTENCE_TIMEOUT_S,
                    )
                await h.send(InterruptionFrame())
            await _speak(h, SENTENCES, QUIET_S)

        outcome = Outcome()
        outcome.add(await _one_call(tts, call, drive, p.emulator(primary).stop), SENTENCES)
        outcome.saw(p.emulator(primary))
        return outcome


async def fleet_over_plan(primary: Kind, failover: bool) -> Outcome:
    """A fleet over its concurrency plan: FLEET_CALLS calls at once on a plan of FLEET_LIMIT.

    Cartesia counts contexts and refuses one over the limit in-band (429
    ``concurrency_limited``; HTTP: 429); ElevenLabs' HTTP API answers 429
    ``too_many_concurrent_requests`` (its WebSocket is not counted). With
    failover the calls share one health store, as a fleet's workers share Redis.
    """
    options = {"concurrency_limit": FLEET_LIMIT}
    elevenlabs = provider_of(primary) == "elevenlabs"
    async with _emulators(
        speed=FLEET_SPEED,
        cartesia=None if elevenlabs else options,
        elevenlabs=options if elevenlabs else None,
    ) as p:
        store = InMemoryHealthStore()

        async def one() -> Call:
            tts, call = _tts(p, primary, failover, store)
            return await _one_call(tts, call, _speak_sentences, p.emulator(primary).stop)

        outcome = Outcome()
        for call in await asyncio.gather(*(one() for _ in range(FLEET_CALLS))):
            outcome.add(call, SENTENCES)
        outcome.saw(p.emulator(primary))
        return outcome


async def settings_change(primary: Kind, failover: bool) -> Outcome:
    """A voice-settings change in the middle of an LLM reply on ElevenLabs' WebSocket.

    The reply streams as one LLM turn (one context). Once its first sentence
    plays, the app sends ``TTSUpdateSettingsFrame`` (stability): pipecat closes
    the turn's context to apply it, as its Settings document, and the reply's
    next sentences go on to that context.
    """
    async with _emulators() as p:
        tts, call = _tts(p, primary, failover)

        async def drive(h: _CallHarness):
            await h.send(LLMFullResponseStartFrame())
            await h.send(LLMTextFrame(SENTENCES[0]), LLMTextFrame(" " + SENTENCES[1]))
            with contextlib.suppress(TimeoutError):
                await h.wait_for(lambda: bool(h.of(TTSAudioRawFrame)), timeout=SENTENCE_TIMEOUT_S)
            await h.send(TTSUpdateSettingsFrame(delta=SETTINGS_CHANGE))
            await h.send(*(LLMTextFrame(" " + s) for s in SENTENCES[2:]), LLMFullResponseEndFrame())
            await _until_quiet(h, TURN_QUIET_S)

        outcome = Outcome()
        outcome.add(await _one_call(tts, call, drive, p.emulator(primary).stop), SENTENCES)
        outcome.saw(p.emulator(primary))
        return outcome


async def idle_past_timeout(primary: Kind, failover: bool) -> Outcome:
    """A call quiet past the provider's idle timeout after its first sentence, then speaking on.

    ElevenLabs closes a socket that got no text for ``inactivity_timeout``
    (``input_timeout_exceeded``, 1008); Cartesia one idle for its idle-close
    time (1000 "connection idle timeout"). Both are shortened to
    IDLE_TIMEOUT_S; pipecat's 10 s ElevenLabs keepalive is slower than that, as
    a keepalive that does not get through would be.
    """
    async with _emulators(
        cartesia={"idle_timeout": IDLE_TIMEOUT_S} if primary == "cartesia_ws" else None,
        elevenlabs={"inactivity_timeout": IDLE_TIMEOUT_S} if primary == "elevenlabs_ws" else None,
    ) as p:
        tts, call = _tts(p, primary, failover)

        async def drive(h: _CallHarness):
            await _speak(h, SENTENCES[:1], QUIET_S)
            await asyncio.sleep(IDLE_S)  # the trigger: the caller says nothing for a while
            await _speak(h, SENTENCES[1:], QUIET_S)

        outcome = Outcome()
        outcome.add(await _one_call(tts, call, drive, p.emulator(primary).stop), SENTENCES)
        outcome.saw(p.emulator(primary))
        return outcome


async def bad_key(primary: Kind, failover: bool) -> Outcome:
    """A wrong key on ElevenLabs' WebSocket: the socket opens, then the error and a 1008 close."""
    async with _emulators(elevenlabs={"api_key": "the-rotated-key"}) as p:
        tts, call = _tts(p, primary, failover)
        outcome = Outcome()
        stuck = p.emulator(primary).stop
        outcome.add(await _one_call(tts, call, _speak_sentences, stuck), SENTENCES)
        outcome.saw(p.emulator(primary))
        return outcome


async def quota_exhausted(primary: Kind, failover: bool) -> Outcome:
    """An ElevenLabs account whose credits cover the first sentence and no more.

    ElevenLabs answers ``quota_exceeded``: HTTP 401, on a WebSocket the error
    message and a 1008 close.
    """
    credits = len(SENTENCES[0]) + 2
    async with _emulators(elevenlabs={"character_quota": credits}) as p:
        tts, call = _tts(p, primary, failover)
        outcome = Outcome()
        stuck = p.emulator(primary).stop
        outcome.add(await _one_call(tts, call, _speak_sentences, stuck), SENTENCES)
        outcome.saw(p.emulator(primary))
        return outcome


# (trigger, driver, primaries, whose doing it is: the note on health decisions)
TRIGGERS: tuple[
    tuple[str, Callable[[Kind, bool], Awaitable[Outcome]], tuple[Kind, ...], str], ...
] = (
    (
        "rapid barge-ins past the 5-context cap",
        barge_ins,
        ("elevenlabs_ws",),
        "the client's: our own barge-ins opened the contexts; not an outage",
    ),
    (
        f"fleet over its concurrency plan ({FLEET_CALLS} calls, plan of {FLEET_LIMIT})",
        fleet_over_plan,
        ("cartesia_ws", "cartesia_http", "elevenlabs_http"),
        "the fleet's own sizing; the provider is up for calls within the plan",
    ),
    (
        "voice settings changed mid-reply",
        settings_change,
        ("elevenlabs_ws",),
        "the app's: its settings change broke the reply's context",
    ),
    (
        f"idle past the timeout ({IDLE_TIMEOUT_S:g} s)",
        idle_past_timeout,
        ("elevenlabs_ws", "cartesia_ws"),
        "the client's: an idle socket closed by design, pipecat reconnects",
    ),
    (
        "bad key, socket closed after accept",
        bad_key,
        ("elevenlabs_ws",),
        "the deployment's; the provider is up (permanent for this key only)",
    ),
    (
        "quota exhausted (account credits)",
        quota_exhausted,
        ("elevenlabs_ws", "elevenlabs_http"),
        "the account's; the provider is up (permanent until credits are added)",
    ),
)


async def run_trigger(
    trigger: str,
    driver: Callable[[Kind, bool], Awaitable[Outcome]],
    primary: Kind,
    limit: asyncio.Semaphore,
) -> TriggerRow:
    async with limit:
        began = time.monotonic()
        alone = await driver(primary, False)
        with_failover = await driver(primary, True)
        return TriggerRow(trigger, primary, alone, with_failover, time.monotonic() - began)


_HEADER = """\
# Fault matrix

<!-- Generated by benchmarks/fault_matrix.py; do not edit by hand. -->

Generated on {today} with `python benchmarks/fault_matrix.py`, against pipecat-ai
{pipecat} (Python {python}), in {took:.0f} s.

Each row is a call of four sentences spoken with `TTSSpeakFrame`s, one after the other,
through a real pipecat pipeline. The primary's emulator (see
[Testing with the emulators](testing.md)) injects the fault from the {start} sentence
on. The call runs twice:

- **pipecat alone**: the primary service by itself. *Heard* counts the sentences the
  caller heard in full; *errors* the `ErrorFrame`s pipecat pushed, which is what the
  application learns of the fault. *Stuck*: the service was still waiting on a request
  {end_timeout:g} s after the call's `EndFrame` (pipecat's HTTP services wait up to
  aiohttp's 5-minute default), so the call could not end; the emulator was stopped to
  free it.
- **with failover**: `FailoverTTSService(first_audio_timeout={first_audio:g},
  stall_timeout={stall:g})` holding the primary, and the other provider's WebSocket
  service as the backup. *Detected as* is the `FailureReason` of the failed sentence
  (*passed over*: pipecat had already marked the service unusable, so it was given no
  sentence); *other audio* is audio heard that is no whole word of the call: the
  beginning of a word the provider was cutting short when it failed (the backup then
  says that word again, whole, and goes on from there), or a word heard twice.

A sentence is heard in full when the audio of each of its words reached the end of the
pipeline whole and in order (the emulators' audio for a word is a pure function of the
word). The emulators stream {speed:g}x faster than real time; pipecat's services run
with their defaults (`stop_frame_timeout_s={stop_timeout:g}`).

| fault | primary | pipecat alone: heard | errors | with failover: heard | detected as | other audio |
| --- | --- | --- | --- | --- | --- | --- |
"""

_FOOTER = """
Faults (see `pipecat_tts_failover.testing.faults`): `reject-*` refuse the request with
that HTTP status (in-band on an open WebSocket); `error` and `close-1011` send 120 ms of
audio, then the provider's error message or a WebSocket close (HTTP: a 500, or the body
aborted); `hang` never answers; `stall` sends 120 ms of audio, then nothing; `zeros`
sends digital silence; `empty` ends with no audio; `slow-ttfb` holds the first audio
back 800 ms; `slow-drip` streams 3x slower than real time; `flap` refuses every other
request with 503; `quota-exceeded` is an account out of credits (ElevenLabs: HTTP 401
`quota_exceeded`, on a WebSocket that message and a 1008 close; Cartesia: 402).
"""


def render(rows: list[Row], took: float) -> str:
    """The markdown page: how it was made, then one table row per fault and service."""
    total = len(SENTENCES)
    text = _HEADER.format(
        today=datetime.date.today().isoformat(),
        pipecat=version("pipecat-ai"),
        python=platform.python_version(),
        took=took,
        start=_ordinal(FROM_SENTENCE + 1),
        end_timeout=END_TIMEOUT_S,
        first_audio=FIRST_AUDIO_TIMEOUT,
        stall=STALL_TIMEOUT,
        speed=SPEED,
        stop_timeout=_pipecat_default("stop_frame_timeout_s"),
    )
    for row in rows:
        alone = f"{row.alone_heard}/{total}" + ("" if row.alone_ended else ", stuck")
        detected = ", ".join(f"`{r}`" for r in row.reasons) or (
            "passed over" if row.passed_over else "—"
        )
        extra = f"{row.extra_seconds:.2f} s" if row.extra_seconds else "—"
        failover = f"{row.failover_heard}/{total}" + ("" if row.failover_ended else ", stuck")
        text += (
            f"| `{row.fault}` | {NAMES[row.primary]} | {alone} | {row.alone_errors} "
            f"| {failover} | {detected} | {extra} |\n"
        )
    return text + _FOOTER


_TRIGGERS_HEADER = """
## Real triggers

No fault is injected in these rows: the emulators' own limits and validation fail the
call, with the real services' messages and close codes (see [what the real services do
on their own](testing.md#what-the-real-services-do-on-their-own)). Each trigger has its
own driver in `benchmarks/fault_matrix.py`, run with pipecat's service alone and inside
the same `FailoverTTSService` as above:

- **rapid barge-ins**: {barged} replies on `ElevenLabsTTSService`, each cut short by an
  `InterruptionFrame` as soon as its first audio plays (pipecat closes its context),
  then the four sentences. The ElevenLabs emulator streams at {barge_speed:g}x here (real
  time), so the contexts cut short are still open when the next one opens, as ElevenLabs
  counts them: the first sentence opens the 6th.
- **fleet over its plan**: {calls} calls at once, four sentences each, on one emulator
  whose plan allows {limit} generations at once (`concurrency_limit={limit}`; at
  {fleet_speed:g}x). With failover the calls share one health store, as a fleet's
  workers share Redis. ElevenLabs counts HTTP requests only, so its WebSocket has no row.
- **settings change**: the sentences stream as one LLM reply (`LLMTextFrame`s, one
  context); once the first plays, the app sends
  `TTSUpdateSettingsFrame(delta=ElevenLabsTTSService.Settings(stability=0.3))`.
- **idle**: after the first sentence the call is quiet for {idle:g} s, past a timeout
  shortened to {idle_timeout:g} s (ElevenLabs `inactivity_timeout`, 20 s by default;
  Cartesia's idle close, 5 minutes). pipecat's ElevenLabs keepalive every 10 s keeps a
  real 20 s timeout from firing; a shorter timeout stands for a keepalive that did not
  get through.
- **bad key**: the ElevenLabs account's key is not the one the service holds; the
  WebSocket opens, then gets `invalid_api_key` and a 1008 close.
- **quota exhausted**: the account has credits for the first sentence only
  (`ElevenLabsEmulator(character_quota=...)`, a credit a character); then
  `quota_exceeded` (HTTP 401; WebSocket: the message and a 1008 close).

*Provider* is what the primary's emulator did on its own (refusals by code, WebSocket
connections the service opened; both runs, where they differ); *heard* counts sentences
heard in full (all calls of the fleet together); *twice* the sentences heard more than
once; *errors* the `ErrorFrame`s that reached the application. The `ErrorFrame` texts
(context ids as `<id>`, processor numbers as `#<n>`, texts differing only in numbers
listed once) and their pipecat `ErrorCategory` follow the table.

| trigger | primary | provider | pipecat alone: heard | errors | with failover: heard | twice | detected as | whose doing |
| --- | --- | --- | --- | --- | --- | --- | --- | --- |
"""

_TRIGGERS_FOOTER = """
### Whose doing: what the health policy should not blame on the provider

None of these is an outage of the provider. The call moves at once in every row; what
each does to the fleet's health (the mark-down every call sharing the store obeys):

- **Rapid barge-ins past the context cap**: the contexts were opened by our own
  barge-ins on our own socket; ElevenLabs is up, and the same call on a new socket (or
  a context freed first) speaks. pipecat pushes no error for it, so it shows as a
  context with no audio: the confirmation probe through the call's reconnected socket
  speaks, which ends the run of failures, and ElevenLabs is not ejected. Where the
  provider's own text says `max_active_conversations`, the reason is `client_misuse`
  and it is never held against the provider.
- **Fleet over its concurrency plan**: the fleet is sized past its plan; calls within
  the plan are served. The 429s say "this account, now", not "this provider": they
  count as `rate_limited` toward the rate rule (half of the attempts over 30 s), so a
  fleet far over its plan moves to the backup for an ejection and is probed back.
- **Settings change mid-reply**: the app's settings change closed the reply's context;
  nothing failed on the provider's side. The sentences the closed context never spoke
  are detected as `no_audio` (below); a provider sent a settings update since it last
  spoke is excused for that (`client_misuse`), so it is not held against ElevenLabs.
- **Idle past the timeout**: a socket closed by design after the call was quiet;
  pipecat reconnects for the next sentence. Not a failure of the provider.
- **Bad key**: the provider is up; this key is refused, for every call that shares it.
  `authentication` ejects at once and alerts: the deployment's misconfiguration, which
  recovery probes cannot fix until the key is.
- **Quota exhausted**: the account is out of credits; the provider is up. `quota`
  ejects at once and alerts, for the account; it lasts until someone adds credits.

### How the sentences a settings change drops are kept

pipecat applies a voice-settings change by closing the ElevenLabs context in use
(`ElevenLabsTTSBase._update_settings`), but a reply streamed as one LLM turn keeps
sending its next sentences to that context: the emulator ignores text for a closed
context until its `isFinal` (what ElevenLabs answers there is not published), and
pipecat pushes no error (its context ends on that `isFinal`, after the first sentence's
audio). pipecat alone is silent about it and the caller hears one sentence of four.
When that context ends, pipecat pushes the words of the sentences never spoken (one
`TTSTextFrame` per sentence, untimed, as it completes a context). `SpeechWatch`
(`pipecat_tts_failover/watch.py`) sets each such sentence aside instead of counting
the one before it spoken, and judges them by the context's audio once it ends: a
sentence of several words the audio never reached got no audio, so the context fails
as `no_audio`. Its untimed words never reach the pipeline, and the backup says the
reply on from the first word not heard, inside the same reply. A one-word sentence at
the end of a context comes untimed whether it was said or not (pipecat's ElevenLabs
services never time a context's last word), so on its own it fails nothing.
"""


def render_triggers(rows: list[TriggerRow]) -> str:
    """The real-trigger section: one row per trigger and primary, then the errors and notes."""
    text = _TRIGGERS_HEADER.format(
        barged=len(BARGED_REPLIES),
        barge_speed=BARGE_IN_SPEED,
        calls=FLEET_CALLS,
        limit=FLEET_LIMIT,
        fleet_speed=FLEET_SPEED,
        idle=IDLE_S,
        idle_timeout=IDLE_TIMEOUT_S,
    )
    blame = {trigger: note for trigger, _, _, note in TRIGGERS}
    for row in rows:
        alone, failover = row.alone, row.failover
        provider = _provider_did(row.primary, alone)
        if _provider_did(row.primary, failover) != provider:
            provider = f"alone: {provider}; failover: {_provider_did(row.primary, failover)}"
        heard_alone = f"{alone.heard}/{alone.total}" + ("" if alone.ended else ", stuck")
        heard = f"{failover.heard}/{failover.total}" + ("" if failover.ended else ", stuck")
        detected = ", ".join(f"`{r}`" for r in failover.reasons) or "—"
        twice = str(failover.twice) if failover.twice else "—"
        text += (
            f"| {row.trigger} | {NAMES[row.primary]} | {provider} | {heard_alone} "
            f"| {alone.error_frames} | {heard} | {twice} | {detected} | {blame[row.trigger]} |\n"
        )
    text += "\n### What pipecat pushed, and what FailoverTTSService recorded\n"
    for row in rows:
        text += f"\n**{row.trigger}, {NAMES[row.primary]}**\n\n"
        if not row.alone.errors:
            text += "- pipecat alone: no `ErrorFrame`\n"
        for error, category in row.alone.errors:
            text += f"- pipecat alone, `{category}`: `{_md_code(error)}`\n"
        for error, category in row.failover.errors:
            text += f"- with failover, to the application, `{category}`: `{_md_code(error)}`\n"
        reasons = ", ".join(f"`{r}`" for r in row.failover.reasons) or "none"
        text += f"- FailoverTTSService recorded: {reasons}\n"
    return text + _TRIGGERS_FOOTER


def _provider_did(primary: Kind, outcome: Outcome) -> str:
    """What the primary's emulator did on its own in one run: refusals by code, sockets."""
    did = [f"`{code}` ×{n}" for code, n in outcome.refusals.items()]
    if primary.endswith("_ws"):
        did.append(f"{outcome.sockets} socket{'s' if outcome.sockets != 1 else ''}")
    return ", ".join(did) or "—"


def _md_code(text: str) -> str:
    """Text to put between backticks in a markdown table or list."""
    return text.replace("`", "'").replace("|", "\\|").replace("\n", " ")


def _pipecat_default(argument: str) -> object:
    """The default pipecat's TTSService gives a constructor argument."""
    return inspect.signature(TTSService.__init__).parameters[argument].default


def _ordinal(n: int) -> str:
    return {1: "first", 2: "second", 3: "third"}.get(n, f"{n}th")


async def run_all() -> str:
    began = time.monotonic()
    limit = asyncio.Semaphore(CONCURRENCY)
    rows = await asyncio.gather(
        *(run_case(primary, fault, limit) for fault in FAULTS for primary in KINDS)
    )
    limit = asyncio.Semaphore(TRIGGER_CONCURRENCY)
    trigger_rows = await asyncio.gather(
        *(
            run_trigger(trigger, driver, primary, limit)
            for trigger, driver, primaries, _ in TRIGGERS
            for primary in primaries
        )
    )
    return render(list(rows), time.monotonic() - began) + render_triggers(list(trigger_rows))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--out",
        default=os.path.join(os.path.dirname(__file__), "..", "docs", "fault-matrix.md"),
        help="where to write the markdown table",
    )
    args = parser.parse_args()
    logger.remove()
    # The emulators' aiohttp server logs a client that hung up mid-answer.
    logging.getLogger("aiohttp.server").setLevel(logging.CRITICAL)

    text = asyncio.run(run_all())
    with open(args.out, "w") as f:
        f.write(text)
    print(text)


if __name__ == "__main__":
    main()
