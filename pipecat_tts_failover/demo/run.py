"""The ``demo`` command: the header, the calls (here or in workers), and the files it writes.

Exit status: 0 when the demo ran (whatever the caller heard), 1 when it could
not run (a missing extra, Redis unreachable, a call that broke), 2 on a usage
error, 130 on Ctrl-C.
"""

import argparse
import asyncio
import contextlib
import importlib
import logging
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from loguru import logger

from pipecat_tts_failover.demo.script import PRIMARY, SCRIPT, Timing
from pipecat_tts_failover.demo.stage import (
    DemoError,
    DemoOptions,
    breaker,
    emulators,
    live_view,
    open_store,
)
from pipecat_tts_failover.testing.faults import Fault

if TYPE_CHECKING:
    from rich.console import Console

    from pipecat_tts_failover.demo.timeline import CallView

__all__ = ["DemoError", "DemoOptions", "DemoResult", "main", "options_from", "run_demo"]

EXTRA_HINT = 'pip install "pipecat-tts-failover[demo]"'
LOG_NAME = "demo.log"
PNG_NAME = "demo-timeline.png"
MAX_WORKERS = 4


def main(args: argparse.Namespace) -> int:
    """Run the demo for the parsed command line.

    Args:
        args: ``fault``, ``out``, ``compare``, ``redis_url``, ``workers``, ``speed``.

    Returns:
        The exit status.
    """
    try:
        options = options_from(args)
        log = options.out / LOG_NAME
        _log_to(log)
        _require_extras(redis=options.redis_url is not None)
    except DemoError as e:
        print(f"pipecat-tts-failover demo: {e}", file=sys.stderr)
        return e.status

    from rich.console import Console

    console = Console(highlight=False)
    try:
        asyncio.run(run_demo(options, console))
        return 0
    except DemoError as e:
        print(f"pipecat-tts-failover demo: {e}", file=sys.stderr)
        return e.status
    except KeyboardInterrupt:
        print("pipecat-tts-failover demo: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # noqa: BLE001 - one clear line for the user; the traceback is in the log
        logger.exception("demo failed")
        print(f"pipecat-tts-failover demo: failed: {e!r} (details in {log})", file=sys.stderr)
        return 1


def options_from(args: argparse.Namespace) -> DemoOptions:
    """Check the arguments that argparse cannot check alone.

    Raises:
        DemoError: With status 2 for a usage error.
    """
    workers = args.workers
    if not 1 <= workers <= MAX_WORKERS:
        raise DemoError(f"--workers must be between 1 and {MAX_WORKERS}, got {workers}", 2)
    if workers > 1 and not args.redis_url:
        raise DemoError(
            f"--workers {workers} needs --redis-url: the workers share provider health "
            "through Redis (e.g. --redis-url redis://localhost:6379/0)",
            2,
        )
    if workers > 1 and args.compare:
        raise DemoError("--compare runs in one process; it cannot be combined with --workers", 2)
    out = Path(args.out).expanduser()
    if out.exists() and not out.is_dir():
        raise DemoError(f"--out {args.out}: not a directory", 2)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DemoError(f"--out {args.out}: cannot create it: {e.strerror or e}", 2) from None
    return DemoOptions(
        fault=args.fault,
        out=out.resolve(),
        compare=args.compare,
        redis_url=args.redis_url,
        workers=workers,
        speed=args.speed,
    )


def _require_extras(*, redis: bool):
    """Fail with the extra to install when the demo's dependencies are missing.

    Raises:
        DemoError: Naming the missing package and the extra.
    """
    missing = []
    for module in ("rich", "matplotlib"):
        try:
            importlib.import_module(module)
        except ImportError:
            missing.append(module)
    if missing:
        raise DemoError(f"the demo needs {' and '.join(missing)}: {EXTRA_HINT}")
    for module in ("pipecat.services.cartesia.tts", "pipecat.services.elevenlabs.tts", "cartesia"):
        try:
            importlib.import_module(module)
        except Exception as e:  # noqa: BLE001 - pipecat raises a bare Exception for a missing module
            raise DemoError(f"the demo needs {module} ({e}): {EXTRA_HINT}") from None
    if redis:
        try:
            importlib.import_module("redis")
        except ImportError:
            raise DemoError(
                'the redis package is needed for --redis-url: pip install "pipecat-tts-failover[redis]"'
            ) from None


class _ToLoguru(logging.Handler):
    """Sends the standard library's log records (aiohttp, websockets, asyncio) to loguru."""

    def emit(self, record: logging.LogRecord):
        try:
            level: str | int = logger.level(record.levelname).name
        except ValueError:
            level = record.levelno
        logger.opt(exception=record.exc_info).log(level, f"{record.name}: {record.getMessage()}")


def _log_to(path: Path):
    """Keep every log out of the terminal: loguru and the standard library both go to ``path``."""
    logger.remove()
    logger.add(path, level="DEBUG", mode="w")
    logging.basicConfig(handlers=[_ToLoguru()], level=logging.WARNING, force=True)


def demo_title(fault: Fault) -> str:
    """The picture's title."""
    return f"pipecat-tts-failover demo: {PRIMARY} breaks ({fault}) mid-call, then recovers"


@dataclass(frozen=True, slots=True)
class DemoResult:
    """What the demo ran and wrote.

    Parameters:
        calls: Each call's timeline and its WAV.
        png: The timeline picture.
        files: Every file written, for the summary.
        settings: The FailoverTTSService settings that differ from the
            defaults, as shown in the header and the picture.
    """

    calls: list[tuple["CallView", Path | None]]
    png: Path
    files: list[Path]
    settings: list[str]


async def run_demo(options: DemoOptions, console: "Console") -> DemoResult:
    """Run the demo: the calls, the live view, the files, the summary.

    Args:
        options: What to run.
        console: Where to show it.

    Returns:
        The calls and the files.

    Raises:
        DemoError: When it cannot run.
    """
    from pipecat_tts_failover.demo.call import non_default_settings
    from pipecat_tts_failover.demo.render import print_header
    from pipecat_tts_failover.recovery import close_recovery

    timing = Timing(speed=options.speed)
    settings = non_default_settings(timing)
    print_header(console, demo_title(options.fault), settings)
    try:
        if options.workers > 1:
            from pipecat_tts_failover.demo.fleet import run_fleet

            results = await run_fleet(options, timing, console)
        else:
            results = await _run_local(options, timing, console)
    except ExceptionGroup as group:
        # A call or a worker failed inside a TaskGroup: report the demo's own error plainly.
        matched, _ = group.split(DemoError)
        while isinstance(matched, ExceptionGroup):
            matched = matched.exceptions[0]
        if matched is not None:
            raise matched from None
        raise
    finally:
        await close_recovery()  # safe to call twice
    return await _write_outputs(options, console, results, settings)


async def _run_local(
    options: DemoOptions, timing: Timing, console: "Console"
) -> list[tuple["CallView", Path | None]]:
    """The calls in this process: FailoverTTSService, and ServiceSwitcher with ``--compare``."""
    from pipecat_tts_failover.demo.call import FAILOVER, SAMPLE_RATE, SWITCHER, Endpoints, run_call
    from pipecat_tts_failover.demo.timeline import CallTimeline
    from pipecat_tts_failover.recovery import close_recovery

    kinds = [(FAILOVER, "FailoverTTSService", "demo.wav")]
    if options.compare:
        kinds.append((SWITCHER, "ServiceSwitcher", "demo-switcher.wav"))
    async with contextlib.AsyncExitStack() as stack:
        with console.status("Starting the Cartesia and ElevenLabs emulators…"):
            pairs = [await stack.enter_async_context(emulators(timing)) for _ in kinds]
        with console.status("Connecting to Redis…" if options.redis_url else "Preparing…"):
            store = await stack.enter_async_context(open_store(options))
        # The probes use the store: stop them before it closes.
        stack.push_async_callback(close_recovery)
        timelines = [CallTimeline(label, SCRIPT, timing, SAMPLE_RATE) for _, label, _ in kinds]
        live = live_view({t.label: t.view for t in timelines}, console, timing.speed)
        with live:
            async with asyncio.TaskGroup() as group:
                for (kind, _, _), timeline, (cartesia, elevenlabs) in zip(kinds, timelines, pairs):
                    group.create_task(
                        run_call(
                            kind,
                            Endpoints.of(cartesia, elevenlabs),
                            timeline,
                            timing,
                            store=store if kind == FAILOVER else None,
                            before_turn=breaker(cartesia, options.fault, timeline.event),
                        )
                    )
    results = []
    for timeline, (_, _, wav) in zip(timelines, kinds):
        results.append((timeline.view(), timeline.write_wav(options.out / wav)))
    return results


async def _write_outputs(
    options: DemoOptions,
    console: "Console",
    results: list[tuple["CallView", Path | None]],
    settings: list[str],
) -> DemoResult:
    from pipecat_tts_failover.demo.plot import write_png
    from pipecat_tts_failover.demo.render import print_summary, settings_text
    from pipecat_tts_failover.demo.timeline import TimeOrigin

    views = [view for view, _ in results]
    png = options.out / PNG_NAME
    with console.status("Drawing the timeline…"):
        await asyncio.to_thread(
            write_png,
            views,
            png,
            title=demo_title(options.fault),
            subtitle=settings_text(settings),
            origin=TimeOrigin.of(views, options.speed),
        )
    files = [wav for _, wav in results if wav is not None] + [png, options.out / LOG_NAME]
    if options.workers > 1:
        from pipecat_tts_failover.demo.fleet import worker_logs

        files += worker_logs(options)
    print_summary(console, results, files, options.out)
    return DemoResult(results, png, files, settings)
