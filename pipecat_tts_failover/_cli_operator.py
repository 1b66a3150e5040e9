"""The operator subcommands: status, mark-down, mark-up, pin, unpin, failover, reset.

Each opens a RedisHealthStore on ``--redis-url`` and calls the matching
function of :mod:`pipecat_tts_failover.operator`. A provider no worker has
registered is refused (exit status 2, with the registered ones listed) unless
``--force`` is given.
"""

import argparse
import asyncio
import datetime
import json
import sys
import time

from pipecat_tts_failover.errors import HealthStoreError

_CONNECT_TIMEOUT = 3.0
# The status table: a provider's state, then the fleet's evidence about it: failed
# attempts in a row, failed/all attempts in the health policy's window (as of the
# last attempt), and recent ejections (each one lengthens the next).
_COLUMNS = ("provider", "state", "reason", "since", "left", "in a row", "failed", "ejections")


def add_operator_commands(subparsers: argparse._SubParsersAction):
    """Add the operator subcommands to the ``pipecat-tts-failover`` parser."""

    def command(name: str, help: str, run) -> argparse.ArgumentParser:
        parser = subparsers.add_parser(name, help=help, description=help)
        parser.add_argument(
            "--redis-url", required=True, help="the fleet's Redis, e.g. redis://redis:6379/0"
        )
        parser.add_argument(
            "--key-prefix", default="tts-failover", help="key prefix (default: tts-failover)"
        )
        parser.set_defaults(handler=lambda args: _run(args, run))
        return parser

    def force(parser: argparse.ArgumentParser):
        parser.add_argument(
            "--force",
            action="store_true",
            help="accept a provider id no worker has registered yet",
        )

    parser = command("status", "show every provider's health and the operator controls", _status)
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument(
        "--providers",
        help="comma-separated provider ids (default: every provider the workers registered)",
    )
    parser = command("mark-down", "take a provider out of new calls", _mark_down)
    parser.add_argument("provider")
    parser.add_argument("--cooldown", type=_seconds, default=600.0, help="seconds (default: 600)")
    force(parser)
    parser = command("mark-up", "put a provider back into new calls", _mark_up)
    parser.add_argument("provider")
    force(parser)
    parser = command("pin", "start every new call on one provider", _pin)
    parser.add_argument("provider")
    force(parser)
    command("unpin", "let new calls start on the preferred healthy provider", _unpin)
    parser = command("failover", "the kill switch: turn failover on or off", _failover)
    parser.add_argument("state", choices=("on", "off"))
    parser = command("reset", "mark every provider up and clear pin and kill switch", _reset)
    parser.add_argument("--providers", help="comma-separated provider ids (default: all known)")
    force(parser)


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected seconds, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive number of seconds, got {text}")
    return value


def _run(args: argparse.Namespace, run) -> int:
    try:
        from pipecat_tts_failover.store.redis import RedisHealthStore, mask_url
    except ImportError as e:
        print(f"pipecat-tts-failover: {e}", file=sys.stderr)
        return 1
    try:
        store = RedisHealthStore(args.redis_url, key_prefix=args.key_prefix)
    except (TypeError, ValueError) as e:
        print(f"pipecat-tts-failover: {e}", file=sys.stderr)
        return 2

    async def main() -> int:
        try:
            if not await store.connect(timeout=_CONNECT_TIMEOUT):
                print(
                    f"pipecat-tts-failover: cannot reach Redis at {mask_url(args.redis_url)}",
                    file=sys.stderr,
                )
                return 1
            return await run(store, args)
        except (HealthStoreError, ValueError) as e:
            if _is_unknown_provider(e):
                print(f"pipecat-tts-failover: {e}\n(--force to use it anyway)", file=sys.stderr)
                return 2
            print(f"pipecat-tts-failover: {e}", file=sys.stderr)
            return 1
        finally:
            await store.close()

    return asyncio.run(main())


def _operator():
    """The operator API, imported once the command line has set up logging.

    Importing it imports pipecat, which logs a banner on first import.
    """
    from pipecat_tts_failover import operator

    return operator


def _is_unknown_provider(error: Exception) -> bool:
    operator = sys.modules.get("pipecat_tts_failover.operator")
    return operator is not None and isinstance(error, operator.UnknownProviderError)


def _normalized(provider_id: str) -> str:
    from pipecat_tts_failover.providers import normalize_provider_id

    return normalize_provider_id(provider_id)


async def _note_unregistered(store, provider_id: str):
    """With --force: say that no call uses the provider yet."""
    if provider_id not in await store.registered_providers():
        print(
            f"note: no worker has registered {provider_id!r}; calls use it once one does",
            file=sys.stderr,
        )


def _ids(text: str | None) -> list[str] | None:
    return [p for p in (text or "").split(",") if p.strip()] or None


async def _status(store, args) -> int:
    fleet = await _operator().status(store, _ids(args.providers))
    if args.json:
        print(json.dumps(_as_json(fleet), indent=2))
        return 0
    now = time.time()
    rows = []
    for h in fleet.providers:
        down = h.down_until is not None
        rows.append(
            (
                h.provider_id,
                "down" if down else "up",
                str(h.reason) if down and h.reason else "",
                _when(h.since) if down else "",
                f"{max(0.0, h.down_until - now):.0f}s" if down else "",
                str(h.failures),
                f"{h.window_failures}/{h.attempts}",
                str(h.ejections),
            )
        )
    controls = fleet.controls
    pinned = controls.pinned or "-"
    if controls.pinned and controls.pinned not in fleet.registered:
        pinned += " (no worker has registered it)"
    footer = (
        f"pinned: {pinned}   failover: {'on' if controls.failover_enabled else 'OFF (kill switch)'}"
    )
    unregistered = [h.provider_id for h in fleet.providers if h.provider_id not in fleet.registered]
    if not fleet.registered:
        footer += "\nno worker has registered its providers yet"
    elif unregistered:
        footer += f"\nnot registered by any worker: {', '.join(unregistered)}"
    _print_table(_COLUMNS, rows, footer)
    return 0


def _as_json(fleet) -> dict:
    return {
        "providers": [
            {
                "provider": h.provider_id,
                "state": "down" if h.down_until is not None else "up",
                "reason": str(h.reason) if h.reason else None,
                "since": h.since,
                "down_until": h.down_until,
                "failures": h.failures,
                "attempts": h.attempts,
                "window_failures": h.window_failures,
                "ejections": h.ejections,
                "registered": h.provider_id in fleet.registered,
            }
            for h in fleet.providers
        ],
        "registered": fleet.registered,
        "pinned": fleet.controls.pinned,
        "failover_enabled": fleet.controls.failover_enabled,
    }


def _when(epoch: float | None) -> str:
    if epoch is None:
        return ""
    return datetime.datetime.fromtimestamp(epoch, datetime.UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def _print_table(header, rows, footer: str):
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:
        widths = [max(len(str(c)) for c in col) for col in zip(header, *rows)]
        for row in (header, *rows):
            print("  ".join(str(c).ljust(w) for c, w in zip(row, widths)).rstrip())
        print(footer)
        return
    table = Table(title="TTS providers", caption=footer)
    for name in header:
        table.add_column(name)
    for row in rows:
        style = "red" if row[1] == "down" else "green"
        table.add_row(*row, style=style)
    Console().print(table)


async def _mark_down(store, args) -> int:
    changed = await _operator().mark_down(
        store, args.provider, cooldown=args.cooldown, force=args.force
    )
    pid = _normalized(args.provider)
    print(f"{pid}: {'marked down' if changed else 'already down'} for {args.cooldown:g}s")
    await _note_unregistered(store, pid)
    return 0


async def _mark_up(store, args) -> int:
    changed = await _operator().mark_up(store, args.provider, force=args.force)
    pid = _normalized(args.provider)
    print(f"{pid}: {'marked up' if changed else 'already up'}")
    await _note_unregistered(store, pid)
    return 0


async def _pin(store, args) -> int:
    await _operator().pin(store, args.provider, force=args.force)
    pid = _normalized(args.provider)
    print(f"new calls start on {pid}")
    await _note_unregistered(store, pid)
    return 0


async def _unpin(store, args) -> int:
    await _operator().unpin(store)
    print("new calls start on the preferred healthy provider")
    return 0


async def _failover(store, args) -> int:
    await _operator().set_failover(store, enabled=args.state == "on")
    print(f"failover {args.state}")
    return 0


async def _reset(store, args) -> int:
    was_down = await _operator().reset(store, _ids(args.providers), force=args.force)
    print(f"reset: marked up {', '.join(was_down) or 'nothing'}; pin and kill switch cleared")
    return 0
