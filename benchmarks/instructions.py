"""Healthy-path CPU of FailoverTTSService against the bare service, counted in instructions.

Run from the repo root (needs valgrind)::

    .venv/bin/python benchmarks/instructions.py [--sentences 10] [--repeats 3]

CPU seconds on a shared machine vary by 20 % between identical runs, more than the
budget being checked (5 %). Instructions (``valgrind --tool=callgrind``) vary much
less, but they do vary: an asyncio program's path depends on timing (how many
turns of the loop, which timer fires first), so counts are taken one process at a
time, never two under valgrind at once, and repeated. Four configurations:
pipecat's ``CartesiaTTSService`` alone and as the primary of a FailoverTTSService
(``ElevenLabsTTSService`` as the idle backup), each speaking ``--sentences``
sentences from the emulators (in processes of their own, at real time, not
counted) and speaking none. Per repeat all four run in random order. The
difference between the two counts of a kind is what the sentences cost; the
ratio of those is the wrapper's overhead on the audio path. What holding a
second, idle provider costs a call (its connection, start and stop) is the
difference of the two runs with no sentence. Each figure is computed within a
repeat, then given as the median and range over repeats.
"""

import argparse
import asyncio
import os
import random
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

_COLLECTED = re.compile(r"Collected : (\d+)")


async def speak(kind: str, sentences: int):
    """One call: ``sentences`` sentences through the bare or the wrapped service."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from failover_gap import EmulatorProcess, real_service, speak_paced
    from failover_gap import sentences as texts
    from loguru import logger

    logger.remove()
    async with (
        EmulatorProcess("cartesia", speed=1) as cartesia,
        EmulatorProcess("elevenlabs", speed=1) as elevenlabs,
    ):
        _, processor = real_service(kind, cartesia, elevenlabs)
        h = await speak_paced(processor, texts(sentences))
        print(f"audio frames: {len(h.audio)}", file=sys.stderr)


def count(kind: str, sentences: int, out_dir: str) -> subprocess.Popen:
    """Start one run under callgrind."""
    return subprocess.Popen(
        [
            "valgrind",
            "--tool=callgrind",
            f"--callgrind-out-file={out_dir}/{kind}-{sentences}.out",
            sys.executable,
            __file__,
            "--run",
            kind,
            "--sentences",
            str(sentences),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )


def collected(process: subprocess.Popen) -> tuple[int, str]:
    _, err = process.communicate(timeout=1800)
    match = _COLLECTED.search(err)
    if process.returncode != 0 or match is None:
        raise RuntimeError(f"callgrind run failed:\n{err[-2000:]}")
    frames = re.search(r"audio frames: (\d+)", err)
    return int(match.group(1)), frames.group(1) if frames else "?"


def spread(values: list[float], fmt: str = ",.0f") -> str:
    """Median and range over repeats."""
    if len(values) == 1:
        return format(values[0], fmt)
    return (
        f"{format(statistics.median(values), fmt)} "
        f"({format(min(values), fmt)} .. {format(max(values), fmt)})"
    )


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sentences", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=14)
    parser.add_argument("--run", choices=["bare", "wrapped"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.run:
        asyncio.run(speak(args.run, args.sentences))
        return
    if shutil.which("valgrind") is None:
        sys.exit("valgrind is not installed (apt-get install valgrind)")

    n = args.sentences
    rng = random.Random(args.seed)
    keys = [(kind, m) for kind in ("bare", "wrapped") for m in (0, n)]
    repeats: list[dict] = []
    frames: dict[str, str] = {}
    with tempfile.TemporaryDirectory() as out_dir:
        for _ in range(args.repeats):
            order = list(keys)
            rng.shuffle(order)
            counts = {}
            for key in order:
                # One process under valgrind at a time.
                counts[key], frame_count = collected(count(*key, out_dir))
                if key[1]:
                    frames[key[0]] = frame_count
            repeats.append(counts)

    print(
        f"Instructions (valgrind --tool=callgrind), {n} sentences, one process at a time, "
        f"{args.repeats} repeats in random order; median (min .. max) over repeats"
    )
    print(
        f"{'':<8} {'no sentence':>36} {f'{n} sentences':>36} {'sentences cost':>36} {'frames':>7}"
    )
    cost = {kind: [r[(kind, n)] - r[(kind, 0)] for r in repeats] for kind in ("bare", "wrapped")}
    for kind in ("bare", "wrapped"):
        print(
            f"{kind:<8} {spread([r[(kind, 0)] for r in repeats]):>36} "
            f"{spread([r[(kind, n)] for r in repeats]):>36} {spread(cost[kind]):>36} "
            f"{frames.get(kind, '?'):>7}"
        )
    ratio = [w / b for w, b in zip(cost["wrapped"], cost["bare"])]
    idle = [r[("wrapped", 0)] - r[("bare", 0)] for r in repeats]
    idle_share = [i / b * 100 for i, b in zip(idle, cost["bare"])]
    print(
        f"FailoverTTSService on the audio path: {spread(ratio, '.3f')} x the bare service's "
        f"instructions; holding the idle backup costs a call {spread(idle, '+,.0f')} instructions "
        f"({spread(idle_share, '+.1f')} % of the {n} sentences)"
    )


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")
    main()
