"""One provider's TTS service, linked straight to the relay."""

import asyncio
import dataclasses
from functools import partial
from typing import Protocol

from loguru import logger
from pipecat.frames.frames import (
    CancelFrame,
    EndFrame,
    Frame,
    InterruptionFrame,
    StartFrame,
    TTSAudioRawFrame,
)
from pipecat.observers.base_observer import BaseObserver, ProcessorSetUp
from pipecat.processors.frame_processor import FrameDirection, FrameProcessorSetup
from pipecat.services.tts_service import TTSService

from pipecat_tts_failover.downstream_push import DOWNSTREAM
from pipecat_tts_failover.latency import ProviderStats

_LIFECYCLE_FRAMES = (StartFrame, EndFrame, CancelFrame)
# Share of a service's own stop-frame timeout a stall deadline may use.
_STOP_TIMER_SHARE = 0.8


class LinkListener(Protocol):
    """Where a link hands what its service does."""

    def request(self, link: "ProviderLink", context_id: str | None) -> None:
        """The service sent a request to its provider."""

    async def output(self, link: "ProviderLink", frame: Frame) -> None:
        """The service pushed a frame downstream."""

    async def upstream(self, link: "ProviderLink", frame: Frame, direction: FrameDirection) -> None:
        """The service pushed a frame upstream."""


class _Outlet:
    """What a provider's service pushes to (its ``_next`` and ``_prev``): a name and a queue_frame."""

    __slots__ = ("_name", "queue_frame")

    def __init__(self, name: str, queue_frame):
        self._name = name
        self.queue_frame = queue_frame

    def __str__(self) -> str:
        # pipecat formats its push's trace line with it, on every push.
        return self._name


class _SetupOnlyObserver(BaseObserver):
    """Shows the pipeline's observers a provider's set-up, not the frames its service pushes.

    Observers see the stream the caller hears, as FailoverTTSService pushes
    it. Shown what a provider's service pushes they would see every frame twice and,
    worse, the frames of attempts that were abandoned and never heard (an
    RTVI client would be told the bot started speaking once per attempt).
    """

    def __init__(self, observer: BaseObserver):
        super().__init__()
        self._observer = observer

    async def on_processor_setup(self, data: ProcessorSetUp):
        await self._observer.on_processor_setup(data)


def provider_setup(setup: FrameProcessorSetup) -> FrameProcessorSetup:
    """The set-up for providers' services: the pipeline's, its observer told only of set-ups.

    Call :func:`setup_done` with it once those services are set up.
    """
    if setup.observer is None:
        return setup
    return dataclasses.replace(setup, observer=_SetupOnlyObserver(setup.observer))


def setup_done(setup: FrameProcessorSetup):
    """The services set up with ``setup`` are ready: from now on they have no observer.

    So a service's push skips the observer at once: no per-frame record is
    built, nothing awaited.
    """
    if isinstance(setup.observer, _SetupOnlyObserver):
        setup.observer = None


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
    """A provider's service, linked straight to a listener.

    Frames are handed to the service as they come; what it pushes goes to the
    listener. After :meth:`interrupt`, what the service pushes up to that
    interruption coming out of it is dropped, so nothing of abandoned speech
    reaches the listener.

    The service is linked with :meth:`attach`; a provider on cold standby
    given as a factory has none until the call needs it (see
    ``FailoverTTSService``). Until then frames handed to the link are dropped
    and its lifecycle never comes out.

    Args:
        provider_id: The normalized provider id.
        stats: What the process has learned of the provider (its speech rate).
    """

    # One per provider of every call: no instance dict.
    __slots__ = (
        "_lifecycle",
        "_listener",
        "_name",
        "_outlet",
        "attach_error",
        "cancelled",
        "draining_id",
        "ended",
        "provider_id",
        "request_text",
        "service",
        "set_up",
        "stall_limit",
        "started",
        "stats",
        "word_timestamps",
    )

    def __init__(self, provider_id: str, stats: ProviderStats):
        self.provider_id = provider_id
        self.stats = stats
        self._listener: LinkListener | None = None
        self._name = f"{provider_id}::Failover"
        # The service's neighbour on both sides (pipecat's link() sets only
        # one side): the service pushes by calling its queue_frame.
        self._outlet = _Outlet(self._name, self.queue_frame)
        self.service: TTSService | None = None
        # Services without word timestamps push a sentence's text after its audio.
        self.word_timestamps = True
        self.stall_limit: float | None = None
        # Why the provider's factory gave no service, if it did not.
        self.attach_error: str | None = None
        # Whether the service was set up (pipecat's WebSocket services connect then).
        self.set_up = False
        # Whether the StartFrame, and an EndFrame or CancelFrame, have been sent to the service.
        self.started = False
        self.ended = False
        # Whether the service was cancelled mid-way through its EndFrame.
        self.cancelled = False
        # Id of the interruption sent to drop what the service still pushes (None: not draining).
        self.draining_id: int | None = None
        self._lifecycle: dict[int, asyncio.Event] = {}
        # The text of the request the listener is told of (as the service sends it).
        self.request_text = ""

    def attach(self, service: TTSService):
        """Link the provider's service: what it pushes comes to this link."""
        self.service = service
        self._name = self._outlet._name = f"{service}::Failover"
        service._next = service._prev = self._outlet
        self.word_timestamps = not getattr(service, "_push_text_frames", False)
        self.stall_limit = _stall_limit(service)
        service.add_event_handler("on_tts_request", self._on_tts_request)

    @property
    def listener(self) -> LinkListener | None:
        """Where what the service pushes goes."""
        return self._listener

    @listener.setter
    def listener(self, listener: LinkListener | None):
        # A listener with take(link, frame, direction) is called by the
        # service's push itself, in place of queue_frame below (one call per
        # chunk fewer on the audio path); it hands on what it does not handle.
        self._listener = listener
        take = getattr(listener, "take", None)
        self._outlet.queue_frame = partial(take, self) if take is not None else self.queue_frame

    @property
    def is_usable(self) -> bool:
        """Whether the service can still be given work (a service still to be made can)."""
        if self.service is None:
            return self.attach_error is None
        return self.service.is_usable

    @property
    def draining(self) -> bool:
        """Whether what the service pushes is being dropped until an interruption comes out."""
        return self.draining_id is not None

    def plays_on(self, context_id: str | None) -> bool:
        """Whether the service still holds items (audio, words) of this audio context to play.

        pipecat queues a context's audio and word timestamps and plays them in
        order; a stop frame pushed out of that order (pipecat's Cartesia
        service does on an error message) can overtake them. Reads the
        service's queue (``_audio_context_manager``); False if it cannot.
        """
        if self.service is None:
            return False
        manager = getattr(self.service, "_audio_context_manager", None)
        contexts = getattr(manager, "_contexts", None)
        queue = contexts.get(context_id) if isinstance(contexts, dict) else None
        items = getattr(queue, "_queue", ())
        keepalive = getattr(manager, "_KEEPALIVE", None)
        return any(item is not None and item is not keepalive for item in items)

    def clock_ns(self) -> int:
        """The service's clock, in nanoseconds: pipecat stamps word frames' pts with it."""
        return self.service.get_clock().get_time()

    async def _on_tts_request(self, service: TTSService, context_id: str, text: str):
        self.request_text = text
        if self._listener is not None:
            self._listener.request(self, context_id)

    async def send(self, frame: Frame):
        """Hand a frame to the service (dropped while there is none)."""
        if self.service is not None:
            await self.service.queue_frame(frame)

    async def interrupt(self, frame: InterruptionFrame):
        """Interrupt the service; drop what it pushes until the interruption comes out."""
        if self.service is None:
            return
        self.draining_id = frame.id
        await self.service.queue_frame(frame)

    async def abandon(self):
        """Drop what the service is speaking; nothing more of it reaches the listener.

        A service already ending the call is cancelled instead of interrupted:
        a pipecat TTS service interrupted while it handles its EndFrame never
        finishes it.
        """
        if self.ended:
            self.draining_id = -1
            self.cancelled = True
            await self.send_lifecycle(CancelFrame(), timeout=None)
        else:
            await self.interrupt(InterruptionFrame())

    async def send_lifecycle(self, frame: Frame, timeout: float | None) -> bool:
        """Send a StartFrame/EndFrame/CancelFrame through the service and wait for it to come out.

        Args:
            frame: The lifecycle frame.
            timeout: How long to wait, or None not to wait.

        Returns:
            True if the frame came out in time (or no wait was asked for);
            False if it did not, or there is no service.
        """
        if self.service is None:
            return False
        if isinstance(frame, StartFrame):
            self.started = True
        elif isinstance(frame, (EndFrame, CancelFrame)):
            self.ended = True
        if timeout is None:
            await self.service.queue_frame(frame)
            return True
        done = asyncio.Event()
        self._lifecycle[frame.id] = done
        await self.service.queue_frame(frame)
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

    def __str__(self) -> str:
        return self._name

    async def queue_frame(self, frame: Frame, direction=FrameDirection.DOWNSTREAM, callback=None):
        """What the service pushes, either way (what a direct listener hands on).

        No processor, queue or task in between, so a chunk of audio costs one
        call to reach the attempt, as it would to reach the next processor
        without failover.
        """
        if direction is DOWNSTREAM:
            if frame.__class__ is TTSAudioRawFrame and self.draining_id is None:
                # The audio path: one check, no isinstance walk.
                if (listener := self._listener) is not None:
                    await listener.output(self, frame)
                return
            await self._from_service_downstream(frame)
        else:
            await self._from_service_upstream(frame, direction)

    async def _from_service_downstream(self, frame: Frame):
        if isinstance(frame, _LIFECYCLE_FRAMES):
            if event := self._lifecycle.get(frame.id):
                event.set()
            return
        if isinstance(frame, InterruptionFrame):
            if frame.id == self.draining_id:
                self.draining_id = None
            return
        if self.draining_id is not None or self._listener is None:
            logger.trace(f"{self.service}: dropping {frame} of interrupted speech")
            return
        await self._listener.output(self, frame)

    async def _from_service_upstream(self, frame: Frame, direction: FrameDirection):
        if self.draining_id is not None or self._listener is None:
            logger.trace(f"{self.service}: dropping {frame} pushed upstream while interrupted")
            return
        await self._listener.upstream(self, frame, direction)
