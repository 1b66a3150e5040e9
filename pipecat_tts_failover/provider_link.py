"""One provider's TTS service, run in a pipeline of its own, wired to the sentence attempts."""

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable

from loguru import logger
from pipecat.frames.frames import (
    AggregatedTextFrame,
    AggregatedTextProgressFrame,
    CancelFrame,
    EndFrame,
    ErrorFrame,
    Frame,
    InterruptionFrame,
    LLMAssistantPushAggregationFrame,
    StartFrame,
    TTSAudioRawFrame,
    TTSSpeakFrame,
    TTSStartedFrame,
    TTSStoppedFrame,
)
from pipecat.pipeline.pipeline import Pipeline, PipelineSink, PipelineSource
from pipecat.processors.frame_processor import FrameDirection
from pipecat.services.tts_service import TTSService

# What a TTS service pushes downstream while it speaks: these belong to the
# attempt in flight, or to nobody.
SPEECH_FRAMES = (
    AggregatedTextFrame,  # includes TTSTextFrame
    AggregatedTextProgressFrame,
    TTSStartedFrame,
    TTSAudioRawFrame,
    TTSStoppedFrame,
    LLMAssistantPushAggregationFrame,
)
_LIFECYCLE_FRAMES = (StartFrame, EndFrame, CancelFrame)

PassOn = Callable[[Frame, FrameDirection], Awaitable[None]]


class ProviderLink:
    """A provider's service in its own pipeline, speaking one sentence at a time.

    Frames the service pushes while an attempt is open go to that attempt's
    inbox; once the attempt is abandoned the service is interrupted and
    everything it pushes up to that interruption is dropped, so nothing of an
    abandoned attempt reaches the caller. Frames unrelated to speech (metrics,
    for instance) are passed on.

    Args:
        provider_id: The normalized provider id.
        service: The provider's pipecat TTS service.
        pass_on: Called with frames that are not speech, to pass them on.
    """

    def __init__(self, provider_id: str, service: TTSService, pass_on: PassOn):
        self.provider_id = provider_id
        self.service = service
        self._pass_on = pass_on
        self.pipeline = Pipeline(
            [service],
            source=PipelineSource(self._from_service_upstream, name=f"{service}::FailoverSource"),
            sink=PipelineSink(self._from_service_downstream, name=f"{service}::FailoverSink"),
        )
        self._inbox: asyncio.Queue[Frame] | None = None
        # Id of the interruption sent to abandon an attempt: until it comes out
        # of the service, what the service pushes belongs to the abandoned one.
        self._draining: int | None = None
        self._lifecycle: dict[int, asyncio.Event] = {}
        # Context ids of the open attempt, and of abandoned ones: a service that
        # keeps pushing for a context after it was interrupted is not heard.
        self._attempt_contexts: set[str] = set()
        self._abandoned_contexts: deque[str] = deque(maxlen=64)

    @property
    def is_usable(self) -> bool:
        """Whether the service can still be given work."""
        return self.service.is_usable

    async def speak(self, text: str, *, append_to_context: bool) -> asyncio.Queue[Frame]:
        """Send one sentence to the service and open an attempt.

        Args:
            text: The text to speak.
            append_to_context: Carried on the text frames the service pushes.

        Returns:
            The inbox receiving what the service pushes for this sentence.
        """
        inbox: asyncio.Queue[Frame] = asyncio.Queue()
        self._inbox = inbox
        await self.pipeline.queue_frame(TTSSpeakFrame(text, append_to_context=append_to_context))
        return inbox

    def close_attempt(self):
        """Close the open attempt after the service finished the sentence."""
        self._inbox = None
        self._attempt_contexts.clear()

    async def abandon(self):
        """Abandon the open attempt: interrupt the service and drop what is left of it."""
        self._inbox = None
        self._abandoned_contexts.extend(self._attempt_contexts)
        self._attempt_contexts.clear()
        interruption = InterruptionFrame()
        self._draining = interruption.id
        await self.pipeline.queue_frame(interruption)

    async def send_lifecycle(self, frame: Frame, timeout: float | None) -> bool:
        """Send a StartFrame/EndFrame/CancelFrame through the service and wait for it to come out.

        Args:
            frame: The lifecycle frame.
            timeout: How long to wait, or None not to wait.

        Returns:
            True if the frame came out in time (or no wait was asked for).
        """
        done = asyncio.Event()
        self._lifecycle[frame.id] = done
        await self.pipeline.queue_frame(frame)
        if timeout is None:
            return True
        try:
            async with asyncio.timeout(timeout):
                await done.wait()
            return True
        except TimeoutError:
            logger.warning(
                f"{self.service}: {type(frame).__name__} did not come out within {timeout}s"
            )
            return False
        finally:
            self._lifecycle.pop(frame.id, None)

    async def _from_service_downstream(self, frame: Frame, direction: FrameDirection):
        if isinstance(frame, _LIFECYCLE_FRAMES):
            if event := self._lifecycle.get(frame.id):
                event.set()
            return
        if isinstance(frame, InterruptionFrame):
            if frame.id == self._draining:
                self._draining = None
            return
        if isinstance(frame, SPEECH_FRAMES):
            context_id = getattr(frame, "context_id", None)
            if (
                self._inbox is not None
                and self._draining is None
                and context_id not in self._abandoned_contexts
            ):
                if context_id:
                    self._attempt_contexts.add(context_id)
                self._inbox.put_nowait(frame)
            else:
                logger.trace(f"{self.service}: dropping {frame} of an abandoned attempt")
            return
        await self._pass_on(frame, direction)

    async def _from_service_upstream(self, frame: Frame, direction: FrameDirection):
        if isinstance(frame, ErrorFrame):
            if self._inbox is not None and self._draining is None:
                self._inbox.put_nowait(frame)
            else:
                # An idle provider's trouble (a dropped keepalive socket, say) is
                # not the caller's: the policy hears of it when it next speaks.
                logger.debug(f"{self.service}: error while idle: {frame.error}")
            return
        await self._pass_on(frame, direction)
