"""Healthy-path CPU of FailoverTTSService against the bare service, counted in instructions.

Run from the repo root (needs valgrind)::

    .venv/bin/python benchmarks/instructions.py [--sentences 10]

CPU seconds on a shared machine vary by 20 % between identical runs, more than the
budget being checked (5 %). Instructions do not: ``valgrind --tool=callgrind``
counts them, the same for the same work whatever else the machine is doing. Four
processes run under it, side by side: pipecat's ``CartesiaTTSService`` alone and as
the primary of a FailoverTTSService (``ElevenLabsTTSService`` as the idle backup),
each speaking ``--sentences`` sentences from the emulators (in processes of their
own, not counted) and speaking none. The difference between the two counts of a
kind is what the sentences cost; the ratio of those is the wrapper's overhead on
the audio path. What holding a second, idle provider costs a call (its connection,
start and stop) is the difference of the two runs with no sentence.
"""

import argparse
import asyncio
import os
import re
import shutil
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
        EmulatorProcess("cartesia", speed=8) as cartesia,
        EmulatorProcess("elevenlabs", speed=8) as elevenlabs,
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


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sentences", type=int, default=10)
    parser.add_argument("--run", choices=["bare", "wrapped"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.run:
        asyncio.run(speak(args.run, args.sentences))
        return
    if shutil.which("valgrind") is None:
        sys.exit("valgrind is not installed (apt-get install valgrind)")

    with tempfile.TemporaryDirectory() as out_dir:
        runs = {
            (kind, n): count(kind, n, out_dir)
            for kind in ("bare", "wrapped")
            for n in (0, args.sentences)
        }
        counts = {key: collected(process) for key, process in runs.items()}

    n = args.sentences
    print(f"Instructions (valgrind --tool=callgrind), {n} sentences, one process per run")
    print(
        f"{'':<10} {'no sentence':>14} {f'{n} sentences':>14} {'sentences cost':>15} {'frames':>7}"
    )
    cost = {}
    for kind in ("bare", "wrapped"):
        idle, _ = counts[(kind, 0)]
        busy, frames = counts[(kind, n)]
        cost[kind] = busy - idle
        print(f"{kind:<10} {idle:>14,} {busy:>14,} {cost[kind]:>15,} {frames:>7}")
    added = cost["wrapped"] - cost["bare"]
    print(
        f"FailoverTTSService on the audio path: {cost['wrapped'] / cost['bare']:.3f} x the bare "
        f"service's instructions ({added / cost['bare'] * 100:+.1f} %); holding the idle backup "
        f"costs a call {counts[('wrapped', 0)][0] - counts[('bare', 0)][0]:+,} instructions "
        f"({(counts[('wrapped', 0)][0] - counts[('bare', 0)][0]) / cost['bare'] * 100:+.1f} % "
        f"of the {n} sentences)"
    )


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")
    main()
