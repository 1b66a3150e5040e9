"""Passing a chunk of audio downstream as pipecat's ``push_frame`` does, without its per-frame extras.

Every chunk of a healthy call is pushed twice: by the provider's service to
FailoverTTSService, and by FailoverTTSService to the next processor. The first
push is the service's own; the second is the wrapper's cost. pipecat's
``FrameProcessor.push_frame`` spends most of a chunk's time on work that
changes nothing here: two lookups for ``on_before_push_frame`` and
``on_after_push_frame`` handlers, and a trace line formatted whether or not
trace logging is on. :func:`push_audio` does what reaches the pipeline (the
observers are told of the push, then the next processor queues the frame) and
falls back to ``push_frame`` whenever it could differ: a handler registered
for those events, or no next processor.
"""

from pipecat.frames.frames import Frame
from pipecat.observers.base_observer import FramePushed
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor
from pipecat.utils.errors import ErrorCategory

_PUSH_EVENTS = ("on_before_push_frame", "on_after_push_frame")


def _has_push_handlers(processor: FrameProcessor) -> bool:
    handlers = getattr(processor, "_event_handlers", None)
    if not isinstance(handlers, dict):
        return True
    return any(
        (event := handlers.get(name)) is not None and event.handlers for name in _PUSH_EVENTS
    )


async def push_audio(processor: FrameProcessor, frame: Frame):
    """Push a frame downstream from ``processor``, as ``push_frame`` would.

    Args:
        processor: The pushing processor (set up).
        frame: The frame, usually a chunk of audio.
    """
    destination = processor.next
    if destination is None or _has_push_handlers(processor):
        await processor.push_frame(frame)
        return
    setup = processor.processor_setup
    try:
        if setup.observer:
            await setup.observer.on_push_frame(
                FramePushed(
                    source=processor,
                    destination=destination,
                    frame=frame,
                    direction=FrameDirection.DOWNSTREAM,
                    timestamp=setup.clock.get_time(),
                )
            )
        await destination.queue_frame(frame, FrameDirection.DOWNSTREAM)
    except Exception as e:  # noqa: BLE001 - reported as push_frame reports it
        # The observers and the next processor ran here: the cause is theirs.
        await processor.push_error(
            error_msg=f"Uncaught exception: {e}", exception=e, category=ErrorCategory.UNKNOWN
        )
