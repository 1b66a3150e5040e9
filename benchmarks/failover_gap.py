"""Failover gap and healthy-path overhead: FailoverTTSService against pipecat's own failover.

Run from the repo root::

    .venv/bin/python benchmarks/failover_gap.py [--sentences 6] [--fault-repeats 3]
        [--overhead-sentences 3] [--repeats 5] [--real-sentences 12] [--real-repeats 5]

For each fault of the primary, prints how many of the call's sentences the
caller heard in full, for FailoverTTSService and for pipecat's
``ServiceSwitcher`` with ``ServiceSwitcherStrategyFailover`` run side by side on
the same scripted providers; the dead air of the first failed sentence (from
its request to its first audio downstream); and the swap latency: from the
moment the failure was known (the provider's error, or the first-audio
deadline) to the backup receiving the request. Each fault is run
``--fault-repeats`` times, ours and pipecat's in alternating order; figures are
the median and range over the repeats.

Then the healthy-path overhead of the wrapper against the bare service, as a
call has it: each sentence sent once the last one was heard, the audio streamed
in real time (40 ms chunks, each when it is due, as a provider sends it). Per
repeat every configuration runs once, in random order. CPU is counted over the
audio path only (from the pipeline started to the last sentence heard); the
call's set-up (start and end of the pipeline, the idle backup's included) is
counted apart. Per-frame latency is the time from the provider's service
pushing an audio frame to the next processor receiving it; the added latency
is paired by frame: frame k of a configuration against frame k of the bare run
of the same repeat (the script makes the same frames). Its p50, p99 and max per
repeat are given as the median and range over repeats. Twice: with a scripted
service that does next to nothing itself (so every cost of pipecat's plumbing
shows at full size), and with pipecat's real ``CartesiaTTSService`` talking to
the Cartesia emulator in another process.
"""

import argparse
import asyncio
import os
import random
import statistics
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, os.path.dirname(__file__))

from loguru import logger
from pipecat.frames.frames import TTSAudioRawFrame, TTSSpeakFrame, TTSStoppedFrame
from pipecat.pipeline.pipeline import Pipeline
from pipecat.pipeline.service_switcher import (
    ServiceSwitcher,
    ServiceSwitcherStrategyFailover,
)
from scale import PacedTTSService

from pipecat_tts_failover import FailoverTTSService, InMemoryHealthStore
from tests.support.pipeline import PipelineHarness
from tests.support.scripted import ScriptedTTSService, decode_audio, plan

FIRST_AUDIO_TIMEOUT = 1.0
# How long to wait for a sentence to finish before sending the next one.
SENTENCE_WAIT = 4.0
SENTENCE = "Thank you for calling and have a wonderful day number {}"
FAULTS = ["error", "raise", "hang", "stall", "empty", "zeros", "auth"]


def sentences(n: int) -> list[str]:
    words = [
        "one",
        "two",
        "three",
        "four",
        "five",
        "six",
        "seven",
        "eight",
        "nine",
        "ten",
        "eleven",
        "twelve",
    ]
    return [SENTENCE.format(words[i % len(words)]) for i in range(n)]


class Timed(ScriptedTTSService):
    """A scripted service that notes when each request arrives and when it fails."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.request_times: list[float] = []
        self.error_times: list[float] = []

    async def run_tts(self, text, context_id):
        self.request_times.append(time.perf_counter())
        async for frame in super().run_tts(text, context_id):
            yield frame

    async def push_error(self, *args, **kwargs):
        self.error_times.append(time.perf_counter())
        await super().push_error(*args, **kwargs)


def make_providers(fault: str | None, stall_after_words: int = 2):
    primary = Timed(
        provider_index=0,
        faults=plan(every=fault),
        stall_after_words=0 if fault == "error" else stall_after_words,
        pace=0.001,
        name="primary",
    )
    backup = Timed(provider_index=1, pace=0.001, name="backup")
    return primary, backup


def sentences_heard(h: PipelineHarness, texts: list[str]) -> int:
    vocab = sorted({w for t in texts for w in t.split()})
    words = [w for w, _ in decode_audio(h.audio, vocab)]
    heard, i = 0, 0
    for text in texts:
        expected = text.split()
        if words[i : i + len(expected)] == expected:
            heard += 1
            i += len(expected)
    return heard


async def speak_paced(processor, texts: list[str], **harness_kwargs) -> PipelineHarness:
    """Send each sentence once the previous one has finished (or clearly never will).

    Sentences of a real call arrive over time, as the LLM writes them; sending
    them all at once would queue them behind a broken provider before any
    failover could act.
    """
    async with PipelineHarness(processor, **harness_kwargs) as h:
        for i, text in enumerate(texts):
            await h.send(TTSSpeakFrame(text))
            try:
                await h.wait_for(lambda: len(h.of(TTSStoppedFrame)) > i, timeout=SENTENCE_WAIT)
            except TimeoutError:
                pass
    return h


async def fault_row(fault: str, n: int, ours_first: bool) -> dict:
    texts = sentences(n)
    row: dict = {"fault": fault}

    async def ours():
        primary, backup = make_providers(fault)
        tts = FailoverTTSService(
            services={"primary": primary, "backup": backup},
            store=InMemoryHealthStore(),
            first_audio_timeout=FIRST_AUDIO_TIMEOUT,
            stall_timeout=0.5,
        )
        arrivals: dict[int, float] = {}
        h = await speak_paced(tts, texts, on_down=_stamp(arrivals))
        row["ours_heard"] = sentences_heard(h, texts)
        fail_request = primary.request_times[0]
        backup_request = backup.request_times[0] if backup.request_times else None
        first_backup_audio = min(
            (arrivals[f.id] for f in h.audio if f.id in arrivals and _speaker(f) == 1),
            default=None,
        )
        row["ours_gap_ms"] = _ms(first_backup_audio - fail_request) if first_backup_audio else None
        if fault in ("error", "auth", "raise") and primary.error_times:
            known = primary.error_times[0]
        elif fault in ("hang",):
            known = fail_request + FIRST_AUDIO_TIMEOUT
        else:
            known = None
        row["ours_swap_ms"] = _ms(backup_request - known) if (known and backup_request) else None

    async def pipecat():
        # pipecat's ServiceSwitcher with ServiceSwitcherStrategyFailover.
        primary, backup = make_providers(fault)
        switcher = ServiceSwitcher(
            services=[primary, backup], strategy_type=ServiceSwitcherStrategyFailover
        )
        h2 = await speak_paced(switcher, texts)
        row["pipecat_heard"] = sentences_heard(h2, texts)

    for run in (ours, pipecat) if ours_first else (pipecat, ours):
        await run()
    return row


def _speaker(frame: TTSAudioRawFrame) -> int:
    """Which scripted provider spoke an audio frame (see tests.support.scripted.word_code)."""
    value = int.from_bytes(frame.audio[:2], "little", signed=True)
    return (value - 1000) % 4


def _stamp(arrivals: dict[int, float]):
    def stamp(frame):
        if isinstance(frame, TTSAudioRawFrame):
            arrivals[frame.id] = time.perf_counter()

    return stamp


def _ms(seconds: float) -> float:
    return round(seconds * 1000, 2)


async def timed_call(processor, service, texts: list[str]) -> dict:
    """One healthy call: CPU of the audio path and of the set-up, and each audio frame's hop.

    ``service`` is the provider's service inside ``processor``; a frame's hop is
    from it pushing the frame to the next processor receiving it, in push order.
    """
    pushed: dict[int, float] = {}

    async def on_push(proc, frame):
        if isinstance(frame, TTSAudioRawFrame):
            pushed[frame.id] = time.perf_counter()

    service.add_event_handler("on_before_push_frame", on_push)
    received: dict[int, float] = {}
    t0 = time.process_time()
    h = PipelineHarness(processor, on_down=_stamp(received))
    await h.__aenter__()
    t1 = time.process_time()
    for i, text in enumerate(texts):
        await h.send(TTSSpeakFrame(text))
        try:
            await h.wait_for(lambda i=i: len(h.of(TTSStoppedFrame)) > i, timeout=SENTENCE_WAIT)
        except TimeoutError:
            pass
    t2 = time.process_time()
    await h.end()
    t3 = time.process_time()
    hops = [
        received[i] - t for i, t in sorted(pushed.items(), key=lambda kv: kv[1]) if i in received
    ]
    return {
        "cpu": t2 - t1,
        "setup_cpu": (t1 - t0) + (t3 - t2),
        "hops": hops,
        "audio_s": sum(len(f.audio) for f in h.audio) / (2 * 16000),
    }


def scripted_processor(kind: str):
    """The provider's paced scripted service, and what goes in the pipeline for ``kind``.

    Besides the bare service, the wrapper and pipecat's switcher, ``pipeline``
    is the service alone inside a pipecat ``Pipeline``: the least any
    processor holding a service pays in pipecat, for reference.
    """
    service = PacedTTSService(provider_index=0, name="primary")
    if kind == "bare":
        return service, service
    if kind == "pipeline":
        return service, Pipeline([service])
    if kind == "switcher":
        return service, ServiceSwitcher(
            services=[service, PacedTTSService(provider_index=1)],
            strategy_type=ServiceSwitcherStrategyFailover,
        )
    return service, FailoverTTSService(
        services={"primary": service, "backup": PacedTTSService(provider_index=1)},
        store=InMemoryHealthStore(),
    )


async def overhead(make, kinds: tuple[str, ...], texts: list[str], repeats: int, rng) -> dict:
    """Every kind once per repeat, in random order; the runs of each kind, by repeat."""
    runs: dict[str, list[dict]] = {kind: [] for kind in kinds}
    for _ in range(repeats):
        order = list(kinds)
        rng.shuffle(order)
        for kind in order:
            service, processor = make(kind)
            runs[kind].append(await timed_call(processor, service, texts))
    return runs


def _q(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def spread(values: list[float], fmt: str = ".3f") -> str:
    """Median and range over repeats: ``1.234 (1.100-1.300)``."""
    return (
        f"{format(statistics.median(values), fmt)} "
        f"({format(min(values), fmt)}-{format(max(values), fmt)})"
    )


def _print_overhead(runs: dict[str, list[dict]], labels: dict[str, str]):
    """Per kind: CPU, set-up CPU, hop latency; then each labelled kind against bare, paired."""
    bare = runs["bare"]
    print(
        f"{'':<10} {'audio-path CPU s':>22} {'set-up CPU ms':>22} {'hop p50 ms':>22} "
        f"{'hop p99 ms':>22} {'frames':>7}"
    )
    for kind, kind_runs in runs.items():
        print(
            f"{kind:<10} {spread([r['cpu'] for r in kind_runs]):>22} "
            f"{spread([r['setup_cpu'] * 1000 for r in kind_runs], '.1f'):>22} "
            f"{spread([_q(r['hops'], 0.5) * 1000 for r in kind_runs]):>22} "
            f"{spread([_q(r['hops'], 0.99) * 1000 for r in kind_runs]):>22} "
            f"{len(kind_runs[0]['hops']):>7}"
        )
    audio_s = statistics.median(r["audio_s"] for r in bare)
    for label, kind in labels.items():
        pairs = list(zip(runs[kind], bare))
        ratios = [k["cpu"] / b["cpu"] for k, b in pairs]
        added_cpu = [(k["cpu"] - b["cpu"]) * 1000 / audio_s for k, b in pairs]
        added_setup = [(k["setup_cpu"] - b["setup_cpu"]) * 1000 for k, b in pairs]
        added = [[x - y for x, y in zip(k["hops"], b["hops"])] for k, b in pairs]
        print(
            f"{label}: audio-path CPU ratio to bare {spread(ratios)} "
            f"({spread(added_cpu, '+.2f')} ms CPU per second of audio); set-up "
            f"{spread(added_setup, '+.1f')} ms CPU per call; added latency per frame, paired "
            f"by frame: p50 {spread([_q(a, 0.5) * 1000 for a in added])} ms, "
            f"p99 {spread([_q(a, 0.99) * 1000 for a in added])} ms, "
            f"max {spread([max(a) * 1000 for a in added], '.2f')} ms"
        )


async def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sentences", type=int, default=6)
    parser.add_argument("--fault-repeats", type=int, default=3)
    parser.add_argument("--overhead-sentences", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--real-sentences", type=int, default=12)
    parser.add_argument("--real-repeats", type=int, default=5)
    parser.add_argument("--seed", type=int, default=14)
    args = parser.parse_args()
    logger.remove()
    rng = random.Random(args.seed)

    print(f"Failover per fault ({args.sentences} sentences per call, primary broken throughout,")
    print(
        f"first_audio_timeout={FIRST_AUDIO_TIMEOUT}s, each sentence sent once the last one ended; "
        f"{args.fault_repeats} repeats, ours and pipecat's in alternating order, median (range))"
    )
    header = (
        f"{'fault':<8} {'ours heard':>11} {'pipecat heard':>14} {'dead air ms':>22} {'swap ms':>18}"
    )
    print(header)
    print("-" * len(header))
    for fault in FAULTS:
        rows = [
            await fault_row(fault, args.sentences, r % 2 == 0) for r in range(args.fault_repeats)
        ]
        print(
            f"{fault:<8} {_heard([r['ours_heard'] for r in rows], args.sentences):>11} "
            f"{_heard([r['pipecat_heard'] for r in rows], args.sentences):>14} "
            f"{_spread_or_none([r['ours_gap_ms'] for r in rows], '.1f'):>22} "
            f"{_spread_or_none([r['ours_swap_ms'] for r in rows], '.1f'):>18}"
        )

    print()
    texts = sentences(args.overhead_sentences)
    print(
        f"Healthy-path overhead, scripted service ({args.overhead_sentences} sentences per run, "
        "each once the last one was heard, audio in 40 ms chunks paced in real time; "
        f"{args.repeats} repeats, configurations in random order; median (range) over repeats)"
    )
    runs = await overhead(
        scripted_processor, ("bare", "pipeline", "wrapped", "switcher"), texts, args.repeats, rng
    )
    _print_overhead(
        runs,
        {
            "Pipeline([service])": "pipeline",
            "FailoverTTSService": "wrapped",
            "pipecat ServiceSwitcher": "switcher",
        },
    )

    print()
    print(
        f"Healthy-path overhead, pipecat's CartesiaTTSService against the emulator in another "
        f"process (speed 4; {args.real_sentences} sentences per run, each once the last one "
        f"ended; {args.real_repeats} repeats, order random; median (range) over repeats)"
    )
    async with (
        EmulatorProcess("cartesia", speed=4) as cartesia,
        EmulatorProcess("elevenlabs", speed=4) as elevenlabs,
    ):
        runs = await overhead(
            lambda kind: real_service(kind, cartesia, elevenlabs),
            ("bare", "wrapped"),
            sentences(args.real_sentences),
            args.real_repeats,
            rng,
        )
    _print_overhead(runs, {"FailoverTTSService": "wrapped"})


def _heard(values: list[int], n: int) -> str:
    low, high = min(values), max(values)
    return f"{low}/{n}" if low == high else f"{low}-{high}/{n}"


def _spread_or_none(values: list[float | None], fmt: str) -> str:
    known = [v for v in values if v is not None]
    return spread(known, fmt) if known else "-"


class EmulatorProcess:
    """A provider emulator in a process of its own, so its CPU is not the pipeline's."""

    def __init__(self, provider: str, speed: float, *, extra_args: tuple[str, ...] = ()):
        self._args = [sys.executable, "-m", "pipecat_tts_failover.cli", "emulate", provider]
        self._args += ["--speed", str(speed), "--log-level", "WARNING", *extra_args]
        self._process: asyncio.subprocess.Process | None = None
        self.ws_url = ""

    async def __aenter__(self) -> "EmulatorProcess":
        self._process = await asyncio.create_subprocess_exec(
            *self._args, stdout=asyncio.subprocess.PIPE
        )
        assert self._process.stdout is not None
        line = await asyncio.wait_for(self._process.stdout.readline(), timeout=30)
        # "<provider> emulator listening on http://127.0.0.1:P and ws://127.0.0.1:P (fault: none)"
        self.ws_url = line.decode().split(" and ")[1].split()[0]
        return self

    async def __aexit__(self, *exc):
        assert self._process is not None
        self._process.terminate()
        await asyncio.wait_for(self._process.wait(), timeout=10)


def real_service(kind: str, cartesia: EmulatorProcess, elevenlabs: EmulatorProcess):
    """pipecat's Cartesia service on the emulator, and what goes in the pipeline for ``kind``.

    ``bare``: the service itself; ``wrapped``: a FailoverTTSService with it as the
    primary and pipecat's ElevenLabs service as the (idle) backup.
    """
    from pipecat.services.cartesia.tts import CartesiaTTSService
    from pipecat.services.elevenlabs.tts import ElevenLabsTTSService

    service = CartesiaTTSService(
        api_key="test-key",
        url=f"{cartesia.ws_url}/tts/websocket",
        settings=CartesiaTTSService.Settings(voice="emulated-voice"),
    )
    if kind == "bare":
        return service, service
    backup = ElevenLabsTTSService(
        api_key="test-key",
        url=elevenlabs.ws_url,
        settings=ElevenLabsTTSService.Settings(voice="emulated-voice"),
    )
    wrapped = FailoverTTSService(
        services={"cartesia": service, "elevenlabs": backup}, store=InMemoryHealthStore()
    )
    return service, wrapped


if __name__ == "__main__":
    asyncio.run(main())
