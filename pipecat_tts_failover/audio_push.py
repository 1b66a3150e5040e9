"""Passing a chunk of audio downstream as pipecat's ``push_frame`` does, without its per-frame extras.

Every chunk of a healthy call is pushed twice: by the provider's service to
FailoverTTSService, and by FailoverTTSService to the next processor. The first
push is the service's own; the second is the wrapper's cost. pipecat's
``FrameProcessor.push_frame`` spends most of a chunk's time on work that
changes nothing here: lookups for ``on_before_push_frame`` and
``on_after_push_frame`` handlers, the set-up's observer and clock read through
a Python-level ``__getattribute__``, and a trace line formatted whether or not
trace logging is on. :class:`AudioPusher` does what reaches the pipeline (the
observers are told of the push, then the next processor queues the frame)
with what it reads once at set-up, and falls back to ``push_frame``
whenever it could differ: a handler registered for those events, or no next
processor.
"""

from pipecat.frames.frames import Frame
from pipecat.observers.base_observer import FramePushed
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor, FrameProcessorSetup
from pipecat.utils.errors import ErrorCategory

# Read once: an enum member read costs a Python-level lookup on the audio path.
DOWNSTREAM = FrameDirection.DOWNSTREAM


class AudioPusher:
    """Pushes frames downstream from one processor, as its ``push_frame`` would.

    Args:
        processor: The pushing processor.
    """

    def __init__(self, processor: FrameProcessor):
        self._processor = processor
        self._observer = None
        self._clock = None
        self._next: FrameProcessor | None = None
        # The handler lists of on_before/after_push_frame (pipecat appends to them in place).
        self._handlers: tuple[list, ...] = ()

    def set_up(self, setup: FrameProcessorSetup):
        """The processor is set up (and linked): read what every push needs, once."""
        self._observer = setup.observer
        self._clock = setup.clock
        self._next = self._processor.next
        events = getattr(self._processor, "_event_handlers", None)
        if isinstance(events, dict) and hasattr(self._processor, "_next"):
            names = ("on_before_push_frame", "on_after_push_frame")
            self._handlers = tuple(events[name].handlers for name in names if name in events)
        else:
            self._next = None  # not the pipecat it was written for: push_frame always

    async def push(self, frame: Frame):
        """Push a frame downstream, usually a chunk of audio."""
        processor = self._processor
        destination = self._next
        if destination is None or destination is not processor._next:  # relinked since set-up
            await processor.push_frame(frame)
            return
        for handlers in self._handlers:
            if handlers:
                await processor.push_frame(frame)
                return
        try:
            if observer := self._observer:
                await observer.on_push_frame(
                    FramePushed(
                        source=processor,
                        destination=destination,
                        frame=frame,
                        direction=DOWNSTREAM,
                        timestamp=self._clock.get_time(),
                    )
                )
            await destination.queue_frame(frame, DOWNSTREAM)
        except Exception as e:  # noqa: BLE001 - reported as push_frame reports it
            # The observers and the next processor ran here: the cause is theirs.
            await processor.push_error(
                error_msg=f"Uncaught exception: {e}", exception=e, category=ErrorCategory.UNKNOWN
            )
