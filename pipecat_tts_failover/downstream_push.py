"""Passing a frame downstream as pipecat's ``push_frame`` does, without its per-frame extras.

Every frame of a healthy call's speech is pushed twice: by the provider's
service to FailoverTTSService, and by FailoverTTSService to the next
processor. The first push is the service's own; the second is the wrapper's
cost. pipecat's ``FrameProcessor.push_frame`` spends most of a frame's time on
work that changes nothing here: lookups for ``on_before_push_frame`` and
``on_after_push_frame`` handlers, the set-up's observer and clock read through
a Python-level ``__getattribute__``, and a trace line formatted whether or not
trace logging is on. :class:`DownstreamPusher` reads once at set-up what
reaches the pipeline (the observers, told of the push, then the next
processor, which queues the frame), pushes with nothing else, or lets its
owner push a chunk of audio inline, and says when only ``push_frame`` will do:
a handler registered for those events, or no next processor.
"""

from pipecat.frames.frames import Frame
from pipecat.observers.base_observer import FramePushed
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor, FrameProcessorSetup
from pipecat.utils.errors import ErrorCategory

# Read once: an enum member read costs a Python-level lookup on the audio path.
DOWNSTREAM = FrameDirection.DOWNSTREAM


class DownstreamPusher:
    """What pushing downstream from one processor needs, read once: pushes lean, or lets its owner.

    :meth:`push` pushes a frame as ``push_frame`` does. On the audio path the
    owner can push inline instead, with no call in between (a coroutine per
    chunk is an allocation the garbage collector counts): it tells
    :attr:`observer` of :meth:`pushed`, then queues the frame to
    :meth:`destination`, and reports an exception of either with
    :meth:`failed`; where :meth:`destination` is None, it calls ``push_frame``.

    Args:
        processor: The pushing processor.
    """

    def __init__(self, processor: FrameProcessor):
        self._processor = processor
        # The set-up's observer, if any: told of each push.
        self.observer = None
        self._clock = None
        self._next: FrameProcessor | None = None
        # The handler lists of on_before/after_push_frame (pipecat appends to them in place).
        self._handlers: tuple[list, ...] = ()

    def set_up(self, setup: FrameProcessorSetup):
        """The processor is set up (and linked): read what every push needs, once."""
        self.observer = setup.observer
        self._clock = setup.clock
        self._next = self._processor.next
        events = getattr(self._processor, "_event_handlers", None)
        if isinstance(events, dict) and hasattr(self._processor, "_next"):
            names = ("on_before_push_frame", "on_after_push_frame")
            self._handlers = tuple(events[name].handlers for name in names if name in events)
        else:
            self._next = None  # not the pipecat it was written for: push_frame always

    def destination(self) -> FrameProcessor | None:
        """Where to queue a frame directly; None where only ``push_frame`` pushes as pipecat would.

        None when the processor is not set up, was relinked since, or has an
        ``on_before_push_frame``/``on_after_push_frame`` handler registered.
        """
        destination = self._next
        if destination is None or destination is not self._processor._next:
            return None
        for handlers in self._handlers:
            if handlers:
                return None
        return destination

    def pushed(self, frame: Frame, destination: FrameProcessor) -> FramePushed:
        """What the observers are told of a frame pushed downstream to ``destination``."""
        return FramePushed(
            source=self._processor,
            destination=destination,
            frame=frame,
            direction=DOWNSTREAM,
            timestamp=self._clock.get_time(),
        )

    async def push(self, frame: Frame):
        """Push a frame downstream as the processor's ``push_frame`` would, without its extras."""
        destination = self.destination()
        if destination is None:
            await self._processor.push_frame(frame, DOWNSTREAM)
            return
        try:
            if (observer := self.observer) is not None:
                await observer.on_push_frame(self.pushed(frame, destination))
            await destination.queue_frame(frame, DOWNSTREAM)
        except Exception as e:  # noqa: BLE001 - reported as push_frame reports it
            await self.failed(e)

    async def failed(self, error: Exception):
        """Report an exception of the observers or the next processor, as ``push_frame`` does."""
        await self._processor.push_error(
            error_msg=f"Uncaught exception: {error}",
            exception=error,
            category=ErrorCategory.UNKNOWN,
        )
