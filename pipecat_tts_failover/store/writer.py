"""StoreWriter: health-store writes made from a background task, never on the audio path."""

import asyncio
from collections.abc import Awaitable, Callable

from loguru import logger

Write = Callable[[], Awaitable[object]]


class StoreWriter:
    """Runs store writes one at a time in a task of its own, behind a bounded queue.

    A full queue drops the newest write with a warning rather than wait: the
    audio path never waits on the store.

    Args:
        name: Used in log lines.
        max_pending: Writes held before new ones are dropped.
        timeout: Seconds one write may take before it is abandoned.
    """

    def __init__(self, name: str, *, max_pending: int = 256, timeout: float = 2.0):
        self._name = name
        self._queue: asyncio.Queue[Write] = asyncio.Queue(maxsize=max_pending)
        self._timeout = timeout
        self._task: asyncio.Task | None = None

    def start(self):
        """Start the writer task (idempotent)."""
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name=f"{self._name}::store-writer")

    def submit(self, write: Write):
        """Queue a write; drops it with a warning if the queue is full."""
        try:
            self._queue.put_nowait(write)
        except asyncio.QueueFull:
            logger.warning(f"{self._name}: health store is falling behind, dropping a write")

    async def drain(self, timeout: float):
        """Wait up to ``timeout`` seconds for queued writes to finish."""
        if self._task is None:
            return
        try:
            async with asyncio.timeout(timeout):
                await self._queue.join()
        except TimeoutError:
            logger.warning(f"{self._name}: health store writes still pending after {timeout}s")

    async def stop(self):
        """Cancel the writer task and wait for it. Safe to call twice."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                pass

    async def _run(self):
        while True:
            write = await self._queue.get()
            try:
                async with asyncio.timeout(self._timeout):
                    await write()
            except Exception as e:  # noqa: BLE001 - a failed write is logged, never fatal
                logger.warning(f"{self._name}: health store write failed: {e}")
            finally:
                self._queue.task_done()
