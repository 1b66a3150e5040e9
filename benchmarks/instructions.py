"""Healthy-path CPU of FailoverTTSService against the bare service, counted in instructions.

Run from the repo root (needs valgrind)::

    .venv/bin/python benchmarks/instructions.py [--sentences 4] [--repeats 5] [--dilation 4]

CPU seconds on a shared machine vary by 20 % between identical runs, more than the
budget being checked (5 %), so instructions are counted instead
(``valgrind --tool=callgrind``). pipecat's ``CartesiaTTSService`` speaks
``--sentences`` sentences from the Cartesia emulator, alone and as the primary of a
FailoverTTSService (``ElevenLabsTTSService`` as the idle backup); each sentence is
sent once the last one was heard, as ``failover_gap.speak_paced`` does. The
emulators run in processes of their own, not counted.

An asyncio program's instructions depend on time: how many audio messages one
socket read brings, how often a waiting task wakes, how often a periodic timer
(the wrapper's loop-lag monitor, every 50 to 200 ms) fires while a sentence plays. Under
valgrind the counted process runs some 20 times slower than natively. An earlier
version paced the emulators at real time: its 10 sentences then needed most of
a core, so on a loaded machine the process fell behind by however much the load
decided, read the audio in batches, and sent a sentence before the last one was
heard once the 4 s wait ran out; and ``PipelineHarness.wait_for`` re-scanned
every frame heard so far at each wake-up, a cost of the harness's that grows
with the call and shrank as the batches grew. The same 10 sentences counted
1.12 to 1.46 G instructions. So here the sink counts the stop frames itself,
and time runs slower, for both sides alike: the emulators stream at
``1/dilation`` of real time, and the counted process's event loop runs on a
clock ``dilation`` times slower than the wall (``loop.time()``, so every
timeout, sleep and deadline built on it). To the code under test the call is
then what a real-time call is to a machine ``dilation`` times faster than
valgrind's: each 40 ms audio message arrives on its own, after the last one's
work is done, and timers fire as often per sentence as in a real call.

Each run is one process under callgrind; ``os.getresgid()`` (which nothing else
in the process calls) marks the phases, with ``--dump-before=getresgid``, so
callgrind writes the counts of each phase apart: imports and construction (not
reported), the call's set-up (the pipeline's start, connections included), the
sentences (from the first sent to a short settle after the last one was heard),
the call's end, and the exit. The emulators' idle timeouts are off (they would
run on the wall clock while the services' keepalives run on the slowed one).
The sentences are counted by themselves, with no subtraction of two runs; the
call's set-up is the start plus the end. Both
kinds must deliver the same audio frames and words, and every sentence within
its wait: the script says so otherwise, and fails. Per repeat bare and
wrapped run in random order, one process under valgrind at a time; each figure
is computed within a repeat, then given as the median and range over repeats.
"""

import argparse
import asyncio
import json
import os
import random
import re
import selectors
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

# callgrind dumps the counts before each call of this libc function.
_MARK_FUNCTION = "getresgid"
# The phases a run's counts are dumped in, in order; the last at exit.
_PHASES = ("load", "start", "sentences", "end", "exit")
# Loop time after the pipeline started and after the last sentence, for the
# work each leaves behind to finish within its phase.
_SETTLE = 0.25
_SUMMARY = re.compile(r"^summary: (\d+)$", re.MULTILINE)
_RESULT = "result: "


def _mark():
    """End a phase: callgrind (``--dump-before=getresgid``) writes its counts and zeroes them."""
    os.getresgid()


class _DilatedSelector(selectors.DefaultSelector):
    """The default selector, its timeouts (loop time) stretched into wall time."""

    def __init__(self, dilation: float):
        super().__init__()
        self._dilation = dilation

    def select(self, timeout=None):
        if timeout is not None and timeout > 0:
            timeout *= self._dilation
        return super().select(timeout)


class _DilatedLoop(asyncio.SelectorEventLoop):
    """An event loop whose clock runs ``dilation`` times slower than the wall's."""

    def __init__(self, dilation: float):
        super().__init__(_DilatedSelector(dilation))
        self._dilation = dilation

    def time(self) -> float:
        return time.monotonic() / self._dilation


async def speak(kind: str, sentences: int, dilation: float) -> dict:
    """One call of ``sentences`` sentences through the bare or the wrapped service, phase by phase."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from failover_gap import SENTENCE_WAIT, EmulatorProcess, real_service
    from failover_gap import sentences as texts
    from loguru import logger
    from pipecat.frames.frames import TTSSpeakFrame, TTSStoppedFrame

    from tests.support.pipeline import PipelineHarness

    logger.remove()
    # The sink counts the stop frames itself: PipelineHarness.wait_for would scan
    # every frame heard so far at each wake-up, as often as the frames' batching
    # wakes it, a cost of the harness's that grows with the call.
    stopped = 0
    heard_stop = asyncio.Event()

    def on_down(frame):
        nonlocal stopped
        if isinstance(frame, TTSStoppedFrame):
            stopped += 1
            heard_stop.set()

    # The providers' idle timeouts are off: they run on the wall clock, the
    # services' keepalives on the slowed one. The idle backup's ElevenLabs
    # socket, kept alive every 10 s of loop time (40 s of wall time at 4 x),
    # would time out after 20 s and reconnect, work a real call never does.
    late = 0
    async with (
        EmulatorProcess(
            "cartesia", speed=1 / dilation, extra_args=("--idle-timeout", "none")
        ) as cartesia,
        EmulatorProcess(
            "elevenlabs", speed=1 / dilation, extra_args=("--inactivity-timeout", "none")
        ) as elevenlabs,
    ):
        _, processor = real_service(kind, cartesia, elevenlabs)
        _mark()  # load
        h = PipelineHarness(processor, on_down=on_down)
        await h.__aenter__()
        await asyncio.sleep(_SETTLE)
        _mark()  # start
        for i, text in enumerate(texts(sentences)):
            await h.send(TTSSpeakFrame(text))
            try:
                async with asyncio.timeout(SENTENCE_WAIT):
                    while stopped <= i:
                        heard_stop.clear()
                        await heard_stop.wait()
            except TimeoutError:
                late += 1
        await asyncio.sleep(_SETTLE)
        _mark()  # sentences
        await h.end()
        _mark()  # end
    return {
        "frames": len(h.audio),
        "audio_bytes": sum(len(f.audio) for f in h.audio),
        "words": len(h.words),
        "late": late,
    }


def _run(kind: str, sentences: int, dilation: float):
    """The counted process: speak, then print what was heard for the parent to check."""
    runner = asyncio.Runner(loop_factory=lambda: _DilatedLoop(dilation))
    with runner:
        heard = runner.run(speak(kind, sentences, dilation))
    print(_RESULT + json.dumps(heard), file=sys.stderr)


def count(kind: str, args, out_dir: str) -> tuple[dict[str, int], dict]:
    """One run under callgrind: its instructions by phase, and what it heard."""
    out = f"{out_dir}/{kind}.out"
    process = subprocess.run(
        [
            "valgrind",
            "--tool=callgrind",
            f"--callgrind-out-file={out}",
            f"--dump-before={_MARK_FUNCTION}",
            sys.executable,
            __file__,
            "--run",
            kind,
            "--sentences",
            str(args.sentences),
            "--dilation",
            str(args.dilation),
        ],
        check=False,  # a failed run is reported below, with its stderr
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        timeout=3600,
        # One BLAS thread: OpenBLAS's idle worker threads spin for as long as the
        # scheduler lets them, which callgrind counts; nothing here multiplies matrices.
        env={**os.environ, "OPENBLAS_NUM_THREADS": "1"},
    )
    results = [line for line in process.stderr.splitlines() if line.startswith(_RESULT)]
    dumps = [f"{out}.{i}" for i in range(1, len(_PHASES))] + [out]
    if process.returncode != 0 or not results or not all(os.path.exists(d) for d in dumps):
        raise RuntimeError(f"callgrind run failed:\n{process.stderr[-3000:]}")
    if os.path.exists(f"{out}.{len(_PHASES)}"):
        raise RuntimeError(f"something else called {_MARK_FUNCTION}: more dumps than phases")
    counts = {}
    for phase, dump in zip(_PHASES, dumps):
        counts[phase] = int(_SUMMARY.search(Path(dump).read_text()).group(1))
        os.remove(dump)
    return counts, json.loads(results[-1][len(_RESULT) :])


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
    parser.add_argument("--sentences", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument(
        "--dilation", type=float, default=4.0, help="how many times slower time runs"
    )
    parser.add_argument("--seed", type=int, default=14)
    parser.add_argument("--run", choices=["bare", "wrapped"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.run:
        _run(args.run, args.sentences, args.dilation)
        return
    if shutil.which("valgrind") is None:
        sys.exit("valgrind is not installed (apt-get install valgrind)")

    n = args.sentences
    rng = random.Random(args.seed)
    kinds = ("bare", "wrapped")
    repeats: list[dict] = []
    heard: dict[str, list[dict]] = {kind: [] for kind in kinds}
    with tempfile.TemporaryDirectory() as out_dir:
        for _ in range(args.repeats):
            order = list(kinds)
            rng.shuffle(order)
            counts = {}
            for kind in order:
                # One process under valgrind at a time.
                counts[kind], result = count(kind, args, out_dir)
                heard[kind].append(result)
            repeats.append(counts)
    everything = [r for runs in heard.values() for r in runs]
    same = all(r == everything[0] for r in everything) and not everything[0]["late"]
    frames = statistics.median(r["frames"] for r in everything)

    print(
        f"Instructions (valgrind --tool=callgrind), {n} sentences, time {args.dilation:g} x "
        f"slower (emulators and the event loop's clock); {args.repeats} repeats, bare and "
        f"wrapped in random order, one process at a time; median (min .. max) over repeats"
    )
    print(
        f"{'':<8} {'call set-up (start + end)':>36} {f'{n} sentences':>36} "
        f"{'per audio frame':>26} {'frames':>7}"
    )
    setup = {k: [r[k]["start"] + r[k]["end"] for r in repeats] for k in kinds}
    cost = {k: [r[k]["sentences"] for r in repeats] for k in kinds}
    for kind in kinds:
        print(
            f"{kind:<8} {spread(setup[kind]):>36} {spread(cost[kind]):>36} "
            f"{spread([c / frames for c in cost[kind]]):>26} {frames:>7g}"
        )
    ratio = [w / b for w, b in zip(cost["wrapped"], cost["bare"])]
    idle = [w - b for w, b in zip(setup["wrapped"], setup["bare"])]
    idle_share = [i / b * 100 for i, b in zip(idle, cost["bare"])]
    print(
        f"FailoverTTSService on the audio path: {spread(ratio, '.3f')} x the bare service's "
        f"instructions; holding the idle backup costs a call's set-up {spread(idle, '+,.0f')} "
        f"instructions ({spread(idle_share, '+.1f')} % of the {n} sentences)"
    )
    first = everything[0]
    if same:
        print(
            f"Every run heard {first['frames']} audio frames ({first['audio_bytes']:,} bytes) "
            f"and {first['words']} words, each sentence within its wait"
        )
    else:
        print(f"NOT THE SAME WORK (audio frames, bytes, words, late sentences): {heard}")
        sys.exit(1)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")
    main()
