"""Run every benchmark of the package and write docs/benchmarks.md.

Run from the repo root::

    .venv/bin/python benchmarks/run_all.py [--quick] [--only scale.py,standby.py]

Each benchmark runs as its own process, one at a time; its printed figures go
into the report verbatim, with the machine they ran on. ``--quick`` passes
smaller sizes for a fast look (the committed report is from a full run).
``--only`` runs the named scripts and replaces just their sections of the
existing report, leaving the others as they are.
"""

import argparse
import datetime
import os
import platform
import subprocess
import sys
import time
from importlib.metadata import version
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

BENCHMARKS = [
    (
        "Failover gap and healthy-path overhead",
        "failover_gap.py",
        [],
        [
            "--fault-repeats",
            "1",
            "--overhead-sentences",
            "1",
            "--repeats",
            "2",
            "--real-sentences",
            "4",
            "--real-repeats",
            "2",
        ],
        "For each fault of the primary: sentences the caller heard, for FailoverTTSService and "
        "for pipecat's `ServiceSwitcher` with `ServiceSwitcherStrategyFailover` on the same "
        "scripted providers; the dead air of the first failed sentence; the time from the "
        "failure being known to the backup's request (each fault repeated, ours and pipecat's "
        "in alternating order). Then the CPU and per-frame latency the wrapper adds on a "
        "healthy call, as a call has it (each sentence sent once the last was heard, audio "
        "streamed in real time in 40 ms chunks): with a scripted service that does next to "
        "nothing itself (where any pipecat processor's own cost shows at full size: "
        "`Pipeline([service])` is given for scale), and with pipecat's real "
        "`CartesiaTTSService` streaming from the emulator in another process. Configurations "
        "run in random order in each repeat; CPU is the audio path's (set-up apart); the added "
        "latency is paired by frame (frame k wrapped against frame k bare, from the provider's "
        "push to the next processor) and its p50/p99/max given as the median (range) over "
        "repeats. Budgets: backup request within 20 ms of an error or of the deadline; at most "
        "5 % CPU and 0.1 ms p99 added per frame.",
    ),
    (
        "Healthy-path CPU in instructions",
        "instructions.py",
        [],
        ["--sentences", "2", "--repeats", "1"],
        "CPU seconds on a shared machine vary by 20 % between identical runs, more than the "
        "5 % budget being checked; instruction counts (`valgrind --tool=callgrind`) vary less, "
        "but they vary (an asyncio program's path depends on timing), so the four "
        "configurations run one process at a time, in random order, repeated, and each figure "
        "is the median (range) over repeats. pipecat's `CartesiaTTSService` alone and as the "
        "primary of a FailoverTTSService, speaking from the emulators at real time (not "
        "counted), with and without sentences.",
    ),
    (
        "Tail latency: adaptive deadlines and hedging",
        "tail_latency.py",
        [],
        ["--calls", "20", "--sentences", "20", "--repeats", "1"],
        "A heavy-tailed primary (lognormal around 150 ms, 1 % hangs, 2 % taking 1-3 s) and a "
        "healthy backup: dead air per sentence and extra requests for pipecat's switcher, a "
        "fixed deadline, an adaptive one, and adaptive plus hedging. Every configuration is "
        "repeated (random order in each repeat, same draws): median (range) over repeats.",
    ),
    (
        "Fleet propagation through Redis",
        "propagation.py",
        [],
        ["--swaps", "50", "--repeats", "2", "--reads", "1000", "--starts", "10", "--calls", "100"],
        "Cross-process time from a mark-down to another worker's view (repeated: median "
        "(range) over repeats), call-start overhead with Redis against in memory, and many "
        "concurrent calls through a provider outage with Redis as the store (real-length "
        "speech streamed in real time).",
    ),
    (
        "Scale: many calls in one process",
        "scale.py",
        [],
        ["--calls", "10,100", "--repeats", "1", "--memory-calls", "100"],
        "N concurrent calls on one event loop, as one worker holds them, bare against wrapped "
        "(FailoverTTSService with an idle second provider), the same pipeline shape: a "
        "scripted provider streaming in real time (40 ms chunks, about 2.8 s per sentence), 3 "
        "sentences a call, each sent once the last was heard. Fresh process per run; bare and "
        "wrapped paired, in random order; ratios taken within pairs, median (range) over pairs. "
        "CPU per sentence is the audio path's (set-up apart), loop lag is how late a 10 ms "
        "timer fires while the calls speak, time to first audio is from queueing a sentence to "
        "its first audio at the end of the pipeline, GC from `gc.callbacks`; memory per call "
        "from `tracemalloc` after a priming call, in separate runs. Goals at 500 calls: CPU "
        "per sentence wrapped/bare <= 1.10, loop lag p99 within 1.25 x bare, time to first "
        "audio p99 within 1.1 x bare, memory per call <= 1.2 x bare (warm standby; close to "
        "1.0 x cold), no extra full collections.",
    ),
    (
        "Warm or cold standby",
        "standby.py",
        [],
        ["--repeats", "2"],
        "pipecat's real `CartesiaTTSService` (primary) and `ElevenLabsTTSService` (backup) on "
        "the emulators at real time; per repeat, in alternating order, a healthy call of three "
        "sentences (WebSocket sessions the emulators accepted) and a call whose primary answers "
        "the second sentence with an error (failover gap: from the failover event to the "
        "backup's first audio at the end of the pipeline). Cold standby halves the sessions a "
        "call holds; against a real provider the backup's connection is a TLS and WebSocket "
        "handshake over the internet, which lands in dead air during an incident, so the "
        'default stays `"warm"`; a fleet close to its plan\'s concurrency limit chooses '
        '`"cold"` knowingly.',
    ),
    (
        "Fleet health",
        "fleet_health.py",
        [],
        ["--quick", "--stores", "memory"],
        "Issue 13's scenarios side by side: version 0.1's rule "
        "(`HealthPolicy.first_failure(60)`), the `HealthPolicy()` defaults and pipecat's "
        "`ServiceSwitcher` with `ServiceSwitcherStrategyFailover`; many concurrent calls in one "
        "process sharing one store (in memory and Redis), scripted providers, speech 6x shorter "
        "than real streamed in real time (the 500-call burst real length); lost and repeated "
        "sentences decoded from the audio downstream. The script's docstring gives the set-up.",
    ),
]


# Benchmarks that write a page of their own; the report links to it.
PAGES = [
    (
        "Fault matrix",
        "fault_matrix.py",
        "fault-matrix.md",
        "Every emulator fault against each of pipecat's Cartesia and ElevenLabs services, "
        "pipecat alone against FailoverTTSService, side by side in one run.",
    ),
]


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (
        f"{cpu}, {os.cpu_count()} cores; Python {platform.python_version()}; "
        f"pipecat-ai {version('pipecat-ai')}; {platform.system()} {platform.release()}"
    )


def replace_sections(report: str, sections: dict[str, str]) -> str:
    """``report`` with the ``## title`` sections given replaced (or added before the pages)."""
    parts = report.split("\n## ")
    head, rest = parts[0], ["## " + part for part in parts[1:]]
    titles = [part.splitlines()[0][3:].strip() for part in rest]
    for title, section in sections.items():
        if title in titles:
            rest[titles.index(title)] = section
        else:
            at = next((i for i, t in enumerate(titles) if t in {p[0] for p in PAGES}), len(rest))
            rest.insert(at, section)
            titles.insert(at, title)
    return "\n".join([head.rstrip("\n") + "\n", *(part.rstrip("\n") + "\n" for part in rest)])


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller sizes, for a fast look")
    parser.add_argument("--out", default=str(ROOT / "docs" / "benchmarks.md"))
    parser.add_argument(
        "--only", default="", help="comma-separated scripts: run these, keep the other sections"
    )
    args = parser.parse_args()
    only = {name for name in args.only.split(",") if name}

    sections = []
    replaced: dict[str, str] = {}
    for title, script, full, quick, about in BENCHMARKS:
        if only and script not in only:
            continue
        path = ROOT / "benchmarks" / script
        if not path.exists():
            print(f"skipping {script}: not found", file=sys.stderr)
            continue
        command = [sys.executable, str(path), *(quick if args.quick else full)]
        print(f"running {script} ...", file=sys.stderr, flush=True)
        started = time.monotonic()
        result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
        took = time.monotonic() - started
        output = result.stdout.strip() or result.stderr.strip()[-2000:]
        status = "" if result.returncode == 0 else f" (exit {result.returncode})"
        status += f", {datetime.date.today().isoformat()}"
        shown = " ".join(["python", f"benchmarks/{script}", *command[2:]])
        section = (
            f"## {title}\n\n{about}\n\n`{shown}` ({took:.0f} s{status})\n\n```text\n{output}\n```\n"
        )
        sections.append(section)
        replaced[title] = section
        print(output)

    if only:
        Path(args.out).write_text(replace_sections(Path(args.out).read_text(), replaced))
        print(f"updated {', '.join(replaced)} in {args.out}", file=sys.stderr)
        return

    for title, script, page, about in PAGES:
        print(f"running {script} ...", file=sys.stderr, flush=True)
        started = time.monotonic()
        result = subprocess.run(
            [sys.executable, str(ROOT / "benchmarks" / script)], cwd=ROOT, capture_output=True
        )
        took = time.monotonic() - started
        status = "" if result.returncode == 0 else f" (exit {result.returncode})"
        sections.append(
            f"## {title}\n\n{about} `python benchmarks/{script}` ({took:.0f} s{status}) "
            f"regenerated [{page}]({page}).\n"
        )

    today = datetime.date.today().isoformat()
    report = (
        "# Benchmarks\n\n"
        f"Generated by `python benchmarks/run_all.py{' --quick' if args.quick else ''}` on "
        f"{today}, on {machine()}. Every comparison with pipecat's own failover was measured "
        "in the same run, side by side. The machines are shared and noisy: read medians and "
        "ratios, not single figures.\n\n" + "\n".join(sections)
    )
    Path(args.out).write_text(report)
    print(f"wrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
