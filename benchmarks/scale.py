"""Many concurrent calls in one process, bare and wrapped: CPU per sentence, loop lag, first audio, memory, GC.

Run from the repo root::

    .venv/bin/python benchmarks/scale.py [--calls 10,100,300,500] [--repeats 2]
        [--memory-calls 100,500] [--arrival 0.1 | --spread 3] [--standby warm|cold]

Each run is a fresh process holding ``N`` concurrent calls on one event loop,
as one worker of a fleet does. A call is a pipecat pipeline ``[tts, sink]``
under its own ``PipelineWorker`` and ``WorkerRunner``; ``tts`` is

- ``bare``: a scripted pipecat ``TTSService`` (tests/support/scripted.py) that
  streams in real time: 40 ms chunks, each sent when it is due, 80 ms to the
  first chunk, about 2.9 s of speech per sentence;
- ``wrapped``: a ``FailoverTTSService`` with that service as the primary and a
  second one idle (``standby="warm"``: its pipeline set up and started with the
  call); ``cold`` (memory only) the same with ``standby="cold"`` and the
  backup given as a factory (built only if the call fails over); ``pass``
  (``profile_scale.py --what floor``) the bare service followed by a pipecat
  processor that only passes frames on, in direct mode as FailoverTTSService
  runs: what any processor added to a call costs.

Every call speaks 3 sentences, each sent once the previous one has been heard.
Every call is held (started) for the whole run; they start speaking one every
``--arrival`` seconds (0.1 s: about 90 speaking at any moment once N >= 100),
so the audio the loop carries at once is about the same from 100 calls up and
what grows with N is what the calls hold: pipelines, tasks, timers, the heap
the garbage collector walks. (On this 2-core, shared machine, pipecat alone
saturates one event loop at about 100 calls speaking at once; ``--spread 3``
starts every call speaking within 3 s, as in issue 14's first measurement.) The
process first makes one priming call (imports, caches), then starts
every call (set-up), then speaks (the audio path), then ends every call
(teardown). Each phase's CPU is taken apart; CPU per sentence is the audio
path's CPU over the sentences spoken. Loop lag is how late a 10 ms timer fires
while the calls speak; time to first audio is from queueing a sentence to its
first audio frame reaching the sink. GC is every collection the process makes
after priming (``gc.callbacks``).

Bare and wrapped runs are paired: one of each per repeat, the order alternating,
never at the same time. Ratios are taken within a pair, then the median and
range over pairs is shown. Memory runs (``tracemalloc``, separate processes, as
it slows everything down) take the traced memory after priming as the
baseline, then the memory held once every call has started and the peak while
they speak, per call.

Prints figures; asserts nothing.
"""

import argparse
import asyncio
import gc
import json
import os
import random
import statistics
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from loguru import logger
from pipecat.frames.frames import (
    EndFrame,
    Frame,
    StartFrame,
    TTSAudioRawFrame,
    TTSSpeakFrame,
    TTSStoppedFrame,
)
from pipecat.pipeline.pipeline import Pipeline
from pipecat.pipeline.worker import PipelineParams, PipelineWorker
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor
from pipecat.workers.runner import WorkerRunner

from pipecat_tts_failover import FailoverTTSService, InMemoryHealthStore
from tests.support.scripted import ScriptedTTSService

# About 2.9 s of speech each at 60 ms per letter, as the emulators speak.
SENTENCES = [
    "Thank you for calling and have a wonderful day number one",
    "Your parcel left our warehouse this morning by express",
    "If anything else comes up you can call us back at any time",
]
CHUNK_MS = 40
FIRST_CHUNK = 0.08
SENTENCE_WAIT = 30.0
KINDS = ("bare", "wrapped")


class PacedTTSService(ScriptedTTSService):
    """A scripted service that streams its audio in real time, as a provider does.

    Each chunk goes out when it is due (counted from the first chunk of the
    sentence), so a late loop is caught up rather than drifting.
    """

    def __init__(self, **kwargs):
        super().__init__(chunk_ms=CHUNK_MS, ttfb=FIRST_CHUNK, stall_after_words=0, **kwargs)

    async def _frames(self, text, context_id, fault, ttfb):
        loop = asyncio.get_running_loop()
        first: float | None = None
        chunks = 0
        async for frame in super()._frames(text, context_id, fault, ttfb):
            if isinstance(frame, TTSAudioRawFrame):
                if first is None:
                    first = loop.time()
                else:
                    delay = first + chunks * CHUNK_MS / 1000 - loop.time()
                    if delay > 0:
                        await asyncio.sleep(delay)
                chunks += 1
            yield frame


class _Sink(FrameProcessor):
    """The end of a call's pipeline: stamps first audio and counts finished sentences."""

    def __init__(self):
        super().__init__(enable_direct_mode=True)
        self.sent_at: float | None = None
        self.first_audio: list[float] = []
        self.frames = 0
        self.stopped = 0
        self.changed = asyncio.Event()

    async def process_frame(self, frame: Frame, direction: FrameDirection):
        await super().process_frame(frame, direction)
        if direction == FrameDirection.DOWNSTREAM and not isinstance(frame, StartFrame):
            if isinstance(frame, TTSAudioRawFrame):
                self.frames += 1
                if self.sent_at is not None:
                    self.first_audio.append(time.perf_counter() - self.sent_at)
                    self.sent_at = None
            elif isinstance(frame, TTSStoppedFrame):
                self.stopped += 1
                self.changed.set()
        await self.push_frame(frame, direction)


def make_tts(kind: str, store) -> FrameProcessor:
    primary = PacedTTSService(provider_index=0, name="primary")
    if kind == "bare":
        return primary
    if kind == "cold":
        # Cold standby as a fleet holding no backup would configure it: the
        # backup as a factory, built only if the call fails over.
        def backup():
            return PacedTTSService(provider_index=1, name="backup")
    else:
        backup = PacedTTSService(provider_index=1, name="backup")
    return FailoverTTSService(
        services={"primary": primary, "backup": backup},
        store=store,
        standby="cold" if kind == "cold" else "warm",
    )


class PassThrough(FrameProcessor):
    """A processor that only passes every frame on, in direct mode (no task or queue of its own)."""

    def __init__(self):
        super().__init__(enable_direct_mode=True)

    async def process_frame(self, frame: Frame, direction: FrameDirection):
        await super().process_frame(frame, direction)
        await self.push_frame(frame, direction)


class Call:
    """One call: a pipeline ``[tts, sink]`` under its own worker and runner."""

    def __init__(self, kind: str, store):
        self.sink = _Sink()
        tts = make_tts("bare" if kind == "pass" else kind, store)
        processors = [tts, PassThrough()] if kind == "pass" else [tts]
        self.worker = PipelineWorker(
            Pipeline([*processors, self.sink]),
            cancel_on_idle_timeout=False,
            params=PipelineParams(audio_out_sample_rate=16000),
        )
        self.runner = WorkerRunner(handle_sigint=False)
        self._run: asyncio.Task | None = None

    async def start(self):
        started = asyncio.Event()

        @self.worker.event_handler("on_pipeline_started")
        async def _started(worker, frame):
            started.set()

        await self.runner.add_workers(self.worker)
        self._run = asyncio.create_task(self.runner.run())
        async with asyncio.timeout(60):
            await started.wait()

    async def speak(self, offset: float = 0.0, sentences: int = len(SENTENCES)):
        if offset:
            await asyncio.sleep(offset)
        for i, text in enumerate(SENTENCES[:sentences]):
            self.sink.sent_at = time.perf_counter()
            await self.worker.queue_frame(TTSSpeakFrame(text))
            try:
                async with asyncio.timeout(SENTENCE_WAIT):
                    while self.sink.stopped <= i:
                        self.sink.changed.clear()
                        await self.sink.changed.wait()
            except TimeoutError:
                return

    async def end(self):
        await self.worker.queue_frame(EndFrame())
        assert self._run is not None
        async with asyncio.timeout(60):
            await self._run


class GCWatch:
    """Every collection the garbage collector makes: generation and duration."""

    def __init__(self):
        self.collections: list[tuple[int, float]] = []
        self._started = 0.0

    def __call__(self, phase: str, info: dict):
        if phase == "start":
            self._started = time.perf_counter()
        else:
            self.collections.append((info["generation"], time.perf_counter() - self._started))

    def __enter__(self):
        gc.callbacks.append(self)
        return self

    def __exit__(self, *exc):
        gc.callbacks.remove(self)

    def summary(self) -> dict:
        full = [d for g, d in self.collections if g == 2]
        return {
            "collections": len(self.collections),
            "full": len(full),
            "full_longest_ms": max(full, default=0.0) * 1000,
            "gc_total_ms": sum(d for _, d in self.collections) * 1000,
        }


class LoopLag:
    """How late the event loop runs a 10 ms timer, sampled while a block runs."""

    def __init__(self):
        self.samples: list[float] = []
        self._task: asyncio.Task | None = None

    async def __aenter__(self):
        self._task = asyncio.create_task(self._sample())
        return self

    async def __aexit__(self, *exc):
        assert self._task is not None
        self._task.cancel()
        await asyncio.wait({self._task})

    async def _sample(self):
        loop = asyncio.get_running_loop()
        while True:
            due = loop.time() + 0.01
            await asyncio.sleep(0.01)
            self.samples.append(loop.time() - due)


def quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


async def prime(kind: str, store):
    """One call of one sentence before measuring: imports, caches and first-use costs are paid."""
    call = Call(kind, store)
    await call.start()
    await call.speak(sentences=1)
    await call.end()


async def run(kind: str, calls: int, spread: float, memory: bool) -> dict:
    """One process's run: ``calls`` concurrent calls of ``kind``; figures as a dict."""
    store = InMemoryHealthStore()
    await prime(kind, store)
    gc.collect()
    result: dict = {"kind": kind, "calls": calls}
    if memory:
        tracemalloc.start()
        baseline = tracemalloc.get_traced_memory()[0]
    with GCWatch() as collections:
        cpu = time.process_time()
        wall = time.perf_counter()
        group = [Call(kind, store) for _ in range(calls)]
        await asyncio.gather(*(c.start() for c in group))
        result["setup_cpu_ms_per_call"] = (time.process_time() - cpu) * 1000 / calls
        result["setup_wall_s"] = time.perf_counter() - wall
        if memory:
            result["held_kib_per_call"] = (
                (tracemalloc.get_traced_memory()[0] - baseline) / 1024 / calls
            )
            tracemalloc.reset_peak()

        cpu = time.process_time()
        wall = time.perf_counter()
        async with LoopLag() as lag:
            await asyncio.gather(*(c.speak(spread * i / calls) for i, c in enumerate(group)))
        speech_cpu = time.process_time() - cpu
        spoken = sum(min(c.sink.stopped, len(SENTENCES)) for c in group)
        result["speech_wall_s"] = time.perf_counter() - wall
        result["sentences"] = spoken
        result["frames"] = sum(c.sink.frames for c in group)
        result["cpu_ms_per_sentence"] = speech_cpu * 1000 / max(spoken, 1)
        result["lag_p50_ms"] = quantile(lag.samples, 0.5) * 1000
        result["lag_p99_ms"] = quantile(lag.samples, 0.99) * 1000
        result["lag_max_ms"] = max(lag.samples, default=0.0) * 1000
        ttfa = [t for c in group for t in c.sink.first_audio]
        result["ttfa_p50_ms"] = quantile(ttfa, 0.5) * 1000
        result["ttfa_p99_ms"] = quantile(ttfa, 0.99) * 1000
        if memory:
            result["peak_kib_per_call"] = (
                (tracemalloc.get_traced_memory()[1] - baseline) / 1024 / calls
            )
            result["peak_mib"] = (tracemalloc.get_traced_memory()[1] - baseline) / 2**20

        cpu = time.process_time()
        await asyncio.gather(*(c.end() for c in group))
        result["teardown_cpu_ms_per_call"] = (time.process_time() - cpu) * 1000 / calls
        result.update(collections.summary())
    if memory:
        tracemalloc.stop()
    return result


def child(kind: str, calls: int, spread: float, memory: bool) -> dict:
    """Run one configuration in a fresh process and read back its figures."""
    command = [sys.executable, __file__, "--run", kind, "--calls", str(calls)]
    command += ["--spread", str(spread)] + (["--memory"] if memory else [])
    done = subprocess.run(
        command, cwd=ROOT, capture_output=True, text=True, timeout=900, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(f"{kind} x{calls} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def spread_of(values: list[float], fmt: str = ".1f") -> str:
    """Median and range: ``12.3 (11.9-13.0)``; one value alone."""
    if len(values) == 1:
        return format(values[0], fmt)
    return (
        f"{format(statistics.median(values), fmt)} "
        f"({format(min(values), fmt)}-{format(max(values), fmt)})"
    )


def timing_table(results: dict[int, list[dict[str, dict]]]):
    print(
        "| calls | CPU ms/sentence bare -> wrapped | ratio | loop lag p99 ms bare / wrapped "
        "| first audio p99 ms bare -> wrapped | set-up CPU ms/call bare -> wrapped "
        "| full GCs bare / wrapped (longest ms) | GC ms bare / wrapped |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for calls, pairs in results.items():

        def of(kind, key, pairs=pairs):
            return [p[kind][key] for p in pairs]

        ratio = [
            p["wrapped"]["cpu_ms_per_sentence"] / p["bare"]["cpu_ms_per_sentence"] for p in pairs
        ]
        lag_ratio = [p["wrapped"]["lag_p99_ms"] / p["bare"]["lag_p99_ms"] for p in pairs]
        ttfa_ratio = [p["wrapped"]["ttfa_p99_ms"] / p["bare"]["ttfa_p99_ms"] for p in pairs]
        print(
            f"| {calls} "
            f"| {spread_of(of('bare', 'cpu_ms_per_sentence'))} -> "
            f"{spread_of(of('wrapped', 'cpu_ms_per_sentence'))} "
            f"| {spread_of(ratio, '.2f')} "
            f"| {spread_of(of('bare', 'lag_p99_ms'))} / {spread_of(of('wrapped', 'lag_p99_ms'))} "
            f"(x{spread_of(lag_ratio, '.2f')}) "
            f"| {spread_of(of('bare', 'ttfa_p99_ms'))} -> {spread_of(of('wrapped', 'ttfa_p99_ms'))} "
            f"(x{spread_of(ttfa_ratio, '.2f')}) "
            f"| {spread_of(of('bare', 'setup_cpu_ms_per_call'))} -> "
            f"{spread_of(of('wrapped', 'setup_cpu_ms_per_call'))} "
            f"| {spread_of(of('bare', 'full'), '.0f')} ({spread_of(of('bare', 'full_longest_ms'), '.0f')}) / "
            f"{spread_of(of('wrapped', 'full'), '.0f')} ({spread_of(of('wrapped', 'full_longest_ms'), '.0f')}) "
            f"| {spread_of(of('bare', 'gc_total_ms'), '.0f')} / {spread_of(of('wrapped', 'gc_total_ms'), '.0f')} |"
        )
    short = [
        (calls, kind, p[kind]["sentences"])
        for calls, pairs in results.items()
        for p in pairs
        for kind in KINDS
        if p[kind]["sentences"] < calls * len(SENTENCES)
    ]
    for calls, kind, spoken in short:
        print(f"note: {kind} x{calls}: {spoken} of {calls * len(SENTENCES)} sentences finished")


def memory_table(results: dict[int, dict[str, dict]]):
    print(
        "| calls | KiB per call held bare / warm / cold | ratio warm / cold "
        "| peak KiB per call bare / warm / cold | peak MiB bare / warm / cold |"
    )
    print("|---|---|---|---|---|")
    for calls, by_kind in results.items():
        held = [by_kind[k]["held_kib_per_call"] for k in ("bare", "wrapped", "cold")]
        peak = [by_kind[k]["peak_kib_per_call"] for k in ("bare", "wrapped", "cold")]
        mib = [by_kind[k]["peak_mib"] for k in ("bare", "wrapped", "cold")]
        print(
            f"| {calls} | {held[0]:.0f} / {held[1]:.0f} / {held[2]:.0f} "
            f"| x{held[1] / held[0]:.2f} / x{held[2] / held[0]:.2f} "
            f"| {peak[0]:.0f} / {peak[1]:.0f} / {peak[2]:.0f} "
            f"| {mib[0]:.0f} / {mib[1]:.0f} / {mib[2]:.0f} |"
        )


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", default="10,100,300,500", help="comma-separated call counts")
    parser.add_argument(
        "--repeats", type=int, default=2, help="bare/wrapped pairs per count (0: memory only)"
    )
    parser.add_argument(
        "--memory-calls", default="100,500", help="call counts for memory runs ('' for none)"
    )
    parser.add_argument(
        "--arrival", type=float, default=0.1, help="seconds between calls starting to speak"
    )
    parser.add_argument(
        "--spread",
        type=float,
        help="seconds over which all calls start speaking (overrides --arrival)",
    )
    parser.add_argument(
        "--standby",
        choices=("warm", "cold"),
        default="warm",
        help="the wrapped calls' standby in the timing runs (cold: the backup as a factory)",
    )
    parser.add_argument("--seed", type=int, default=14)
    parser.add_argument("--run", choices=("bare", "wrapped", "cold"), help=argparse.SUPPRESS)
    parser.add_argument("--memory", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    logger.remove()
    if args.run:
        calls = int(args.calls)
        print(json.dumps(asyncio.run(run(args.run, calls, args.spread, args.memory))))
        return

    def spread_for(calls: int) -> float:
        return args.spread if args.spread is not None else calls * args.arrival

    rng = random.Random(args.seed)
    counts = [int(c) for c in args.calls.split(",") if c]
    memory_counts = [int(c) for c in args.memory_calls.split(",") if c]
    seconds = sum(len(w) for s in SENTENCES for w in s.split()) * 0.06 / len(SENTENCES)
    print(
        f"{len(SENTENCES)} sentences per call ({seconds:.1f} s of speech each on average, "
        f"{CHUNK_MS} ms chunks paced in real time, first chunk after {FIRST_CHUNK * 1000:.0f} ms), "
        + (
            f"calls start speaking over {args.spread:.0f} s"
            if args.spread is not None
            else f"calls held throughout, starting to speak one every {args.arrival:g} s"
        )
        + f"; {os.cpu_count()} CPUs"
    )
    timing: dict[int, list[dict[str, dict]]] = {}
    if counts and args.repeats > 0:
        print(
            f"timing: {args.repeats} bare/wrapped pairs per row (wrapped with "
            f'standby="{args.standby}"), fresh process per run, order alternating between pairs; '
            "median (min-max) over runs, ratios within pairs"
        )
        print()
    else:
        counts = []  # memory only
    wrapped = "cold" if args.standby == "cold" else "wrapped"
    for calls in counts:
        timing[calls] = []
        # Alternating orders (the first from the seed): the second process of a
        # pair tends to run faster here, and a random order can put one kind
        # first in most pairs (5 of 6 in one run).
        first = rng.randrange(2)
        for r in range(args.repeats):
            order = list(KINDS) if (r + first) % 2 == 0 else list(reversed(KINDS))
            pair = {
                kind: child(wrapped if kind == "wrapped" else kind, calls, spread_for(calls), False)
                for kind in order
            }
            timing[calls].append(pair)
            print(
                f"  {calls} calls, {' then '.join(order)}: CPU ms/sentence "
                + ", ".join(f"{k} {pair[k]['cpu_ms_per_sentence']:.1f}" for k in KINDS),
                file=sys.stderr,
                flush=True,
            )
    if timing:
        timing_table(timing)

    if memory_counts:
        print()
        print(
            "memory (tracemalloc, one run each, fresh process, order random): held once every "
            "call started, peak while they speak, per call, over the traced memory after a "
            'priming call; warm = wrapped with standby="warm", cold = standby="cold" with the '
            "backup given as a factory"
        )
        memory: dict[int, dict[str, dict]] = {}
        for calls in memory_counts:
            order = ["bare", "wrapped", "cold"]
            rng.shuffle(order)
            memory[calls] = {
                kind: child(kind, calls, spread_for(calls), memory=True) for kind in order
            }
        memory_table(memory)


if __name__ == "__main__":
    main()
