"""``demo --workers N``: calls in worker processes that share provider health through Redis.

The demo owns the emulators. Worker 1's call breaks the primary (the demo
breaks and fixes the emulator when worker 1 reaches those turns); once worker
1 has marked the primary down in Redis, the other workers start their calls,
and start them on the backup.
"""

import asyncio
import contextlib
import json
import sys
from dataclasses import asdict
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from loguru import logger

from pipecat_tts_failover.demo.call import Endpoints
from pipecat_tts_failover.demo.script import FIX_BEFORE_TURN, Timing
from pipecat_tts_failover.demo.stage import (
    REDIS_KEY_PREFIX,
    DemoError,
    DemoOptions,
    breaker,
    emulators,
    live_view,
    open_store,
)
from pipecat_tts_failover.demo.timeline import CallView

if TYPE_CHECKING:
    from rich.console import Console

_READY_TIMEOUT = 60.0
_QUIT_TIMEOUT = 3.0
_LINE_LIMIT = 16 * 1024 * 1024


class _Worker:
    """One worker process, seen from the demo."""

    def __init__(self, number: int, out: Path):
        self.number = number
        self.name = f"worker {number}"
        self.wav = out / f"demo-worker-{number}.wav"
        self.log = out / f"demo-worker-{number}.log"
        self.view: CallView | None = None
        self.call_started = asyncio.Event()
        self._process: asyncio.subprocess.Process | None = None
        self._log_file: IO[bytes] | None = None

    async def start(self, config: dict[str, Any]):
        self._log_file = await asyncio.to_thread(open, self.log, "wb")  # closed in stop()
        self._process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "pipecat_tts_failover.demo.worker",
            json.dumps(config | {"name": self.name, "wav": str(self.wav)}),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=self._log_file,
            limit=_LINE_LIMIT,
        )
        logger.info(f"demo: {self.name} started as process {self._process.pid}")

    async def send(self, message: dict[str, Any]):
        assert self._process is not None and self._process.stdin is not None
        self._process.stdin.write((json.dumps(message) + "\n").encode())
        await self._process.stdin.drain()

    async def receive(self) -> dict[str, Any]:
        """The worker's next message; an error message becomes a DemoError."""
        assert self._process is not None and self._process.stdout is not None
        while True:
            line = await self._process.stdout.readline()
            if not line:
                raise DemoError(f"{self.name} exited unexpectedly; see {self.log}")
            try:
                message = json.loads(line)
                break
            except ValueError:
                logger.debug(f"demo: {self.name} printed {line[:200]!r}")
        if message.get("type") == "error":
            raise DemoError(f"{self.name}: {message.get('message')} (see {self.log})")
        return message

    async def ready(self):
        message = await self.receive()
        if message.get("type") != "ready":
            raise DemoError(f"{self.name} said {message!r} instead of ready; see {self.log}")

    async def stop(self):
        """Ask the worker to quit, then terminate it, then kill it. Safe to call twice."""
        process, self._process = self._process, None
        if process is not None and process.returncode is None:
            assert process.stdin is not None
            with contextlib.suppress(ConnectionError):
                process.stdin.write(b'{"type": "quit"}\n')
                await process.stdin.drain()
                process.stdin.close()
            for end, wait in (
                (None, _QUIT_TIMEOUT),
                (process.terminate, 3.0),
                (process.kill, None),
            ):
                if end is not None:
                    logger.warning(
                        f"demo: {self.name} (process {process.pid}) still running: {end.__name__}"
                    )
                    with contextlib.suppress(ProcessLookupError):
                        end()
                try:
                    async with asyncio.timeout(wait):
                        await process.wait()
                    break
                except TimeoutError:
                    continue
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None


async def run_fleet(
    options: DemoOptions, timing: Timing, console: "Console"
) -> list[tuple[CallView, Path | None]]:
    """Run the calls of ``options.workers`` worker processes sharing ``options.redis_url``.

    Returns:
        Each worker's call and its WAV.

    Raises:
        DemoError: Redis is unreachable or a worker failed.
    """
    with console.status("Connecting to Redis…"):
        async with open_store(options):
            pass  # reachable, and the demo's providers reset
    async with contextlib.AsyncExitStack() as stack:
        with console.status("Starting the Cartesia and ElevenLabs emulators…"):
            cartesia, elevenlabs = await stack.enter_async_context(emulators(timing))
        config = {
            "redis_url": options.redis_url,
            "key_prefix": REDIS_KEY_PREFIX,
            "endpoints": asdict(Endpoints.of(cartesia, elevenlabs)),
            "speed": options.speed,
        }
        workers = [_Worker(n, options.out) for n in range(1, options.workers + 1)]
        with console.status(f"Starting {len(workers)} worker processes…"):
            for worker in workers:
                stack.push_async_callback(worker.stop)
                await worker.start(config)
            try:
                async with asyncio.timeout(_READY_TIMEOUT):
                    await asyncio.gather(*(worker.ready() for worker in workers))
            except TimeoutError:
                raise DemoError(f"the workers were not ready within {_READY_TIMEOUT:g} s") from None
        with live_view({w.name: (lambda w=w: w.view) for w in workers}, console, options.speed):
            await _drive(workers, cartesia, options)
    return [(worker.view, worker.wav) for worker in workers if worker.view is not None]


def worker_logs(options: DemoOptions) -> list[Path]:
    """The workers' log files."""
    return [_Worker(n, options.out).log for n in range(1, options.workers + 1)]


async def _drive(workers: list[_Worker], cartesia, options: DemoOptions):
    """Worker 1 calls and breaks the primary; the others call once it is marked down."""
    first, others = workers[0], workers[1:]
    others_called = False

    async def call_others():
        nonlocal others_called
        if not others_called:
            others_called = True
            for worker in others:
                await worker.send({"type": "call"})

    async def serve(worker: _Worker):
        notes: list[list[str]] = []
        hook = breaker(cartesia, options.fault, lambda kind, text: notes.append([kind, text]))
        while True:
            message = await worker.receive()
            kind = message.get("type")
            if kind in ("view", "done"):
                worker.view = CallView.from_json(message["view"])
                if worker.view.first_provider is not None:
                    worker.call_started.set()
                if worker is first and any(e.kind == "down" for e in worker.view.events):
                    await call_others()
                if kind == "done":
                    if worker is first:
                        await call_others()  # the primary never went down: call anyway
                    return
            elif kind == "turn":
                notes.clear()
                if worker is first:
                    if message["turn"] == FIX_BEFORE_TURN:
                        # The other calls start while the primary is still broken.
                        await call_others()
                        await _started(others)
                    await hook(message["turn"])
                await worker.send({"type": "go", "event": notes[0] if notes else None})

    async def _started(workers: list[_Worker]):
        try:
            async with asyncio.timeout(_READY_TIMEOUT):
                await asyncio.gather(*(w.call_started.wait() for w in workers))
        except TimeoutError:
            raise DemoError(
                f"the other workers' calls did not start in {_READY_TIMEOUT:g} s"
            ) from None

    await first.send({"type": "call"})
    async with asyncio.TaskGroup() as group:
        for worker in workers:
            group.create_task(serve(worker), name=f"demo::{worker.name}")
