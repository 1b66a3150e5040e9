"""What every demo run stands on: its options and errors, the emulators, the store, the breaker, the live view.

``run`` (the command, calls in this process) and ``fleet`` (``--workers N``)
both build on these; ``run`` hands over to ``fleet``, which imports nothing
from ``run``.
"""

import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from pipecat_tts_failover.demo.script import (
    BACKUP,
    BREAK_BEFORE_TURN,
    FIX_BEFORE_TURN,
    PRIMARY,
    Timing,
    sentences,
)
from pipecat_tts_failover.testing.faults import Fault

if TYPE_CHECKING:
    from rich.console import Console

    from pipecat_tts_failover.demo.timeline import CallView
    from pipecat_tts_failover.store.base import HealthStore

REDIS_KEY_PREFIX = "tts-failover-demo"
_REDIS_CONNECT_TIMEOUT = 3.0
_REFRESH_PER_SECOND = 8


class DemoError(Exception):
    """The demo cannot go on: a message for the user and an exit status."""

    def __init__(self, message: str, status: int = 1):
        super().__init__(message)
        self.status = status


@dataclass(frozen=True, slots=True)
class DemoOptions:
    """What the command line asked for.

    Parameters:
        fault: What goes wrong with the primary.
        out: Where the files go.
        compare: Also run pipecat's ServiceSwitcher on the same script.
        redis_url: A Redis to keep provider health in; None keeps it in memory.
        workers: Worker processes sharing that Redis (more than 1 needs ``redis_url``).
        speed: How many times faster than real time the calls run.
    """

    fault: Fault
    out: Path
    compare: bool = False
    redis_url: str | None = None
    workers: int = 1
    speed: float = 1.0


@contextlib.asynccontextmanager
async def emulators(timing: Timing) -> AsyncIterator[tuple]:
    """A started CartesiaEmulator and ElevenLabsEmulator on free ports of 127.0.0.1."""
    from pipecat_tts_failover.testing import CartesiaEmulator, ElevenLabsEmulator

    cartesia = CartesiaEmulator(speed=timing.speed, ms_per_char=timing.ms_per_char)
    elevenlabs = ElevenLabsEmulator(speed=timing.speed, ms_per_char=timing.ms_per_char)
    async with cartesia, elevenlabs:
        yield cartesia, elevenlabs


@contextlib.asynccontextmanager
async def open_store(options: DemoOptions) -> AsyncIterator["HealthStore"]:
    """The calls' health store: in memory, or Redis (checked, and reset for the demo's providers).

    Raises:
        DemoError: Redis is unreachable or refuses the reset.
    """
    if options.redis_url is None:
        from pipecat_tts_failover.store import InMemoryHealthStore

        yield InMemoryHealthStore()
        return
    from pipecat_tts_failover import operator
    from pipecat_tts_failover.errors import HealthStoreError
    from pipecat_tts_failover.store.redis import RedisHealthStore, mask_url

    try:
        store = RedisHealthStore(options.redis_url, key_prefix=REDIS_KEY_PREFIX)
    except (TypeError, ValueError) as e:
        raise DemoError(f"--redis-url: {e}", 2) from None
    try:
        if not await store.connect(timeout=_REDIS_CONNECT_TIMEOUT):
            raise DemoError(
                f"cannot reach Redis at {mask_url(options.redis_url)} "
                f"(waited {_REDIS_CONNECT_TIMEOUT:g} s); is it running?"
            )
        try:
            # A run stopped half way may have left the primary marked down.
            await operator.reset(store, [PRIMARY, BACKUP], force=True)
        except HealthStoreError as e:
            raise DemoError(f"Redis refused the demo's reset: {e}") from None
        yield store
    finally:
        await store.close()


def breaker(cartesia, fault: Fault, note: Callable[[str, str], None]):
    """The hook that breaks the primary's emulator before one turn and fixes it before another."""

    async def before_turn(turn: int):
        if turn == BREAK_BEFORE_TURN:
            cartesia.set_fault(fault)
            note("break", f"{PRIMARY} breaks (emulator fault '{fault}')")
        elif turn == FIX_BEFORE_TURN:
            cartesia.clear_fault()
            note("fix", f"{PRIMARY} fixed")

    return before_turn


def live_view(
    sources: dict[str, Callable[[], "CallView | None"]], console: "Console", speed: float
):
    """A rich Live showing each call as it goes.

    Args:
        sources: For each call, a function returning its latest timeline.
        console: Where it is drawn.
        speed: How many times faster than real time the calls run.
    """
    from rich.live import Live

    from pipecat_tts_failover.demo.render import LiveView

    total = len(sentences())
    view = LiveView(sources, [total] * len(sources), console, speed=speed)
    return Live(
        view,
        console=console,
        refresh_per_second=_REFRESH_PER_SECOND,
        vertical_overflow="visible",
    )
