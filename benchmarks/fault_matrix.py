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

What the caller heard is read back from the audio that reached the end of the
pipeline: the emulators' audio for a word is a pure function of the word, so
each word is looked for, whole, in order. Writes the table to
``docs/fault-matrix.md`` and prints it.
"""

import argparse
import asyncio
import datetime
import inspect
import logging
import os
import platform
import sys
import time
from dataclasses import dataclass
from importlib.metadata import version

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from loguru import logger
from pipecat.services.tts_service import TTSService

from pipecat_tts_failover import FailoverTTSService, InMemoryHealthStore
from pipecat_tts_failover.testing import FaultKind
from tests.support.integration import (
    KINDS,
    Call,
    Kind,
    provider_of,
    providers,
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
    return render(list(rows), time.monotonic() - began)


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
