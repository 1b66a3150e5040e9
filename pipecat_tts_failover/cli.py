"""The ``pipecat-tts-failover`` command line: one argparse subcommand per task.

Subcommands:
    emulate   run a local Cartesia or ElevenLabs emulator until Ctrl-C / SIGTERM
    demo      a call that survives a TTS outage, shown live (needs the [demo] extra)
    status, mark-down, mark-up, pin, unpin, failover, reset
              operator controls over a fleet's Redis health store

Add a subcommand by writing an ``_add_<name>(subparsers)`` function that
creates its parser and sets ``handler`` (``(argparse.Namespace) -> int``) with
``set_defaults``, and listing it in ``_SUBCOMMANDS``.

Example::

    pipecat-tts-failover emulate cartesia --port 8123 --fault slow-ttfb:800
    python -m pipecat_tts_failover.cli emulate elevenlabs --fault error%3
"""

import argparse
import asyncio
import contextlib
import signal
import sys
from collections.abc import Callable, Sequence

from loguru import logger

__all__ = ["build_parser", "main"]

_PROVIDERS = ("cartesia", "elevenlabs")


def _fault_argument(text: str):
    """argparse type for ``--fault``: a parsed Fault, or a usage error naming the problem."""
    from pipecat_tts_failover.testing.faults import Fault

    try:
        return Fault.parse(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _port_argument(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"port must be an integer, got {text!r}") from None
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"port must be in 0..65535, got {port}")
    return port


def _speed_argument(text: str) -> float:
    try:
        speed = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"speed must be a number, got {text!r}") from None
    if not speed > 0:
        raise argparse.ArgumentTypeError(f"speed must be > 0, got {text}")
    return speed


def _add_emulate(subparsers: argparse._SubParsersAction):
    parser = subparsers.add_parser(
        "emulate",
        help="run a local TTS provider emulator",
        description=(
            "Serve the provider's real WebSocket and HTTP API on 127.0.0.1 until Ctrl-C or "
            "SIGTERM. Point a client at it by changing only its base URL."
        ),
        epilog=(
            "Faults are KIND[:VALUE][@N|%K]: reject-401, reject-429, reject-503, error[:MS], "
            "close-1011[:MS], hang, stall[:MS], zeros, empty, slow-ttfb[:MS], slow-drip[:X], "
            "flap, quota-exceeded. @N applies to the N-th request only, %K to every K-th. "
            "Example: --fault slow-ttfb:800, --fault error@3, --fault hang%2. Change it while "
            'running: POST {"fault": "..."} (or null) to /_control/fault.'
        ),
    )
    parser.add_argument("provider", choices=_PROVIDERS, help="which provider to emulate")
    parser.add_argument(
        "--port", type=_port_argument, default=0, help="TCP port (default: 0, a free one)"
    )
    parser.add_argument("--host", default="127.0.0.1", help="interface (default: 127.0.0.1)")
    parser.add_argument(
        "--fault", type=_fault_argument, default=None, help="a fault to inject (see below)"
    )
    parser.add_argument(
        "--api-key", default="test-key", help="the API key clients must send (default: test-key)"
    )
    parser.add_argument(
        "--speed",
        type=_speed_argument,
        default=4.0,
        help="times faster than real time to stream audio (default: 4, as providers stream)",
    )
    parser.add_argument(
        "--log-level", default="INFO", help="loguru level for the emulator's log (default: INFO)"
    )
    from pipecat_tts_failover.testing._cli import add_limit_options

    add_limit_options(parser)
    parser.set_defaults(handler=_run_emulate)


def _add_operator(subparsers: argparse._SubParsersAction):
    from pipecat_tts_failover._cli_operator import add_operator_commands

    add_operator_commands(subparsers)


def _add_demo(subparsers: argparse._SubParsersAction):
    parser = subparsers.add_parser(
        "demo",
        help="watch a call keep talking through a TTS outage",
        description=(
            "Play a support call through FailoverTTSService around pipecat's Cartesia and "
            "ElevenLabs services, pointed at local emulators; break Cartesia mid-call, fix it "
            "later, and show what the caller heard. Writes demo.wav, demo-timeline.png and "
            'demo.log. Needs: pip install "pipecat-tts-failover[demo]".'
        ),
        epilog="Faults: see 'pipecat-tts-failover emulate --help'.",
    )
    parser.add_argument(
        "--fault",
        type=_fault_argument,
        default="hang",
        help="what goes wrong with Cartesia (default: hang), e.g. error, stall, zeros, reject-401",
    )
    parser.add_argument("--out", default=".", help="directory for the files (default: .)")
    parser.add_argument(
        "--compare", action="store_true", help="also run pipecat's ServiceSwitcher, side by side"
    )
    parser.add_argument("--redis-url", help="keep provider health in this Redis")
    parser.add_argument(
        "--workers", type=int, default=1, help="worker processes sharing --redis-url (default: 1)"
    )
    parser.add_argument("--speed", type=_speed_argument, default=1.0, help=argparse.SUPPRESS)
    parser.set_defaults(handler=_run_demo)


def _run_demo(args: argparse.Namespace) -> int:
    from pipecat_tts_failover.demo.run import main as run_demo

    return run_demo(args)


_SUBCOMMANDS: tuple[Callable[[argparse._SubParsersAction], None], ...] = (
    _add_emulate,
    _add_demo,
    _add_operator,
)


def build_parser() -> argparse.ArgumentParser:
    """Build the ``pipecat-tts-failover`` argument parser with every subcommand.

    Returns:
        The parser.
    """
    parser = argparse.ArgumentParser(
        prog="pipecat-tts-failover",
        description="Tools for pipecat-tts-failover: provider emulators and more.",
    )
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in _SUBCOMMANDS:
        add(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line.

    Args:
        argv: Arguments without the program name; None reads ``sys.argv``.

    Returns:
        The exit status: 0 on success, 1 on a runtime failure, 2 on a usage error.
    """
    args = build_parser().parse_args(argv)
    if args.command != "emulate":
        # Operator commands print their own results; library logs (pipecat's
        # banner, the store's reconnect warnings) would only get in the way.
        logger.remove()
        logger.add(sys.stderr, level="ERROR")
    return args.handler(args)


def _run_emulate(args: argparse.Namespace) -> int:
    logger.remove()
    logger.add(sys.stderr, level=args.log_level.upper())
    try:
        return asyncio.run(_emulate(args))
    except KeyboardInterrupt:  # no signal handlers on this platform
        return 0


async def _emulate(args: argparse.Namespace) -> int:
    from pipecat_tts_failover.testing._cli import build_emulator, describe

    try:
        emulator = build_emulator(args)
    except ValueError as e:
        print(f"pipecat-tts-failover emulate: {e}", file=sys.stderr)
        return 2
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(signum, stop.set)
    try:
        await emulator.start()
    except OSError as e:
        print(
            f"pipecat-tts-failover: cannot listen on {args.host}:{args.port}: {e}", file=sys.stderr
        )
        return 1
    try:
        print(describe(emulator), flush=True)
        await stop.wait()
    finally:
        await emulator.stop()
    print(f"{args.provider} emulator stopped", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
