"""Run every benchmark of the package and write docs/benchmarks.md.

Run from the repo root::

    .venv/bin/python benchmarks/run_all.py [--quick]

Each benchmark runs as its own process; its printed figures go into the report
verbatim, with the machine they ran on. ``--quick`` passes smaller sizes for a
fast look (the committed report is from a full run).
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
        ["--overhead-sentences", "40", "--repeats", "3"],
        "For each fault of the primary: sentences the caller heard, for FailoverTTSService and "
        "for pipecat's `ServiceSwitcher` with `ServiceSwitcherStrategyFailover` on the same "
        "scripted providers; the dead air of the first failed sentence; the time from the "
        "failure being known to the backup's request. Then the CPU and per-frame latency the "
        "wrapper adds on a healthy call: with a scripted service that does next to nothing "
        "itself (where any pipecat processor's own cost shows at full size: "
        "`Pipeline([service])` is given for scale), and with pipecat's real "
        "`CartesiaTTSService` streaming from the emulator in another process. Budgets: "
        "backup request within 20 ms of an error or of the deadline; at most 5 % CPU and "
        "0.1 ms p99 added per frame.",
    ),
    (
        "Healthy-path CPU in instructions",
        "instructions.py",
        [],
        ["--sentences", "4"],
        "CPU seconds on a shared machine vary by 20 % between identical runs, more than the "
        "5 % budget being checked; instruction counts (`valgrind --tool=callgrind`) do not. "
        "pipecat's `CartesiaTTSService` alone and as the primary of a FailoverTTSService, "
        "speaking from the emulators (not counted), with and without sentences.",
    ),
    (
        "Tail latency: adaptive deadlines and hedging",
        "tail_latency.py",
        [],
        ["--calls", "20", "--sentences", "20"],
        "A heavy-tailed primary (lognormal around 150 ms, 1 % hangs, 2 % taking 1-3 s) and a "
        "healthy backup: dead air per sentence and extra requests for pipecat's switcher, a "
        "fixed deadline, an adaptive one, and adaptive plus hedging.",
    ),
    (
        "Fleet propagation through Redis",
        "propagation.py",
        [],
        ["--quick"],
        "Cross-process time from a mark-down to another worker's view, call-start overhead "
        "with Redis against in memory, and many concurrent calls through a provider outage "
        "with Redis as the store.",
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


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller sizes, for a fast look")
    parser.add_argument("--out", default=str(ROOT / "docs" / "benchmarks.md"))
    args = parser.parse_args()

    sections = []
    for title, script, full, quick, about in BENCHMARKS:
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
        shown = " ".join(["python", f"benchmarks/{script}", *command[2:]])
        sections.append(
            f"## {title}\n\n{about}\n\n`{shown}` ({took:.0f} s{status})\n\n```text\n{output}\n```\n"
        )
        print(output)

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
