"""Where a wrapped call costs more than a bare one, at scale: CPU by function, memory by line, objects by type.

Run from the repo root::

    .venv/bin/python benchmarks/profile_scale.py [--calls 100] [--what cpu,memory,objects,floor]

Uses the calls of ``benchmarks/scale.py`` (real-time scripted providers, 3
sentences a call), bare and wrapped, each in a fresh process:

- ``cpu``: ``cProfile`` around the set-up (every call started) and around the
  audio path (every call speaking); own time per function, wrapped minus bare,
  per call and per sentence, ranked; and the package's functions by their own
  time and call counts per audio frame.
- ``memory``: ``tracemalloc`` snapshots once every call has started and in
  the middle of the speech, wrapped minus bare, per call, grouped by the first
  frame of the traceback outside asyncio and pipecat's frame plumbing.
- ``objects``: objects the garbage collector tracks once every call has
  started, by type, per call, wrapped minus bare (what full collections walk).
- ``floor``: memory held and objects tracked per call once every call has
  started, for bare, bare followed by a processor that only passes frames on
  (in direct mode, as FailoverTTSService runs: what any processor added to a
  call costs), wrapped on cold standby (no backup built) and on warm standby;
  the differences are what the processor, the package's own state and the
  warm backup's service each cost.

Prints figures; asserts nothing.
"""

import argparse
import asyncio
import cProfile
import gc
import io
import json
import pstats
import statistics
import subprocess
import sys
import time
import tracemalloc
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from loguru import logger
from scale import SENTENCES, Call, prime

from pipecat_tts_failover import InMemoryHealthStore

PACKAGE = "pipecat_tts_failover/"
# As scale.py: a call starts speaking every 0.1 s.
ARRIVAL = 0.1


def _where(filename: str) -> str:
    for marker in (PACKAGE, "site-packages/", "lib/python3.11/"):
        if marker in filename:
            return (
                filename.split(marker, 1)[1]
                if marker != PACKAGE
                else PACKAGE + filename.split(PACKAGE, 1)[1]
            )
    return filename


def _function_key(key) -> str:
    filename, line, name = key
    return f"{_where(filename)}:{line}:{name}"


def _stats(profile: cProfile.Profile) -> dict[str, list[float]]:
    stats = pstats.Stats(profile, stream=io.StringIO())
    return {
        _function_key(key): [ncalls, tottime, cumtime]
        for key, (_, ncalls, tottime, cumtime, _) in stats.stats.items()
    }


async def cpu_run(kind: str, calls: int) -> dict:
    store = InMemoryHealthStore()
    await prime(kind, store)
    gc.collect()
    group = [Call(kind, store) for _ in range(calls)]
    setup = cProfile.Profile()
    setup.enable()
    await asyncio.gather(*(c.start() for c in group))
    setup.disable()
    speech = cProfile.Profile()
    speech.enable()
    await asyncio.gather(*(c.speak(ARRIVAL * i) for i, c in enumerate(group)))
    speech.disable()
    await asyncio.gather(*(c.end() for c in group))
    return {
        "setup": _stats(setup),
        "speech": _stats(speech),
        "sentences": sum(min(c.sink.stopped, len(SENTENCES)) for c in group),
        "frames": sum(c.sink.frames for c in group),
    }


_PLUMBING = ("asyncio/", "<frozen", "tracemalloc", "benchmarks/", "tests/support/")


def _owner(trace: tracemalloc.Traceback) -> str:
    """Where an allocation belongs: the innermost frame in the package, with the line that allocated.

    Without a frame in the package, the innermost frame that is not the event
    loop's or the benchmark's own.
    """
    frames = list(reversed(trace))  # tracemalloc lists the oldest frame first
    leaf = f"{_where(frames[0].filename)}:{frames[0].lineno}"
    for frame in frames:
        if PACKAGE in frame.filename:
            where = f"{_where(frame.filename)}:{frame.lineno}"
            return where if where == leaf else f"{where} <- {leaf}"
    for frame in frames:
        if not any(p in frame.filename for p in _PLUMBING):
            return f"{_where(frame.filename)}:{frame.lineno}"
    return leaf


def _by_owner(snapshot: tracemalloc.Snapshot) -> dict[str, list[int]]:
    out: dict[str, list[int]] = {}
    for stat in snapshot.statistics("traceback"):
        owner = _owner(stat.traceback)
        entry = out.setdefault(owner, [0, 0])
        entry[0] += stat.size
        entry[1] += stat.count
    return out


async def memory_run(kind: str, calls: int) -> dict:
    store = InMemoryHealthStore()
    await prime(kind, store)
    gc.collect()
    tracemalloc.start(12)
    base = tracemalloc.take_snapshot()
    group = [Call(kind, store) for _ in range(calls)]
    await asyncio.gather(*(c.start() for c in group))
    gc.collect()
    started = tracemalloc.take_snapshot()
    speaking = asyncio.gather(*(c.speak() for c in group))
    await asyncio.sleep(1.5)  # every call mid-way through its first sentence
    mid = tracemalloc.take_snapshot()
    await speaking
    await asyncio.gather(*(c.end() for c in group))
    tracemalloc.stop()

    def diff(a, b):
        da, db = _by_owner(a), _by_owner(b)
        return {
            k: [
                db.get(k, [0, 0])[0] - da.get(k, [0, 0])[0],
                db.get(k, [0, 0])[1] - da.get(k, [0, 0])[1],
            ]
            for k in set(da) | set(db)
        }

    return {"started": diff(base, started), "mid": diff(base, mid)}


async def objects_run(kind: str, calls: int) -> dict:
    store = InMemoryHealthStore()
    await prime(kind, store)
    gc.collect()
    before = Counter(type(o).__qualname__ for o in gc.get_objects())
    group = [Call(kind, store) for _ in range(calls)]
    await asyncio.gather(*(c.start() for c in group))
    gc.collect()
    after = Counter(type(o).__qualname__ for o in gc.get_objects())
    tasks = Counter(t.get_coro().__qualname__ for t in asyncio.all_tasks())
    # Mid-speech too: per-sentence objects that stay alive while a sentence is spoken.
    speaking = asyncio.gather(*(c.speak() for c in group))
    await asyncio.sleep(1.5)
    mid = Counter(type(o).__qualname__ for o in gc.get_objects())
    gen0 = gc.get_stats()[0]["collections"]
    await speaking
    gen0 = gc.get_stats()[0]["collections"] - gen0
    frames = sum(c.sink.frames for c in group)
    await asyncio.gather(*(c.end() for c in group))
    return {
        "started": dict(after - before),
        "mid": dict(mid - before),
        "tasks": dict(tasks),
        "gen0_per_frame": gen0 * gc.get_threshold()[0] / max(frames, 1),
    }


async def floor_run(kind: str, calls: int) -> dict:
    store = InMemoryHealthStore()
    await prime(kind, store)
    gc.collect()
    objects = len(gc.get_objects())
    tracemalloc.start()
    traced = tracemalloc.get_traced_memory()[0]
    group = [Call(kind, store) for _ in range(calls)]
    await asyncio.gather(*(c.start() for c in group))
    gc.collect()
    held = tracemalloc.get_traced_memory()[0] - traced
    tracemalloc.stop()
    result = {"kib": held / 1024 / calls, "objects": (len(gc.get_objects()) - objects) / calls}
    await asyncio.gather(*(c.end() for c in group))
    return result


RUNS = {"cpu": cpu_run, "memory": memory_run, "objects": objects_run, "floor": floor_run}


def child(what: str, kind: str, calls: int) -> dict:
    command = [sys.executable, __file__, "--run", what, kind, "--calls", str(calls)]
    done = subprocess.run(
        command, cwd=ROOT, capture_output=True, text=True, timeout=1200, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(f"{what} {kind} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def report_cpu(calls: int, top: int):
    bare, wrapped = child("cpu", "bare", calls), child("cpu", "wrapped", calls)
    sentences = wrapped["sentences"]
    frames = wrapped["frames"]
    for phase, per, unit in (("setup", calls, "call"), ("speech", sentences, "sentence")):
        b, w = bare[phase], wrapped[phase]
        total_b = sum(v[1] for v in b.values())
        total_w = sum(v[1] for v in w.values())
        extra = total_w - total_b
        print(
            f"\n[{phase}] own time under cProfile: bare {total_b * 1000 / per:.2f} ms/{unit}, "
            f"wrapped {total_w * 1000 / per:.2f} ms/{unit}, extra {extra * 1000 / per:+.2f} ms/{unit} "
            f"({bare['sentences']} / {sentences} sentences, {frames} audio frames)"
        )
        diffs = sorted(
            ((w.get(k, [0, 0, 0])[1] - b.get(k, [0, 0, 0])[1], k) for k in set(b) | set(w)),
            reverse=True,
        )
        print(
            f"  functions by extra own time (wrapped - bare), share of the extra {extra * 1000:.0f} ms:"
        )
        for d, k in diffs[:top]:
            calls_b = b.get(k, [0])[0]
            calls_w = w.get(k, [0])[0]
            print(
                f"    {d * 1000 / per:+8.3f} ms/{unit} {d / extra * 100:5.1f} %  calls {calls_b}->{calls_w}  {k}"
            )
        # The package's own functions: own and cumulative time.
        ours = sorted(
            ((v[1], v[2], v[0], k) for k, v in w.items() if k.startswith(PACKAGE)), reverse=True
        )
        print(
            f"  {PACKAGE} functions by own time (cumulative in brackets), calls per {unit} and per frame:"
        )
        for tot, cum, n, k in ours[:top]:
            print(
                f"    {tot * 1000 / per:8.3f} ms/{unit} ({cum * 1000 / per:7.3f})  "
                f"{n / per:7.1f}/{unit} {n / max(frames, 1):6.2f}/frame  {k}"
            )
        ours_total = sum(v[1] for k, v in w.items() if k.startswith(PACKAGE))
        print(
            f"  {PACKAGE} own time in all: {ours_total * 1000 / per:.3f} ms/{unit} ({ours_total / extra * 100:.0f} % of the extra)"
        )


def report_memory(calls: int, top: int):
    bare, wrapped = child("memory", "bare", calls), child("memory", "wrapped", calls)
    for phase in ("started", "mid"):
        b, w = bare[phase], wrapped[phase]
        total_b = sum(v[0] for v in b.values()) / calls / 1024
        total_w = sum(v[0] for v in w.values()) / calls / 1024
        print(
            f"\n[memory {phase}] traced per call: bare {total_b:.0f} KiB, wrapped {total_w:.0f} KiB, "
            f"extra {total_w - total_b:+.0f} KiB"
        )
        diffs = sorted(
            (
                (
                    w.get(k, [0, 0])[0] - b.get(k, [0, 0])[0],
                    w.get(k, [0, 0])[1] - b.get(k, [0, 0])[1],
                    k,
                )
                for k in set(b) | set(w)
            ),
            reverse=True,
        )
        # The same, summed by the package's line alone (every allocation beneath it).
        by_line: dict[str, list[int]] = {}
        for size, count, k in diffs:
            line = k.split(" <- ")[0]
            entry = by_line.setdefault(line, [0, 0])
            entry[0] += size
            entry[1] += count
        print("  by the innermost line of the package (or of pipecat, outside it):")
        for line, (size, count) in sorted(by_line.items(), key=lambda kv: -kv[1][0])[:top]:
            print(
                f"    {size / calls / 1024:+8.1f} KiB/call {count / calls:+8.1f} blocks/call  {line}"
            )
        print("  by line and the line that allocated:")
        for size, count, k in diffs[:top]:
            print(
                f"    {size / calls / 1024:+8.1f} KiB/call {count / calls:+8.1f} blocks/call  {k}"
            )


def report_objects(calls: int, top: int):
    bare, wrapped = child("objects", "bare", calls), child("objects", "wrapped", calls)
    tb, tw = Counter(bare["tasks"]), Counter(wrapped["tasks"])
    extra_tasks = sorted(((tw[k] - tb[k], k) for k in set(tb) | set(tw)), reverse=True)
    print(
        f"\n[objects] asyncio tasks alive once every call started: bare {sum(tb.values()) / calls:.1f} "
        f"per call, wrapped {sum(tw.values()) / calls:.1f} per call; extra per call: "
        + ", ".join(f"{k} {d / calls:+.1f}" for d, k in extra_tasks if d)
    )
    print(
        "  "
        f"net GC-tracked allocations per audio frame (gen0 collections x threshold): "
        f"bare {bare['gen0_per_frame']:.1f}, wrapped {wrapped['gen0_per_frame']:.1f}"
    )
    for phase in ("started", "mid"):
        b, w = bare[phase], wrapped[phase]
        total_b = sum(b.values()) / calls
        total_w = sum(w.values()) / calls
        print(
            f"  [{phase}] GC-tracked objects per call: bare {total_b:.0f}, wrapped {total_w:.0f} "
            f"(x{total_w / total_b:.2f})"
        )
        diffs = sorted(((w.get(k, 0) - b.get(k, 0), k) for k in set(b) | set(w)), reverse=True)
        print("    " + ", ".join(f"{k} {d / calls:+.0f}" for d, k in diffs[:top]))


def report_floor(calls: int, top: int, repeats: int = 3):
    kinds = ("bare", "pass", "cold", "wrapped")
    runs: dict[str, list[dict]] = {kind: [] for kind in kinds}
    for r in range(repeats):
        for kind in kinds if r % 2 == 0 else reversed(kinds):
            runs[kind].append(child("floor", kind, calls))
    median = {
        kind: {key: statistics.median(run[key] for run in runs[kind]) for key in ("kib", "objects")}
        for kind in kinds
    }
    bare = median["bare"]
    print(
        f"\n[floor] held once every call started, per call, median of {repeats} runs each "
        "(fresh process per run, order alternating)"
    )
    labels = {
        "bare": "bare service",
        "pass": "bare + a pass-through processor (direct mode)",
        "cold": "wrapped, cold standby (no backup built)",
        "wrapped": "wrapped, warm standby",
    }
    for kind in kinds:
        m = median[kind]
        spread = "-".join(f"{f(run['kib'] for run in runs[kind]):.1f}" for f in (min, max))
        print(
            f"  {labels[kind]:<48} {m['kib']:6.1f} KiB ({spread}) x{m['kib'] / bare['kib']:.3f}"
            f"   {m['objects']:6.0f} objects x{m['objects'] / bare['objects']:.3f}"
        )
    parts = (
        ("a processor in the pipeline (pass - bare)", "pass", "bare"),
        ("the package's own state (cold - pass)", "cold", "pass"),
        ("the warm backup's service (warm - cold)", "wrapped", "cold"),
    )
    for label, a, b in parts:
        kib = median[a]["kib"] - median[b]["kib"]
        objects = median[a]["objects"] - median[b]["objects"]
        print(
            f"  {label:<48} {kib:+6.1f} KiB (x{kib / bare['kib']:+.3f})   {objects:+6.0f} objects"
        )


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=100)
    parser.add_argument("--what", default="cpu,memory,objects")
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--run", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    logger.remove()
    if args.run:
        what, kind = args.run
        print(json.dumps(asyncio.run(RUNS[what](kind, args.calls))))
        return
    started = time.monotonic()
    print(
        f"profile of {args.calls} concurrent calls, bare and wrapped (warm standby), scale.py's calls"
    )
    for what in args.what.split(","):
        {
            "cpu": report_cpu,
            "memory": report_memory,
            "objects": report_objects,
            "floor": report_floor,
        }[what](args.calls, args.top)
    print(f"\n({time.monotonic() - started:.0f} s)")


if __name__ == "__main__":
    main()
