"""The frames FailoverTTSService holds back, in order, while one ahead of them waits.

FailoverTTSService runs in pipecat's direct mode, as pipecat's own pipelines
and service switcher do: a frame is processed in the task that pushed it, so a
sentence reaches its provider's service as soon as it would bare, and the
processor keeps no task or queue of its own on a healthy call. A frame that
has to wait is put in the backlog instead, so the push that brought it
returns at once: the end of the call (it waits until everything is spoken), a
reply whose provider must be started or the store read first, anything that
comes while a failover holds the relay, before the call has started or while
the processor is paused. Every data frame after it joins it there, in order.
The backlog's task, made when its first frame comes and gone when its last is
done, processes them one by one.

System frames go ahead of the frames queued, as in any pipecat processor:
they have a backlog of their own, where they wait, in order, only while the
relay is held. An interruption drops the data frames waiting and cancels the
one being processed, except those that are not interruptible, as pipecat's
own queues do.
"""

import asyncio
from collections.abc import Awaitable, Callable

from pipecat.frames.frames import Frame
from pipecat.processors.frame_processor import FrameCallback, FrameDirection

Process = Callable[[Frame, FrameDirection, FrameCallback | None], Awaitable[None]]


class FrameBacklog:
    """Frames waiting their turn, and the task that processes them, made only when needed.

    Args:
        process: Processes one frame (with its direction and callback).
        spawn: Starts a task owned by the processor.
        cancel: Cancels and awaits such a task.
        name: The task's name.
    """

    def __init__(
        self,
        process: Process,
        spawn: Callable[[Awaitable[None], str], asyncio.Task],
        cancel: Callable[[asyncio.Task], Awaitable[None]],
        name: str,
    ):
        self._process = process
        self._spawn = spawn
        self._cancel = cancel
        self._name = name
        self._frames: list[tuple[Frame, FrameDirection, FrameCallback | None]] = []
        self._task: asyncio.Task | None = None
        # The frame the task is processing now.
        self._current: Frame | None = None
        # Held until the call's StartFrame has been processed, and while paused.
        self._started = False
        self._paused = False

    @property
    def idle(self) -> bool:
        """Whether a frame may be processed at once: nothing waits, nothing is held."""
        return self._task is None and self._started and not self._paused and not self._frames

    def add(self, frame: Frame, direction: FrameDirection, callback: FrameCallback | None):
        """Queue a frame behind those waiting; it is processed when its turn comes."""
        self._frames.append((frame, direction, callback))
        self._run_if_due()

    def start(self):
        """The call started: frames that came before it are processed."""
        self._started = True
        self._run_if_due()

    def pause(self):
        """Hold the frames from now on (a pause frame for this processor)."""
        self._paused = True

    def resume(self):
        """Process the frames held by :meth:`pause`."""
        self._paused = False
        self._run_if_due()

    async def interrupt(self):
        """Drop the interruptible frames waiting, and the one being processed if interruptible."""
        self._frames = [item for item in self._frames if not item[0].interruptible]
        current = self._current
        if self._task is not None and (current is None or current.interruptible):
            await self._stop_task()
            self._run_if_due()

    async def cancel(self):
        """Drop every frame and stop the task (the call was cancelled or is torn down)."""
        self._frames.clear()
        await self._stop_task()

    async def _stop_task(self):
        task, self._task = self._task, None
        self._current = None
        if task is not None:
            await self._cancel(task)

    def _run_if_due(self):
        if self._task is None and self._frames and self._started and not self._paused:
            self._task = self._spawn(self._run(), self._name)

    async def _run(self):
        try:
            while self._frames and not self._paused:
                frame, direction, callback = self._frames.pop(0)
                self._current = frame
                await self._process(frame, direction, callback)
                self._current = None
        finally:
            if self._task is asyncio.current_task():
                self._task = None
                self._current = None
