"""A real pipecat pipeline around one processor, driven step by step by a test."""

import asyncio
from collections.abc import Callable
from typing import Self

from pipecat.frames.frames import EndFrame, Frame, StartFrame, TTSAudioRawFrame, TTSTextFrame
from pipecat.observers.base_observer import BaseObserver, FramePushed
from pipecat.pipeline.pipeline import Pipeline
from pipecat.pipeline.worker import PipelineParams, PipelineWorker
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor
from pipecat.workers.runner import WorkerRunner


class _Recorder(FrameProcessor):
    """Records frames travelling one way and passes everything on."""

    def __init__(
        self,
        direction: FrameDirection,
        frames: list[Frame],
        changed: asyncio.Event,
        on_frame: Callable[[Frame], None] | None = None,
    ):
        super().__init__(enable_direct_mode=True)
        self._direction = direction
        self._frames = frames
        self._changed = changed
        self._on_frame = on_frame

    async def process_frame(self, frame: Frame, direction: FrameDirection):
        await super().process_frame(frame, direction)
        if direction == self._direction and not isinstance(frame, StartFrame):
            if self._on_frame:
                self._on_frame(frame)
            self._frames.append(frame)
            self._changed.set()
        await self.push_frame(frame, direction)


class FirstPushObserver(BaseObserver):
    """Records every frame the first time it is pushed, as RTVI's observer reports frames."""

    def __init__(self):
        super().__init__(observe_every_push=False)
        self.frames: list[Frame] = []

    async def on_push_frame(self, data: FramePushed):
        self.frames.append(data.frame)

    def of(self, *types: type[Frame]) -> list[Frame]:
        return [f for f in self.frames if isinstance(f, types)]


class PipelineHarness:
    """Runs ``[recorder, processor, recorder]`` under pipecat's worker and runner.

    Use as an async context manager; ``send`` frames, ``wait_for`` what reaches
    downstream, then ``end`` (or leave the block) to send an EndFrame and wait
    for the pipeline to finish.

    Args:
        processor: The processor under test.
        audio_out_sample_rate: The pipeline's output sample rate.
        on_down: Called with each frame as it reaches the end of the pipeline.
        observers: The pipeline's observers.
    """

    def __init__(
        self,
        processor: FrameProcessor,
        *,
        audio_out_sample_rate: int = 16000,
        on_down: Callable[[Frame], None] | None = None,
        observers: list[BaseObserver] | None = None,
    ):
        self.processor = processor
        self.down: list[Frame] = []
        self.up: list[Frame] = []
        self._changed = asyncio.Event()
        source = _Recorder(FrameDirection.UPSTREAM, self.up, self._changed)
        sink = _Recorder(FrameDirection.DOWNSTREAM, self.down, self._changed, on_down)
        self._worker = PipelineWorker(
            Pipeline([source, processor, sink]),
            cancel_on_idle_timeout=False,
            params=PipelineParams(audio_out_sample_rate=audio_out_sample_rate),
            observers=observers,
        )
        self._runner = WorkerRunner()
        self._run: asyncio.Task | None = None
        self._ended = False

    async def __aenter__(self) -> Self:
        started = asyncio.Event()

        @self._worker.event_handler("on_pipeline_started")
        async def _started(worker, frame):
            started.set()

        await self._runner.add_workers(self._worker)
        self._run = asyncio.create_task(self._runner.run())
        async with asyncio.timeout(5):
            await started.wait()
        return self

    async def __aexit__(self, *exc):
        if not self._ended:
            await self.end()

    async def send(self, *frames: Frame, direction: FrameDirection = FrameDirection.DOWNSTREAM):
        for frame in frames:
            await self._worker.queue_frame(frame, direction)

    async def wait_for(self, predicate: Callable[[], bool], timeout: float = 5.0):
        """Wait until ``predicate()`` holds, re-checking as frames arrive."""
        async with asyncio.timeout(timeout):
            while not predicate():
                self._changed.clear()
                await self._changed.wait()

    async def end(self, timeout: float = 15.0):
        """Send an EndFrame and wait for the pipeline to finish."""
        self._ended = True
        await self._worker.queue_frame(EndFrame())
        assert self._run is not None
        async with asyncio.timeout(timeout):
            await self._run
        self.down[:] = [f for f in self.down if not isinstance(f, EndFrame)]

    def of(self, *types: type) -> list[Frame]:
        """The downstream frames of the given types, in order."""
        return [f for f in self.down if isinstance(f, types)]

    @property
    def audio(self) -> list[TTSAudioRawFrame]:
        return self.of(TTSAudioRawFrame)

    @property
    def words(self) -> list[str]:
        """Words of the TTSTextFrames that reached downstream."""
        return [w for f in self.of(TTSTextFrame) for w in f.text.split()]
