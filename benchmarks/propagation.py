"""RedisHealthStore in a fleet: how fast a swap reaches other workers, what it costs a call, 500 calls through an outage.

Run from the repo root::

    .venv/bin/python benchmarks/propagation.py [--swaps 200] [--repeats 5] [--reads 5000]
        [--starts 40] [--calls 500]

Starts its own redis-server on a free port (and kills it at the end), then prints:

(a) Propagation: one process marks a provider down, ``--swaps`` times; another
    process, subscribed through its own store, stamps the moment each change
    lands in its local view. Both stamp ``time.time()`` on the same machine.
    Repeated ``--repeats`` times (a fresh watching process each time): p50,
    p99 and max of each repeat, then their median and range over repeats.
(b) Call-start overhead: what the processor does at call start
    (``await store.get(ids)`` and ``await store.get_controls()``), with Redis and
    in memory; then whole call starts (a real pipeline, until started).
(c) ``--calls`` concurrent calls in one process sharing one RedisHealthStore,
    each speaking three sentences, through a primary outage (it hangs): paced
    as real calls are (arrivals spread over 10 s, a sentence every ~6 s, the
    outage starting partway), then as a burst (every call starts and speaks at
    once, the primary hanging from each call's second sentence), with Redis and
    in memory. Sentences lost (goal 0), wall time, CPU per call, event-loop lag.
    The scripted speech is real length (60 ms of audio per letter) and paced
    (a 60 ms chunk every 60 ms), as a provider streams it.

Prints figures; asserts nothing.
"""

import argparse
import asyncio
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from loguru import logger

from pipecat_tts_failover.detection import FailureReason
from pipecat_tts_failover.store import InMemoryHealthStore
from pipecat_tts_failover.store.redis import RedisHealthStore
from tests.support.calls import SENTENCES, speak_call
from tests.support.redis_server import RedisServer
from tests.support.scripted import plan

PROVIDERS = ["primary", "secondary"]
# The calls of (c) speak real-length speech (as the emulators do), streamed in real
# time: a 60 ms chunk every 60 ms.
SCRIPTED_MS_PER_CHAR = 60
SCRIPTED_PACE = 0.06


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))]


def summary(values: list[float], scale: float, unit: str) -> str:
    return (
        f"p50 {statistics.median(values) * scale:.3f} {unit}, "
        f"p99 {percentile(values, 0.99) * scale:.3f} {unit}, "
        f"max {max(values) * scale:.3f} {unit} (n={len(values)})"
    )


# -- (a) propagation ------------------------------------------------------------


async def watch(url: str, prefix: str, count: int):
    """The other process: print when each of ``count`` mark-downs lands in the local view."""
    store = RedisHealthStore(url, key_prefix=prefix)
    seen: dict[str, float] = {}
    view = store._view  # stamp arrivals where the store applies them
    apply = view.apply

    def stamped(revision):
        changed = apply(revision)
        pid = revision.health.provider_id
        if changed and revision.health.down_until is not None and pid not in seen:
            seen[pid] = time.time()
            if len(seen) == count:
                done.set()
        return changed

    done = asyncio.Event()
    view.apply = stamped
    connected = await store.connect(timeout=10)
    print(json.dumps({"ready": connected}), flush=True)
    try:
        async with asyncio.timeout(60):
            await done.wait()
    except TimeoutError:
        pass
    print(json.dumps(seen), flush=True)
    await store.close()


async def propagation_run(url: str, swaps: int) -> tuple[list[float], list[float], int] | None:
    """One repeat of (a): the writer's round trips, the delays seen, and how many were never seen."""
    prefix = f"bench-{uuid.uuid4().hex[:8]}"
    child = await asyncio.create_subprocess_exec(
        sys.executable,
        __file__,
        "--watch",
        url,
        prefix,
        str(swaps),
        stdout=asyncio.subprocess.PIPE,
        cwd=ROOT,
    )
    store = RedisHealthStore(url, key_prefix=prefix)
    try:
        assert child.stdout is not None
        ready = json.loads(await asyncio.wait_for(child.stdout.readline(), 60))
        if not (await store.connect() and ready["ready"]):
            return None
        sent: dict[str, float] = {}
        round_trips: list[float] = []
        for i in range(swaps):
            pid = f"p{i}"
            sent[pid] = time.time()
            started = time.perf_counter()
            await store.mark_down(pid, reason=FailureReason.ERROR, cooldown=60)
            round_trips.append(time.perf_counter() - started)
            await asyncio.sleep(0.005)
        seen = json.loads(await asyncio.wait_for(child.stdout.readline(), 90))
    finally:
        await store.close()
        if child.returncode is None:
            try:
                await asyncio.wait_for(child.wait(), 5)
            except TimeoutError:
                child.kill()
                await child.wait()
    delays = [seen[pid] - t for pid, t in sent.items() if pid in seen]
    return round_trips, delays, swaps - len(delays)


def over_repeats(runs: list[list[float]], scale: float, unit: str) -> str:
    """p50, p99 and max of each repeat: their median and range over repeats."""

    def of(stat) -> str:
        values = [stat(run) * scale for run in runs]
        return f"{statistics.median(values):.3f} ({min(values):.3f}-{max(values):.3f})"

    return (
        f"p50 {of(statistics.median)}, p99 {of(lambda r: percentile(r, 0.99))}, "
        f"max {of(max)} {unit}"
    )


async def propagation(url: str, swaps: int, repeats: int):
    runs = [await propagation_run(url, swaps) for _ in range(repeats)]
    if any(run is None for run in runs):
        print("(a) could not connect; skipped")
        return
    print(
        f"(a) Propagation across processes, {swaps} mark-downs one at a time, {repeats} repeats; "
        "median (range) over repeats"
    )
    print(
        f"    mark_down round trip in the writer:  {over_repeats([r[0] for r in runs], 1000, 'ms')}"
    )
    print(
        f"    mark-down -> other process's view:   {over_repeats([r[1] for r in runs], 1000, 'ms')}"
    )
    print(f"    never seen: {sum(r[2] for r in runs)} of {swaps * repeats}")


# -- (b) call-start overhead ------------------------------------------------------


async def health_reads(store, reads: int) -> list[float]:
    timings = []
    for _ in range(reads):
        started = time.perf_counter()
        await store.get(PROVIDERS)
        await store.get_controls()
        timings.append(time.perf_counter() - started)
    return timings


async def call_starts(store, starts: int) -> list[float]:
    timings = []
    for _ in range(starts):
        result = await speak_call(store, sentences=SENTENCES[:1])
        timings.append(result.started_in)
    return timings


async def overhead(url: str, reads: int, starts: int):
    redis_store = RedisHealthStore(url, key_prefix=f"bench-{uuid.uuid4().hex[:8]}")
    await redis_store.connect()
    await redis_store.mark_down("primary", reason=FailureReason.ERROR, cooldown=0.001)
    memory_store = InMemoryHealthStore()
    print(f"(b) Call-start overhead: get(ids) + get_controls(), {reads} reads")
    try:
        for name, store in (("memory", memory_store), ("redis", redis_store)):
            await health_reads(store, 200)  # warm up
            print(f"    {name:<7} {summary(await health_reads(store, reads), 1e6, 'µs')}")
        print(f"    Whole call start (pipeline started, health read included), {starts} calls")
        for name, store in (("memory", memory_store), ("redis", redis_store)):
            await call_starts(store, 3)  # warm up
            print(f"    {name:<7} {summary(await call_starts(store, starts), 1000, 'ms')}")
    finally:
        await redis_store.close()


# -- (c) many calls through an outage ---------------------------------------------


def sentences_heard(heard: list[str], sentences: list[str]) -> int:
    count, i = 0, 0
    for text in sentences:
        expected = text.split()
        if heard[i : i + len(expected)] == expected:
            count += 1
            i += len(expected)
    return count


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


class Warnings:
    """Collects the WARNING lines of the store and of the processors' store writers."""

    def __init__(self):
        self.lines: list[str] = []

    def __enter__(self):
        self._sink = logger.add(
            lambda m: self.lines.append(m.record["message"]),
            level="WARNING",
            filter="pipecat_tts_failover.store",
        )
        return self

    def __exit__(self, *exc):
        logger.remove(self._sink)

    def count(self, text: str) -> int:
        return sum(text in line for line in self.lines)


async def outage(store, calls: int, *, burst: bool, label: str):
    """``calls`` concurrent calls on one store; the primary breaks partway through them."""
    first_audio_timeout = 1.0
    loop = asyncio.get_running_loop()
    started = loop.time()
    if burst:
        # Every call starts at once and speaks at once; the primary hangs from
        # each call's second sentence on.
        together = asyncio.Barrier(calls)
        faults = plan({1: "hang", 2: "hang"})
        runs = [
            speak_call(
                store,
                primary=faults,
                first_audio_timeout=first_audio_timeout,
                barrier=together,
                ms_per_char=SCRIPTED_MS_PER_CHAR,
                pace=SCRIPTED_PACE,
            )
            for _ in range(calls)
        ]
    else:
        # Calls arrive over 10 s and speak a sentence every ~6 s (the caller talks
        # in between); from 12 s on, every new request to the primary hangs.
        outage_at = started + 12.0

        def faults(index: int, text: str) -> str | None:
            return "hang" if loop.time() >= outage_at else None

        async def call(offset: float):
            await asyncio.sleep(offset)
            return await speak_call(
                store,
                primary=faults,
                first_audio_timeout=first_audio_timeout,
                gap=6.0,
                ms_per_char=SCRIPTED_MS_PER_CHAR,
                pace=SCRIPTED_PACE,
            )

        runs = [call(10.0 * i / calls) for i in range(calls)]

    cpu_started, wall_started = time.process_time(), time.perf_counter()
    with Warnings() as warnings:
        async with LoopLag() as lag:
            results = await asyncio.gather(*runs)
    wall = time.perf_counter() - wall_started
    cpu = time.process_time() - cpu_started
    health = (await store.get(["primary"]))["primary"]

    total = calls * len(SENTENCES)
    spoken = sum(sentences_heard(r.heard, SENTENCES) for r in results)
    moved = sum(1 for r in results if "secondary" in r.speakers)
    print(f"    {label}")
    print(
        f"      sentences lost: {total - spoken} of {total}; calls that failed over: {moved}; "
        f"ProviderDown events: {_count(p for r in results for p in r.marked_down)}; "
        f"primary marked down: {health.down_until is not None}"
    )
    print(
        f"      wall {wall:.1f} s; CPU {cpu:.1f} s = {cpu / calls * 1000:.1f} ms per call; "
        f"event-loop lag {summary(lag.samples, 1000, 'ms')}"
    )
    print(
        f"      call start {summary([r.started_in for r in results], 1000, 'ms')}; "
        f"store fell back to its local view {warnings.count('unavailable')} time(s); "
        f"writes still pending at call end: {warnings.count('still pending')}"
    )


def _count(items) -> str:
    counts: dict[str, int] = {}
    for item in items:
        counts[item] = counts.get(item, 0) + 1
    return ", ".join(f"{k} x{v}" for k, v in sorted(counts.items())) or "none"


async def outages(url: str, calls: int):
    print(
        f"(c) {calls} concurrent calls in one process, {len(SENTENCES)} sentences each, "
        "through a primary outage (hang; first_audio_timeout=1.0 s)"
    )
    store = RedisHealthStore(url, key_prefix=f"bench-{uuid.uuid4().hex[:8]}")
    await store.connect()
    try:
        await outage(
            store,
            calls,
            burst=False,
            label="paced: arrivals over 10 s, a sentence every ~6 s, outage from 12 s, RedisHealthStore",
        )
    finally:
        await store.close()
    store = RedisHealthStore(url, key_prefix=f"bench-{uuid.uuid4().hex[:8]}")
    await store.connect()
    try:
        await outage(
            store,
            calls,
            burst=True,
            label="burst: all start and speak at once, hang from sentence 2, RedisHealthStore",
        )
    finally:
        await store.close()
    await outage(
        InMemoryHealthStore(),
        calls,
        burst=True,
        label="burst, InMemoryHealthStore for reference",
    )


async def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--swaps", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--reads", type=int, default=5000)
    parser.add_argument("--starts", type=int, default=40)
    parser.add_argument("--calls", type=int, default=500)
    parser.add_argument(
        "--watch", nargs=3, metavar=("URL", "PREFIX", "COUNT"), help=argparse.SUPPRESS
    )
    args = parser.parse_args()
    logger.remove()
    logger.add(sys.stderr, level="ERROR")
    if args.watch:
        url, prefix, count = args.watch
        await watch(url, prefix, int(count))
        return

    if shutil.which("redis-server") is None:
        sys.exit("redis-server not found on PATH; install Redis >= 7")
    with tempfile.TemporaryDirectory() as workdir:
        server = RedisServer(Path(workdir))
        try:
            server.start()
            print(f"redis-server on port {server.port}; {os.cpu_count()} CPUs\n")
            await propagation(server.url, args.swaps, args.repeats)
            print()
            await overhead(server.url, args.reads, args.starts)
            print()
            await outages(server.url, args.calls)
        finally:
            server.stop()


if __name__ == "__main__":
    asyncio.run(main())
