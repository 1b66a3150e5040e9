"""FailoverTTSService: the processor that keeps a pipecat bot speaking when its TTS provider fails."""

import asyncio
import random
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from loguru import logger
from pipecat.frames.frames import (
    AggregatedTextFrame,
    AggregatedTextProgressFrame,
    CancelFrame,
    EagerTranscriptionFrame,
    EndFrame,
    Frame,
    InterimTranscriptionFrame,
    InterruptionFrame,
    LLMAssistantPushAggregationFrame,
    LLMFullResponseEndFrame,
    LLMFullResponseStartFrame,
    ServiceMetadataFrame,
    StartFrame,
    TextFrame,
    TranscriptionFrame,
    TTSAudioRawFrame,
    TTSSpeakFrame,
    TTSStartedFrame,
    TTSStoppedFrame,
    TTSTextFrame,
    TTSUpdateSettingsFrame,
)
from pipecat.pipeline.base_pipeline import BasePipeline
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor, FrameProcessorSetup
from pipecat.services.tts_service import TTSService
from pipecat.utils.errors import ErrorCategory
from pipecat.utils.text.base_text_aggregator import TextType
from pipecat.utils.text.simple_text_aggregator import SimpleTextAggregator

from pipecat_tts_failover.attempt import Deadlines
from pipecat_tts_failover.config import (
    DEFAULT_COOLDOWN,
    DEFAULT_FIRST_AUDIO_TIMEOUT,
    DEFAULT_SILENCE_FLOOR,
    DEFAULT_STALL_TIMEOUT,
    non_negative,
    positive_int,
    positive_seconds,
)
from pipecat_tts_failover.detection import FailureReason
from pipecat_tts_failover.errors import AllProvidersFailedError
from pipecat_tts_failover.events import (
    FailedOver,
    FailoverEvent,
    FailoverListener,
    ProviderDown,
    ProviderSlow,
    ProviderUp,
    SentenceAttempted,
)
from pipecat_tts_failover.latency import AdaptiveTimeout, parse_quantile
from pipecat_tts_failover.policy import CallPolicy
from pipecat_tts_failover.provider_link import ProviderLink, provider_setup
from pipecat_tts_failover.providers import normalize_provider_id, resolve_services
from pipecat_tts_failover.recovery import Probe, Recovery, recovery_for
from pipecat_tts_failover.resampling import SentenceResampler
from pipecat_tts_failover.sentence import SentenceRun
from pipecat_tts_failover.speed import SpeedTracker
from pipecat_tts_failover.store.base import Controls, HealthStore
from pipecat_tts_failover.store.memory import default_store
from pipecat_tts_failover.store.writer import StoreWriter

# Text that is not for the bot to say.
_NOT_SPOKEN = (TranscriptionFrame, InterimTranscriptionFrame, EagerTranscriptionFrame, TTSTextFrame)
# How long a call's start may wait on the store before it assumes every provider is healthy.
_STORE_READ_TIMEOUT = 0.25
# How long the end of a call waits for each provider's service to stop.
_SERVICE_STOP_TIMEOUT = 5.0


@dataclass
class _Turn:
    """One stretch of speech downstream sees as a whole: an LLM reply or a TTSSpeakFrame."""

    context_id: str
    append_to_context: bool
    started: bool = False


class FailoverTTSService(BasePipeline):
    """A TTS service made of several providers that keeps speaking when one fails.

    Goes in the pipeline where a TTS service goes. It aggregates text into
    sentences as pipecat's TTS services do, hands each sentence to one of its
    providers' services (each runs in a pipeline of its own, as a normal
    pipecat service) and watches it: an error, an exception, no audio within
    ``first_audio_timeout``, a gap longer than ``stall_timeout``, no audio at
    all, or only digital silence fails the sentence on that provider, and the
    sentence is spoken again on the next one, from the first word not yet
    heard where the provider reports word timestamps. Downstream sees one
    stream: one ``TTSStartedFrame``/``TTSStoppedFrame`` pair per reply, audio
    and words only from attempts that were kept.

    After ``failure_threshold`` consecutive failed sentences a provider is
    marked down in the health store for ``cooldown`` seconds; if it was the
    call's provider, the call stays on the backup that spoke for the rest of
    the call, and new calls start on a provider that is not marked down.

    Event handlers available:

    - on_failover: A sentence moved to another provider.
    - on_sentence_failed: A provider failed a sentence.
    - on_all_providers_failed: Every provider failed a sentence.
    - on_provider_slow: A provider's first-audio latency tail passed ``slow_threshold``.

    Example::

        tts = FailoverTTSService(services=[cartesia_tts, elevenlabs_tts])

        @tts.event_handler("on_failover")
        async def on_failover(processor, from_id: str, to_id: str, reason: FailureReason):
            ...

        @tts.event_handler("on_sentence_failed")
        async def on_sentence_failed(processor, provider_id: str, reason: FailureReason):
            ...

        @tts.event_handler("on_all_providers_failed")
        async def on_all_providers_failed(processor, text: str):
            ...

        @tts.event_handler("on_provider_slow")
        async def on_provider_slow(processor, provider_id: str, p95: float):
            ...
    """

    def __init__(
        self,
        *,
        services: Mapping[str, TTSService] | Sequence[TTSService],
        first_audio_timeout: float | str = DEFAULT_FIRST_AUDIO_TIMEOUT,
        stall_timeout: float = DEFAULT_STALL_TIMEOUT,
        failure_threshold: int = 1,
        cooldown: float = DEFAULT_COOLDOWN,
        store: HealthStore | None = None,
        silence_floor: float = DEFAULT_SILENCE_FLOOR,
        alerters: Sequence[FailoverListener] = (),
        metrics: FailoverListener | None = None,
        probes: Mapping[str, Probe] | None = None,
        probe_backoff: float = 5.0,
        probe_backoff_max: float = 300.0,
        return_to_primary: str = "next_call",
        canary_fraction: float = 0.0,
        adaptive_timeout: AdaptiveTimeout | None = None,
        hedge_after: float | str | None = None,
        hedge_budget: float = 0.05,
        slow_threshold: float | None = None,
        prefer_faster: bool = False,
        name: str | None = None,
    ):
        """Initialize the failover service.

        Args:
            services: The providers' TTS services in preference order: a dict of
                provider id to service, or a list (ids are then derived from the
                service classes: ``CartesiaTTSService`` gives ``"cartesia"``).
                At least two. Ids are normalized (case, spaces, ``-``/``_``).
            first_audio_timeout: Seconds from sending a sentence to its first
                audio byte before the provider has failed it, or ``"adaptive"``:
                each provider's deadline then follows its observed latency tail
                (see ``adaptive_timeout``).
            stall_timeout: Seconds the audio of a sentence may stop before its
                end (and the most digital silence in a row, in seconds of audio)
                before the provider has failed it.
            failure_threshold: Consecutive failed sentences before a provider is
                marked down and the call moves off it for good. Permanent errors
                (authentication, authorization, invalid request) move at once.
            cooldown: Seconds a provider stays marked down in the store.
            store: Where provider health is kept. None uses one in-memory store
                shared by every FailoverTTSService of the process.
            silence_floor: RMS level (on the 0..32768 scale of 16-bit audio) at
                or below which audio counts as digital silence.
            alerters: Alerters told when a provider goes down or comes back
                (``SlackWebhookAlerter``, ``CallbackAlerter``, ...). Alerts are
                sent from the alerters' own tasks, never on the audio path.
            metrics: A metrics listener such as ``PrometheusMetrics``.
            probes: Recovery probes by provider id (``CartesiaProbe``,
                ``ElevenLabsProbe``, ``ServiceProbe``). A provider with a probe
                stays marked down until a probe speaks: it is probed shortly
                before its cooldown ends, by one worker of the fleet, and
                again with exponential backoff while it fails. A provider
                without one comes back when its cooldown ends.
            probe_backoff: Seconds before the probe after a first failed one.
            probe_backoff_max: The longest wait between probes.
            return_to_primary: ``"next_call"`` (a call in progress stays on its
                provider; new calls start on the recovered one) or
                ``"immediately"`` (a call moves back at its next sentence).
            canary_fraction: Fraction (0..1) of new calls that start on a
                preferred provider marked down anyway, as canaries: one that
                speaks marks it healthy.
            adaptive_timeout: How the adaptive deadline is drawn from the
                latency tail (quantile, multiplier, floor, ceiling, samples
                needed, fallback). Default ``AdaptiveTimeout()``.
            hedge_after: When the provider has sent no audio this long into a
                sentence, start the same sentence on the next provider in
                parallel and play whichever turns audible first. Seconds, a
                quantile of the provider's observed first-audio latency such
                as ``"p95"``, or None (no hedging).
            hedge_budget: Most hedged sentences per sentence of a provider,
                over its last 100 sentences, so a uniformly slow provider does
                not double the traffic.
            slow_threshold: A provider whose p95 first-audio latency passes
                this many seconds is reported slow (``on_provider_slow``, a
                metric, one log line). It is not marked down for it.
            prefer_faster: Start new calls on a faster provider while the
                preferred one is reported slow.
            name: Name of this processor in logs.

        Raises:
            TypeError: If ``services`` is not a dict or list of pipecat
                ``TTSService``, ``store`` is not a ``HealthStore``, or an
                argument has the wrong type.
            ValueError: If fewer than two services are given, an id repeats,
                or a timeout, count or level is out of range.
        """
        super().__init__(name=name)
        resolved = resolve_services(services)
        if first_audio_timeout == "adaptive":
            adaptive: AdaptiveTimeout | None = adaptive_timeout or AdaptiveTimeout()
            fixed_first_audio = adaptive.fallback
        elif isinstance(first_audio_timeout, str):
            raise ValueError(
                f'first_audio_timeout must be seconds or "adaptive", got {first_audio_timeout!r}'
            )
        else:
            adaptive = None
            fixed_first_audio = positive_seconds("first_audio_timeout", first_audio_timeout)
        if adaptive_timeout is not None and not isinstance(adaptive_timeout, AdaptiveTimeout):
            raise TypeError(
                f"adaptive_timeout must be an AdaptiveTimeout, not {type(adaptive_timeout).__name__}"
            )
        self._deadlines = Deadlines(
            first_audio=fixed_first_audio,
            stall=positive_seconds("stall_timeout", stall_timeout),
            silence_floor=non_negative("silence_floor", silence_floor),
        )
        hedge_seconds = hedge_quantile = None
        if isinstance(hedge_after, str):
            hedge_quantile = parse_quantile(hedge_after)
        elif hedge_after is not None:
            hedge_seconds = positive_seconds("hedge_after", hedge_after)
        if not 0.0 <= non_negative("hedge_budget", hedge_budget) <= 1.0:
            raise ValueError(f"hedge_budget must be between 0 and 1, got {hedge_budget!r}")
        slow_after = (
            None if slow_threshold is None else positive_seconds("slow_threshold", slow_threshold)
        )
        self._prefer_faster = bool(prefer_faster)
        self._failure_threshold = positive_int("failure_threshold", failure_threshold)
        self._cooldown = positive_seconds("cooldown", cooldown)
        if store is not None and not isinstance(store, HealthStore):
            raise TypeError(f"store must be a HealthStore, not {type(store).__name__}")
        self._store: HealthStore = store if store is not None else default_store()
        self._speed = SpeedTracker(
            self._store,
            deadlines=self._deadlines,
            adaptive=adaptive,
            hedge_seconds=hedge_seconds,
            hedge_quantile=hedge_quantile,
            hedge_budget=float(hedge_budget),
            slow_threshold=slow_after,
        )

        if return_to_primary not in ("next_call", "immediately"):
            raise ValueError(
                f'return_to_primary must be "next_call" or "immediately", got {return_to_primary!r}'
            )
        self._return_immediately = return_to_primary == "immediately"
        if not 0.0 <= non_negative("canary_fraction", canary_fraction) <= 1.0:
            raise ValueError(f"canary_fraction must be between 0 and 1, got {canary_fraction!r}")
        self._canary_fraction = float(canary_fraction)
        self._probes = {normalize_provider_id(pid): probe for pid, probe in (probes or {}).items()}
        unknown = set(self._probes) - set(resolved)
        if unknown:
            raise ValueError(f"probes names unknown providers: {', '.join(sorted(unknown))}")
        self._probe_backoff = positive_seconds("probe_backoff", probe_backoff)
        self._probe_backoff_max = positive_seconds("probe_backoff_max", probe_backoff_max)
        self._recovery: Recovery | None = None
        self._store_down: set[str] = set()
        listeners = [*alerters, *([metrics] if metrics is not None else [])]
        for listener in listeners:
            if not isinstance(listener, FailoverListener):
                raise TypeError(
                    f"alerters and metrics take objects with on_event(event), "
                    f"not {type(listener).__name__}"
                )
        self._listeners: list[FailoverListener] = listeners

        self._links = {
            pid: ProviderLink(pid, service, self._pass_on, self._speed.stats(pid))
            for pid, service in resolved.items()
        }
        self._text_aggregator = SimpleTextAggregator()
        self._writer = StoreWriter(str(self))
        self._policy = CallPolicy(tuple(self._links), self._failure_threshold)
        self._turn: _Turn | None = None
        self._llm_turn: _Turn | None = None
        self._run: SentenceRun | None = None
        self._out_sample_rate = 0
        self._last_pts = 0

        self._register_event_handler("on_failover")
        self._register_event_handler("on_sentence_failed")
        self._register_event_handler("on_all_providers_failed")
        self._register_event_handler("on_provider_slow")

    #
    # Public properties
    #

    @property
    def provider_ids(self) -> list[str]:
        """The provider ids, in preference order."""
        return list(self._links)

    @property
    def services(self) -> dict[str, TTSService]:
        """The providers' services by id, in preference order."""
        return {pid: link.service for pid, link in self._links.items()}

    @property
    def active_provider(self) -> str:
        """The provider this call speaks with first."""
        return self._policy.call_provider

    @property
    def store(self) -> HealthStore:
        """The health store this service reads and writes."""
        return self._store

    #
    # Pipeline plumbing
    #

    @property
    def processors(self) -> list[FrameProcessor]:
        """The pipelines holding each provider's service."""
        return [link.pipeline for link in self._links.values()]

    def processors_with_metrics(self) -> list[FrameProcessor]:
        """The providers' services, which report their own TTFB and usage metrics."""
        return [p for link in self._links.values() for p in link.pipeline.processors_with_metrics()]

    async def setup(self, setup: FrameProcessorSetup):
        """Set up this processor and every provider's pipeline."""
        await super().setup(setup)
        self._out_sample_rate = setup.audio_out_sample_rate
        self._setup_finished()
        await self._setup_processors(self.processors, provider_setup(setup))

    async def cleanup(self):
        """Release the providers' services and the store writer. Safe to call twice."""
        await super().cleanup()
        await self._writer.stop()
        await self._cleanup_processors(self.processors)

    #
    # Frame processing
    #

    async def process_frame(self, frame: Frame, direction: FrameDirection):
        """Route a frame: speak text, keep lifecycle in step with the providers, pass the rest.

        Args:
            frame: The frame to process.
            direction: The direction of the frame.
        """
        await super().process_frame(frame, direction)

        if isinstance(frame, StartFrame):
            await self._start(frame)
            await self.push_frame(frame, direction)
        elif isinstance(frame, CancelFrame):
            await self._cancel(frame)
            await self.push_frame(frame, direction)
        elif isinstance(frame, InterruptionFrame):
            await self._interrupt(frame)
            await self.push_frame(frame, direction)
        elif isinstance(frame, EndFrame):
            await self._speak_pending_text()
            await self._end_turn()
            await self._stop(frame)
            await self.push_frame(frame, direction)
        elif direction == FrameDirection.UPSTREAM or getattr(frame, "skip_tts", False):
            await self.push_frame(frame, direction)
        elif isinstance(frame, LLMFullResponseStartFrame):
            await self._end_turn()
            self._llm_turn = self._turn = _Turn(str(uuid.uuid4()), append_to_context=True)
            await self.push_frame(frame, direction)
        elif isinstance(frame, LLMFullResponseEndFrame):
            await self._speak_pending_text()
            await self._end_turn()
            self._llm_turn = None
            await self.push_frame(frame, direction)
        elif isinstance(frame, TTSSpeakFrame):
            await self._speak_tts_speak_frame(frame)
        elif isinstance(frame, AggregatedTextFrame) and not isinstance(frame, TTSTextFrame):
            await self._speak(frame.text, frame.text_type)
        elif isinstance(frame, TextFrame) and not isinstance(frame, _NOT_SPOKEN):
            async for aggregate in self._text_aggregator.aggregate(frame.text):
                await self._speak(aggregate.text, aggregate.type)
        elif isinstance(frame, TTSUpdateSettingsFrame):
            await self._route_settings(frame, direction)
        else:
            await self.push_frame(frame, direction)

    async def _start(self, frame: StartFrame):
        ids = self.provider_ids
        self._writer.start()
        self._writer.submit(lambda: self._store.register_providers(ids))
        try:
            async with asyncio.timeout(_STORE_READ_TIMEOUT):
                health = await self._store.get(ids)
        except Exception as e:  # noqa: BLE001 - a call must start whatever the store does
            logger.warning(f"{self}: health store unreadable ({e!r}); assuming all providers up")
            health = {}
        controls = await self._read_controls()
        down = {pid for pid, h in health.items() if h.down_until is not None}
        canary = None
        preferred = ids[0]
        if preferred in down and self._canary_fraction and random.random() < self._canary_fraction:
            canary = preferred
            logger.info(f"{self}: this call is a canary for {preferred}")
        self._store_down = down
        self._policy = CallPolicy(ids, self._failure_threshold, health, controls, canary)
        await self._speed.seed(ids, _STORE_READ_TIMEOUT, str(self))
        if self._probes:
            self._recovery = recovery_for(
                self._store,
                first_audio_timeout=self._deadlines.first_audio,
                silence_floor=self._deadlines.silence_floor,
                backoff_base=self._probe_backoff,
                backoff_max=self._probe_backoff_max,
            )
            self._recovery.add(self._probes, self._listeners)
            for pid in down:
                self._recovery.watch(pid)
        if self._prefer_faster and not controls.pinned:
            self._prefer_faster_provider()
        if self._policy.down:
            logger.info(
                f"{self}: call starts on {self._policy.call_provider}; "
                f"marked down: {', '.join(sorted(self._policy.down))}"
            )
        for link in self._links.values():
            await link.send_lifecycle(frame, timeout=None)

    def _prefer_faster_provider(self):
        """Start the call on a faster provider while its own is reported slow."""
        current = self._policy.call_provider
        if not self._speed.is_slow(current):
            return
        for pid in self.provider_ids:
            if pid not in self._policy.down and not self._speed.is_slow(pid):
                if pid != current:
                    logger.info(f"{self}: {current} is slow; call starts on {pid}")
                    self._policy.call_provider = pid
                return

    async def _read_controls(self) -> Controls:
        try:
            async with asyncio.timeout(_STORE_READ_TIMEOUT):
                return await self._store.get_controls()
        except Exception as e:  # noqa: BLE001 - a call must start whatever the store does
            logger.warning(f"{self}: operator controls unreadable ({e!r}); using defaults")
            return Controls()

    async def _stop(self, frame: EndFrame):
        self._speed.share(self._writer)
        await self._writer.drain(timeout=2.0)
        await asyncio.gather(
            *(link.send_lifecycle(frame, _SERVICE_STOP_TIMEOUT) for link in self._links.values())
        )
        await self._writer.stop()

    async def _cancel(self, frame: CancelFrame):
        run, self._run = self._run, None
        if run is not None:
            await run.cancel()
        await asyncio.gather(*(link.send_lifecycle(frame, 1.0) for link in self._links.values()))
        await self._writer.stop()

    async def _interrupt(self, frame: InterruptionFrame):
        """Drop the sentence being spoken and whatever text was waiting."""
        run, self._run = self._run, None
        if run is not None:
            await run.cancel()
        await self._text_aggregator.handle_interruption()
        self._turn = self._llm_turn = None

    async def _route_settings(self, frame: TTSUpdateSettingsFrame, direction: FrameDirection):
        """Hand a settings update to the provider it names, or to the call's provider."""
        links = list(self._links.values())
        if frame.service is not None:
            targets = [link for link in links if link.service is frame.service]
            if not targets:  # addressed to a service further down the pipeline
                await self.push_frame(frame, direction)
                return
        elif frame.reach_inactive_services:
            targets = links
        else:
            targets = [self._links[self._policy.call_provider]]
        for link in targets:
            await link.pipeline.queue_frame(frame, direction)

    async def _pass_on(self, frame: Frame, direction: FrameDirection):
        """Pass on what a provider's service pushes that is not speech."""
        if isinstance(frame, ServiceMetadataFrame):
            call_service = self._links[self._policy.call_provider].service
            if frame.service_name != call_service.name:
                return
        await self.push_frame(frame, direction)

    #
    # Speaking
    #

    async def _speak_pending_text(self):
        remaining = await self._text_aggregator.flush()
        if remaining and remaining.text.strip():
            await self._speak(remaining.text, remaining.type)

    async def _speak_tts_speak_frame(self, frame: TTSSpeakFrame):
        """Speak a TTSSpeakFrame as a turn of its own, even inside an LLM reply."""
        outer = self._turn
        self._turn = _Turn(str(uuid.uuid4()), append_to_context=frame.append_to_context)
        await self._speak(frame.text, frame.text_type)
        await self._end_turn(push_aggregation=frame.append_to_context and self._llm_turn is None)
        self._turn = outer

    async def _end_turn(self, *, push_aggregation: bool = False):
        turn, self._turn = self._turn, None
        if turn is None or not turn.started:
            return
        await self.push_frame(TTSStoppedFrame(context_id=turn.context_id))
        if push_aggregation:
            await self.push_frame(LLMAssistantPushAggregationFrame())

    async def _speak(self, text: str, text_type: TextType | str):
        """Speak one sentence, moving to the next provider until one speaks it."""
        text = text.strip()
        if not text:
            return
        turn = self._turn
        standalone = turn is None
        if standalone:
            turn = self._turn = _Turn(str(uuid.uuid4()), append_to_context=True)
        assert turn is not None
        announcement = await self._announce(text, text_type, turn)
        if not turn.started:
            # As pipecat's services do: the turn's started frame goes out with
            # its first request, ahead of any audio.
            turn.started = True
            started = TTSStartedFrame(context_id=turn.context_id)
            started.append_to_context = turn.append_to_context
            await self.push_frame(started)

        if self._return_immediately:
            await self._return_if_recovered()
        unusable = [pid for pid, link in self._links.items() if not link.is_usable]
        order = self._policy.order_for_sentence(unusable)
        resampler = SentenceResampler(self._out_sample_rate)
        run = SentenceRun(
            links=self._links,
            order=order,
            text=text,
            deadlines=self._speed.deadlines,
            forward=lambda frame: self._forward(frame, turn, announcement, resampler),
            append_to_context=turn.append_to_context,
            hedge_after=self._speed.hedge_delay(order[0]) if order else None,
            hedge_allowed=self._speed.hedge_allowed,
            on_failover=lambda f, t, r: self._call_event_handler("on_failover", f, t, r),
            on_failed=lambda p, r: self._call_event_handler("on_sentence_failed", p, r),
            name=str(self),
        )
        self._run = run
        report = await run.run()
        self._run = None
        if report.spoken_by is not None and (tail := await resampler.flush()):
            await self._forward(tail, turn, announcement, resampler)

        for pid, result in report.attempts:
            self._notify(SentenceAttempted(pid, result.reason))
        for from_id, to_id, reason in report.hops:
            gap = report.first_audio_delay if to_id == report.spoken_by else None
            self._notify(FailedOver(from_id, to_id, reason, gap))
        for pid, p95 in self._speed.learn(order, report):
            logger.warning(f"{self}: {pid} is slow: p95 first audio {p95:.3f}s")
            self._notify(ProviderSlow(pid, p95))
            await self._call_event_handler("on_provider_slow", pid, p95)
        self._settle(report.failures, report.errors, report.spoken_by)
        if report.spoken_by is None:
            await self._all_failed(text, report.failures, unusable)
        if standalone:
            await self._end_turn()

    async def _return_if_recovered(self):
        """Move the call back to a preferred provider that recovered (``return_to_primary="immediately"``)."""
        try:
            async with asyncio.timeout(_STORE_READ_TIMEOUT):
                health = await self._store.get(self.provider_ids)
        except Exception:  # noqa: BLE001 - stay where we are if the store can't say
            return
        if moved := self._policy.refresh(health):
            logger.info(f"{self}: {moved[1]} recovered; call moves back from {moved[0]}")

    async def _announce(
        self, text: str, text_type: TextType | str, turn: _Turn
    ) -> AggregatedTextFrame:
        """Tell downstream a sentence is about to be spoken, as pipecat's TTS services do."""
        frame = AggregatedTextFrame(text, text_type)
        frame.context_id = turn.context_id
        frame.will_be_spoken = True
        frame.append_to_context = False
        frame.pts = max(self._last_pts, self.get_clock().get_time())
        await self.push_frame(frame)
        return frame

    async def _forward(
        self,
        frame: Frame,
        turn: _Turn,
        announcement: AggregatedTextFrame,
        resampler: SentenceResampler,
    ):
        """Push what the caller hears as one stream: one context id, at the pipeline's rate."""
        if isinstance(frame, TTSAudioRawFrame):
            frame = await resampler.resample(frame)
            if not frame.audio:
                return
        if isinstance(frame, (TTSTextFrame, AggregatedTextProgressFrame)):
            frame.segment_id = announcement.id
        frame.context_id = turn.context_id
        if frame.pts:
            self._last_pts = max(self._last_pts, frame.pts)
        await self.push_frame(frame)

    def _settle(
        self,
        failures: list[tuple[str, FailureReason]],
        errors: dict[str, str | None],
        spoken_by: str | None,
    ):
        """Apply the policy's decision and queue the store writes it calls for."""
        outcome = self._policy.sentence_done(failures, spoken_by)
        for pid, reason in failures:
            self._writer.submit(
                lambda pid=pid, reason=reason: self._store.record_failure(pid, reason)
            )
        if spoken_by is not None:
            self._writer.submit(lambda: self._store.record_success(spoken_by))
            if spoken_by in self._store_down:
                # A canary (or a last resort) spoke: the provider is back.
                self._store_down.discard(spoken_by)
                self._writer.submit(lambda: self._mark_up(spoken_by))
        for pid, reason in outcome.marked_down:
            logger.warning(f"{self}: marking {pid} down for {self._cooldown:g}s ({reason})")
            failed = sum(1 for p, _ in failures if p == pid)
            self._writer.submit(
                lambda pid=pid, reason=reason, failed=failed: self._mark_down(
                    pid, reason, errors.get(pid), failed
                )
            )
        if outcome.moved_to is not None:
            logger.warning(
                f"{self}: call moved from {outcome.moved_from} to {outcome.moved_to} for good"
            )

    async def _mark_down(self, pid: str, reason: FailureReason, error: str | None, failed: int):
        """Mark a provider down; the one worker whose write changed the state reports it."""
        if await self._store.mark_down(pid, reason=reason, cooldown=self._cooldown):
            self._notify(ProviderDown(pid, reason, error, time.time(), failed))
        self._policy.saw_down(pid)
        if self._recovery is not None:
            self._recovery.watch(pid)

    async def _mark_up(self, pid: str):
        health = (await self._store.get([pid]))[pid]
        if await self._store.mark_up(pid):
            outage = time.time() - health.since if health.since else None
            logger.info(f"{self}: {pid} spoke again; marked healthy")
            self._notify(ProviderUp(pid, outage))

    def _notify(self, event: FailoverEvent):
        for listener in self._listeners:
            try:
                listener.on_event(event)
            except Exception as e:  # noqa: BLE001 - a listener must never break the audio path
                logger.warning(f"{self}: {type(listener).__name__} failed on {event}: {e}")

    async def _all_failed(self, text: str, failures, unusable: list[str]):
        tried = [(pid, str(reason)) for pid, reason in failures]
        tried += [(pid, str(FailureReason.UNUSABLE)) for pid in unusable]
        error = AllProvidersFailedError(text, tried)
        logger.error(f"{self}: {error}")
        logger.debug(f"{self}: unspoken sentence [{text}]")
        await self._call_event_handler("on_all_providers_failed", text)
        await self.push_error(str(error), exception=error, category=ErrorCategory.SERVER)
