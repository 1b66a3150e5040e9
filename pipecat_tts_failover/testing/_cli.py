"""The ``emulate`` command's emulator options, and what it prints about a running emulator."""

import argparse
import json

from pipecat_tts_failover.testing._server import SCALE_PLAN_CONCURRENCY, Emulator
from pipecat_tts_failover.testing.cartesia import DEFAULT_IDLE_TIMEOUT_S, CartesiaEmulator
from pipecat_tts_failover.testing.elevenlabs import (
    DEFAULT_INACTIVITY_TIMEOUT_S,
    MAX_CONTEXTS_PER_SOCKET,
    MAX_INACTIVITY_TIMEOUT_S,
    ElevenLabsEmulator,
)

__all__ = ["add_limit_options", "build_emulator", "describe"]


def _limit(text: str) -> int | None:
    """argparse type: an int >= 1, or ``none`` for no limit."""
    if text.strip().lower() == "none":
        return None
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1 or 'none', got {text!r}")
    return int(text)


def _seconds(text: str) -> float | None:
    """argparse type: seconds > 0, or ``none`` for never."""
    if text.strip().lower() == "none":
        return None
    try:
        seconds = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected seconds or 'none', got {text!r}") from None
    if not seconds > 0:
        raise argparse.ArgumentTypeError(f"expected seconds > 0, got {text!r}")
    return seconds


def _ids(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def add_limit_options(parser: argparse.ArgumentParser):
    """Add the options for the real services' own limits and checks to ``emulate``."""
    group = parser.add_argument_group(
        "the real services' own limits (on by default, as on the real service)"
    )
    group.add_argument(
        "--concurrency-limit",
        type=_limit,
        default=SCALE_PLAN_CONCURRENCY,
        metavar="N|none",
        help=(
            "plan concurrency: Cartesia contexts, ElevenLabs HTTP requests at once; past it, "
            f"429 (default: {SCALE_PLAN_CONCURRENCY}, the Scale plan of both)"
        ),
    )
    group.add_argument(
        "--idle-timeout",
        type=_seconds,
        default=DEFAULT_IDLE_TIMEOUT_S,
        metavar="S|none",
        help=f"cartesia: close a WebSocket idle this long (default: {DEFAULT_IDLE_TIMEOUT_S:g})",
    )
    group.add_argument(
        "--inactivity-timeout",
        type=_seconds,
        default=DEFAULT_INACTIVITY_TIMEOUT_S,
        metavar="S|none",
        help=(
            "elevenlabs: close a WebSocket without text this long, unless its URL says "
            f"(default: {DEFAULT_INACTIVITY_TIMEOUT_S:g}, at most {MAX_INACTIVITY_TIMEOUT_S:g})"
        ),
    )
    group.add_argument(
        "--max-contexts",
        type=_limit,
        default=MAX_CONTEXTS_PER_SOCKET,
        metavar="N|none",
        help=f"elevenlabs: open contexts per socket (default: {MAX_CONTEXTS_PER_SOCKET})",
    )
    group.add_argument(
        "--character-quota",
        type=_limit,
        default=None,
        metavar="N|none",
        help="elevenlabs: the account's credits, a character each; then quota_exceeded "
        "(default: none)",
    )
    group.add_argument(
        "--voices",
        type=_ids,
        default=None,
        metavar="ID,ID",
        help="the voice ids accepted (default: any)",
    )


def build_emulator(args: argparse.Namespace) -> Emulator:
    """The emulator the ``emulate`` arguments describe (not started).

    Raises:
        ValueError: If an option is out of the provider's range.
    """
    common = {
        "host": args.host,
        "port": args.port,
        "api_key": args.api_key,
        "fault": args.fault,
        "speed": args.speed,
        "concurrency_limit": args.concurrency_limit,
        "voices": args.voices,
    }
    if args.provider == "cartesia":
        return CartesiaEmulator(idle_timeout=args.idle_timeout, **common)
    return ElevenLabsEmulator(
        inactivity_timeout=args.inactivity_timeout,
        max_contexts_per_socket=args.max_contexts,
        character_quota=args.character_quota,
        **common,
    )


def describe(emulator: Emulator) -> str:
    """What ``emulate`` prints once listening: the URLs, each client's arguments, the control.

    The first line is stable: ``<provider> emulator listening on HTTP and WS (fault: F)``.
    """
    first = (
        f"{emulator.provider} emulator listening on {emulator.http_url} and {emulator.ws_url}"
        f" (fault: {emulator.fault or 'none'})"
    )
    lines = [first, "point your clients at it with:"]
    lines += [f"  {client}({arguments}, ...)" for client, arguments in emulator.clients.items()]
    example = json.dumps({"fault": "hang"})
    lines += [
        "change the fault while it runs:",
        f"  curl -X POST {emulator.control_url} -d '{example}'",
        f"  curl -X DELETE {emulator.control_url}",
    ]
    return "\n".join(lines)
