"""Dead air per sentence under a heavy-tailed primary: pipecat's switcher, fixed, adaptive, adaptive + hedging.

Run from the repo root::

    .venv/bin/python benchmarks/tail_latency.py [--calls 40] [--sentences 50] [--repeats 3]

The primary's first-audio latency is lognormal around 150 ms (sigma 0.35); 1 %
of its requests hang and 2 % take 1-3 s. The backup is healthy (lognormal
around 200 ms, sigma 0.25). Every configuration sees the same draws: call c's
n-th primary request gets the same latency in every run. Calls run
concurrently (real pipecat pipelines, real time) and each sends its sentences
one after the other, as a conversation does.

Dead air of a sentence is the time from sending it to its first audio reaching
the end of the pipeline; a sentence never heard counts as lost. Extra requests
are TTS requests beyond one per sentence. FailoverTTSService runs with a high
failure threshold so the primary stays in use and the deadline and hedging
logic is what is measured (with the default threshold a call would move to the
backup for good at its first hang).

Every configuration runs ``--repeats`` times, all of them once per repeat in
random order; the draws are the same each time, so the spread is the run's own
(the loop's timing; p99 of 2000 sentences is the 20th-worst one). Figures are
the median and range over repeats.
"""

import argparse
import asyncio
import math
import os
import random
import statistics
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from loguru import logger
from pipecat.frames.frames import TTSAudioRawFrame, TTSSpeakFrame, TTSStoppedFrame
from pipecat.pipeline.service_switcher import (
    ServiceSwitcher,
    ServiceSwitcherStrategyFailover,
)

from pipecat_tts_failover import FailoverTTSService, InMemoryHealthStore
from tests.support.pipeline import PipelineHarness
from tests.support.scripted import ScriptedTTSService

HANG = 1e6
SENTENCE = "We will be right with you"
PRIMARY_MEDIAN, PRIMARY_SIGMA = 0.150, 0.35
BACKUP_MEDIAN, BACKUP_SIGMA = 0.200, 0.25


def primary_latency(call: int, request: int) -> float:
    rng = random.Random(call * 100_003 + request)
    u = rng.random()
    if u < 0.01:
        return HANG
    if u < 0.03:
        return rng.uniform(1.0, 3.0)
    return rng.lognormvariate(math.log(PRIMARY_MEDIAN), PRIMARY_SIGMA)


def backup_latency(call: int, request: int) -> float:
    rng = random.Random(-(call * 100_003 + request) - 1)
    return rng.lognormvariate(math.log(BACKUP_MEDIAN), BACKUP_SIGMA)


def make_services(call: int):
    primary = ScriptedTTSService(
        provider_index=0, ttfb=lambda i: primary_latency(call, i), ms_per_char=8, name="primary"
    )
    backup = ScriptedTTSService(
        provider_index=1, ttfb=lambda i: backup_latency(call, i), ms_per_char=8, name="backup"
    )
    return primary, backup


CONFIGS = {
    "pipecat ServiceSwitcher": None,
    "fixed deadline (1.5 s)": dict(first_audio_timeout=1.5),
    "adaptive deadline": dict(first_audio_timeout="adaptive"),
    "adaptive + hedging (p95)": dict(first_audio_timeout="adaptive", hedge_after="p95"),
    "adaptive + hedging (p99)": dict(first_audio_timeout="adaptive", hedge_after="p99"),
}


async def run_call(config: str, call: int, sentences: int, store) -> tuple[list[float | None], int]:
    primary, backup = make_services(call)
    if CONFIGS[config] is None:
        processor = ServiceSwitcher(
            services=[primary, backup], strategy_type=ServiceSwitcherStrategyFailover
        )
    else:
        processor = FailoverTTSService(
            services={"primary": primary, "backup": backup},
            store=store,
            failure_threshold=10_000,
            **CONFIGS[config],
        )
    arrivals: list[float] = []

    def on_down(frame):
        if isinstance(frame, TTSAudioRawFrame):
            arrivals.append(time.perf_counter())

    dead_air: list[float | None] = []
    async with PipelineHarness(processor, on_down=on_down) as h:
        for i in range(sentences):
            before = len(arrivals)
            sent = time.perf_counter()
            await h.send(TTSSpeakFrame(SENTENCE))
            try:
                await h.wait_for(lambda: len(h.of(TTSStoppedFrame)) > i, timeout=8.0)
            except TimeoutError:
                pass
            dead_air.append(arrivals[before] - sent if len(arrivals) > before else None)
    requests = len(primary.requests) + len(backup.requests)
    return dead_air, requests


def quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def run_config(config: str, calls: int, sentences: int) -> dict:
    store = InMemoryHealthStore()
    results = await asyncio.gather(*(run_call(config, c, sentences, store) for c in range(calls)))
    dead = [d for air, _ in results for d in air]
    heard = [d for d in dead if d is not None]
    total = calls * sentences
    requests = sum(r for _, r in results)
    return {
        "lost": total - len(heard),
        "p50": quantile(heard, 0.50),
        "p95": quantile(heard, 0.95),
        "p99": quantile(heard, 0.99) if len(heard) == total else math.inf,
        "max": max(heard) if len(heard) == total else math.inf,
        "extra": (requests - total) / total * 100,
    }


async def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=40)
    parser.add_argument("--sentences", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=14)
    args = parser.parse_args()
    logger.remove()

    total = args.calls * args.sentences
    draws = [primary_latency(c, i) for c in range(args.calls) for i in range(args.sentences)]
    finite = [d for d in draws if d < HANG]
    primary_p95 = quantile(finite, 0.95)
    backup_p50 = statistics.median(
        backup_latency(c, i) for c in range(args.calls) for i in range(args.sentences)
    )
    goal = 2 * (primary_p95 + backup_p50)
    print(f"{total} sentences ({args.calls} concurrent calls x {args.sentences})")
    print(
        f"primary: {sum(d == HANG for d in draws)} hangs, "
        f"{sum(1.0 <= d < HANG for d in draws)} slow (1-3 s), p95 of answered {primary_p95 * 1000:.0f} ms; "
        f"backup p50 {backup_p50 * 1000:.0f} ms"
    )
    print(
        f"goal for adaptive + hedging: p99 < 2 x (primary p95 + backup p50) = {goal * 1000:.0f} ms, extra requests < 6 %"
    )
    print(
        f"{args.repeats} repeats, configurations in random order each time; "
        "median (min-max) over repeats"
    )
    print()
    results: dict[str, list[dict]] = {config: [] for config in CONFIGS}
    rng = random.Random(args.seed)
    for _ in range(args.repeats):
        order = list(CONFIGS)
        rng.shuffle(order)
        for config in order:
            results[config].append(await run_config(config, args.calls, args.sentences))
    header = (
        f"{'configuration':<26} {'lost':>7} {'p50 ms':>13} {'p95 ms':>13} {'p99 ms':>15} "
        f"{'max ms':>16} {'extra %':>17}"
    )
    print(header)
    print("-" * len(header))
    for config, runs in results.items():
        print(
            f"{config:<26} {_spread([r['lost'] for r in runs], 1, '.0f'):>7} "
            f"{_spread([r['p50'] for r in runs]):>13} {_spread([r['p95'] for r in runs]):>13} "
            f"{_spread([r['p99'] for r in runs]):>15} {_spread([r['max'] for r in runs]):>16} "
            f"{_spread([r['extra'] for r in runs], 1, '.2f'):>17}"
        )


def _spread(values: list[float], scale: float = 1000, fmt: str = ".0f") -> str:
    """Median and range over repeats; "lost" where a sentence was never heard."""
    if any(math.isinf(v) for v in values):
        return "lost"
    low, mid, high = min(values), statistics.median(values), max(values)
    if low == high:
        return format(mid * scale, fmt)
    return f"{mid * scale:{fmt}} ({low * scale:{fmt}}-{high * scale:{fmt}})"


if __name__ == "__main__":
    asyncio.run(main())
