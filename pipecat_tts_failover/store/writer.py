"""StoreWriter: health-store writes made from a background task, never on the audio path."""

import asyncio
from collections.abc import Awaitable, Callable

from loguru import logger

Write = Callable[[], Awaitable[object]]


class StoreWriter:
    """Runs store writes one at a time in a task of its own, behind a bounded queue.

    The task lives only while writes are queued: a call that writes once a
    sentence holds no task between its writes (at 500 calls a worker would
    otherwise keep 500 idle tasks). A full queue drops the newest
    write with a warning rather than wait: the audio path never waits on the
    store.

    Args:
        name: Used in log lines.
        max_pending: Writes held before new ones are dropped.
        timeout: Seconds one write may take before it is abandoned.
    """

    def __init__(self, name: str, *, max_pending: int = 256, timeout: float = 2.0):
        self._name = name
        # A list, not a deque: a call queues a write or two at a time, and an
        # empty deque holds a 64-slot block (about 600 bytes) for every call.
        self._pending: list[Write] = []
        self._max_pending = max_pending
        self._timeout = timeout
        self._task: asyncio.Task | None = None
        # Between start() and stop(): writes run as they come.
        self._running = False

    def start(self):
        """Run queued writes, and those to come, until :meth:`stop` (idempotent)."""
        self._running = True
        self._run_pending()

    def submit(self, write: Write):
        """Queue a write; drops it with a warning if the queue is full."""
        if len(self._pending) >= self._max_pending:
            logger.warning(f"{self._name}: health store is falling behind, dropping a write")
            return
        self._pending.append(write)
        self._run_pending()

    async def drain(self, timeout: float):
        """Wait up to ``timeout`` seconds for queued writes to finish."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while (task := self._task) is not None:
            remaining = deadline - loop.time()
            if remaining <= 0:
                logger.warning(f"{self._name}: health store writes still pending after {timeout}s")
                return
            # wait(), not wait_for(): the writes go on if the drain gives up.
            await asyncio.wait({task}, timeout=remaining)

    async def stop(self):
        """Stop running writes (what is queued is dropped) and wait for the task. Safe to call twice."""
        self._running = False
        self._pending.clear()
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                pass

    def _run_pending(self):
        if self._task is not None and self._task.done():
            self._task = None  # cancelled by someone else (the loop shutting down)
        if self._running and self._task is None and self._pending:
            self._task = asyncio.create_task(self._run(), name=f"{self._name}::store-writer")

    async def _run(self):
        pending = self._pending
        while pending:
            write = pending.pop(0)
            try:
                async with asyncio.timeout(self._timeout):
                    await write()
            except Exception as e:  # noqa: BLE001 - a failed write is logged, never fatal
                logger.warning(f"{self._name}: health store write failed: {e}")
        # Nothing queued: the task ends, and the next write starts another.
        self._task = None
