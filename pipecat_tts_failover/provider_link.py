"""One provider's TTS service, run in a pipeline of its own, wired to the sentence attempts."""

import asyncio
import dataclasses
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
from pipecat.observers.base_observer import BaseObserver, ProcessorSetUp
from pipecat.pipeline.pipeline import Pipeline, PipelineSink, PipelineSource
from pipecat.processors.frame_processor import FrameDirection, FrameProcessorSetup
from pipecat.services.tts_service import TTSService

from pipecat_tts_failover.attempt import Attempt
from pipecat_tts_failover.latency import ProviderStats

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
# How many abandoned context ids a link remembers, to drop late frames of them.
_ABANDONED_CONTEXTS_KEPT = 64
# Share of a service's own stop-frame timeout a stall deadline may use.
_STOP_TIMER_SHARE = 0.8

PassOn = Callable[[Frame, FrameDirection], Awaitable[None]]


class _ServiceOutput(PipelineSink):
    """The end of a provider's pipeline: hands what the service pushes straight to the link.

    Frames are handed over as they are queued, without a processing step of
    their own, so a chunk of audio costs one hop (the service's push) to reach
    the attempt, as it would to reach the next processor without failover.
    """

    async def queue_frame(self, frame: Frame, direction=FrameDirection.DOWNSTREAM, callback=None):
        if direction == FrameDirection.DOWNSTREAM:
            await self._downstream_push_frame(frame, direction)
        else:
            await super().queue_frame(frame, direction, callback)


class _SetupOnlyObserver(BaseObserver):
    """Shows the pipeline's observers a provider's set-up, not the frames inside its pipeline.

    Observers see the stream the caller hears, as FailoverTTSService pushes
    it. Inside a provider's pipeline they would see every frame twice and,
    worse, the frames of attempts that were abandoned and never heard (an
    RTVI client would be told the bot started speaking once per attempt); and
    every audio chunk would pay for being observed twice.
    """

    def __init__(self, observer: BaseObserver):
        super().__init__()
        self._observer = observer

    async def on_processor_setup(self, data: ProcessorSetUp):
        await self._observer.on_processor_setup(data)


def provider_setup(setup: FrameProcessorSetup) -> FrameProcessorSetup:
    """The set-up for the providers' pipelines: the pipeline's, minus frame observation."""
    if setup.observer is None:
        return setup
    return dataclasses.replace(setup, observer=_SetupOnlyObserver(setup.observer))


def _stall_limit(service: TTSService) -> float | None:
    """The longest stall deadline that still beats the service's own end-of-sentence timer.

    A pipecat service with ``push_stop_frames`` (the HTTP ones) ends a sentence
    by itself once nothing has come for ``stop_frame_timeout_s``: it pushes its
    stop frame, and the words it never spoke as text, exactly as at a real
    end. A stall longer than that would pass for a finished sentence, so the
    stall deadline is kept to most of that timeout.
    """
    if not getattr(service, "_push_stop_frames", False):
        return None
    timeout = getattr(service, "_stop_frame_timeout_s", None)
    if not isinstance(timeout, (int, float)) or timeout <= 0:
        return None
    return timeout * _STOP_TIMER_SHARE


class ProviderLink:
    """A provider's service in its own pipeline, speaking one sentence at a time.

    Frames the service pushes while an attempt is open go to that attempt's
    inbox; once the attempt is abandoned the service is interrupted and
    everything it pushes up to that interruption is dropped, so nothing of an
    abandoned attempt reaches the caller. A sentence that was spoken but not
    ended cleanly by the service (every word heard, then no end message, or
    an error) is interrupted the same way before the next sentence, so what
    the service still holds of it never holds up or reaches a later attempt.
    Frames unrelated to speech (metrics, for instance) are passed on.

    Args:
        provider_id: The normalized provider id.
        service: The provider's pipecat TTS service.
        pass_on: Called with frames that are not speech, to pass them on.
        stats: What the process has learned of the provider (its speech rate is
            read and kept here).
    """

    def __init__(
        self, provider_id: str, service: TTSService, pass_on: PassOn, stats: ProviderStats
    ):
        self.provider_id = provider_id
        self.service = service
        self._pass_on = pass_on
        self.pipeline = Pipeline(
            [service],
            source=PipelineSource(self._from_service_upstream, name=f"{service}::FailoverSource"),
            sink=_ServiceOutput(self._from_service_downstream, name=f"{service}::FailoverSink"),
        )
        self._attempt: Attempt | None = None
        # Id of the interruption sent to abandon an attempt: until it comes out
        # of the service, what the service pushes belongs to the abandoned one.
        self._draining: int | None = None
        self._lifecycle: dict[int, asyncio.Event] = {}
        # Context ids of the open attempt, and of abandoned ones: a service that
        # keeps pushing for a context after it was interrupted is not heard.
        self._attempt_contexts: set[str] = set()
        # (a dict as an insertion-ordered set: looked up for every frame, trimmed to the newest)
        self._abandoned_contexts: dict[str, None] = {}
        # The last attempt was closed before the service ended its sentence.
        self._unfinished = False
        self._stall_limit = _stall_limit(service)
        self._stats = stats

    @property
    def is_usable(self) -> bool:
        """Whether the service can still be given work."""
        return self.service.is_usable

    async def speak(self, text: str, attempt: Attempt, *, append_to_context: bool):
        """Send one sentence to the service; what it pushes for it goes to ``attempt``.

        Args:
            text: The text to speak.
            attempt: Watches this sentence on this provider.
            append_to_context: Carried on the text frames the service pushes.
        """
        if self._unfinished:
            self._unfinished = False
            await self._interrupt()
        attempt.expect(text, self._stats.speech_rate)
        attempt.limit_stall(self._stall_limit)
        self._attempt = attempt
        await self.pipeline.queue_frame(TTSSpeakFrame(text, append_to_context=append_to_context))

    def close_attempt(self):
        """Close the open attempt once it was spoken."""
        attempt, self._attempt = self._attempt, None
        # Nothing more of its contexts belongs to anyone.
        self._retire_contexts()
        if attempt is not None and attempt.speech_rate:
            # For the next sentence's first word, here and in the process's other calls.
            self._stats.speech_rate = attempt.speech_rate
        if attempt is not None and not attempt.service_done:
            self._unfinished = True

    async def abandon(self):
        """Abandon the open attempt: interrupt the service and drop what is left of it."""
        self._attempt = None
        self._retire_contexts()
        self._unfinished = False
        await self._interrupt()

    def _retire_contexts(self):
        for context_id in self._attempt_contexts:
            self._abandoned_contexts[context_id] = None
        self._attempt_contexts.clear()
        while len(self._abandoned_contexts) > _ABANDONED_CONTEXTS_KEPT:
            del self._abandoned_contexts[next(iter(self._abandoned_contexts))]

    async def _interrupt(self):
        """Interrupt the service; drop what it pushes until the interruption comes out."""
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
            attempt = self._attempt
            if (
                attempt is not None
                and self._draining is None
                and context_id not in self._abandoned_contexts
            ):
                if context_id:
                    self._attempt_contexts.add(context_id)
                await attempt.on_frame(frame)
            else:
                logger.trace(f"{self.service}: dropping {frame} of an abandoned attempt")
            return
        await self._pass_on(frame, direction)

    async def _from_service_upstream(self, frame: Frame, direction: FrameDirection):
        if isinstance(frame, ErrorFrame):
            if self._attempt is not None and self._draining is None:
                await self._attempt.on_frame(frame)
            else:
                # An idle provider's trouble (a dropped keepalive socket, say) is
                # not the caller's: the policy hears of it when it next speaks.
                logger.debug(f"{self.service}: error while idle: {frame.error}")
            return
        await self._pass_on(frame, direction)
