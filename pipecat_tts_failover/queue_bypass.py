"""Handing a frame to a processor at once when nothing is queued ahead of it.

pipecat queues each frame a processor is given twice, on its input queue and
then on its processing queue, and a task of the processor takes it from each:
two turns of the event loop before the processor sees the frame. A turn is
microseconds on a quiet worker and tens of milliseconds on one holding
hundreds of calls. FailoverTTSService sits in front of a provider's service,
which queues the frame twice more, so without a bypass every sentence waits
two turns longer for its first audio than with the bare service.

:class:`QueueBypass` says when a frame can skip the processor's own queues
and be processed at once in the task that pushed it, as pipecat's direct-mode
processors are, without changing the order frames are processed in: only
while nothing is queued, in hand or paused. It reads pipecat's
``FrameProcessor`` queues (private in pipecat 1.x); where they are not what
it was written for, it never bypasses.
"""

import asyncio

from pipecat.processors.frame_processor import FrameDirection, FrameProcessor

_PROCESS_FRAME = getattr(FrameProcessor, "_FrameProcessor__process_frame", None)


class QueueBypass:
    """Whether a frame may skip its processor's queues, and the processing when it does.

    Args:
        processor: The processor whose queues are bypassed.
    """

    def __init__(self, processor: FrameProcessor):
        self._processor = processor
        self._input = getattr(processor, "_FrameProcessor__input_queue", None)
        self._process = getattr(processor, "_FrameProcessor__process_queue", None)
        self._available = (
            _PROCESS_FRAME is not None
            and isinstance(self._input, asyncio.Queue)
            and isinstance(self._process, asyncio.Queue)
            and hasattr(self._input, "_unfinished_tasks")
            and hasattr(processor, "_FrameProcessor__process_current_frame")
            and hasattr(processor, "_FrameProcessor__should_block_frames")
        )
        # A frame being processed through the bypass now.
        self._in_flight = False

    def clear(self) -> bool:
        """Whether nothing is queued, in hand (system frames too) or paused in the processor."""
        processor = self._processor
        return (
            self._available
            and not self._in_flight
            # Everything put on the input queue has been taken and handled.
            and not self._input._unfinished_tasks
            and not self._process.qsize()
            and processor._FrameProcessor__process_current_frame is None
            and not processor._FrameProcessor__should_block_frames
            and not processor._cancelling
        )

    async def process(self, frame, direction: FrameDirection):
        """Process a frame at once, as the processor's own task would (its events, its errors)."""
        self._in_flight = True
        try:
            await _PROCESS_FRAME(self._processor, frame, direction, None)
        finally:
            self._in_flight = False
