"""FailoverTTSService: the processor that keeps a pipecat bot speaking when its TTS provider fails."""

import asyncio
import dataclasses
import random
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from loguru import logger
from pipecat.frames.frames import (
    CancelFrame,
    EndFrame,
    ErrorFrame,
    Frame,
    FrameProcessorPauseFrame,
    FrameProcessorPauseUrgentFrame,
    FrameProcessorResumeFrame,
    FrameProcessorResumeUrgentFrame,
    InterruptionFrame,
    StartFrame,
    SystemFrame,
    TTSUpdateSettingsFrame,
)
from pipecat.pipeline.base_pipeline import BasePipeline
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor, FrameProcessorSetup
from pipecat.services.tts_service import TTSService
from pipecat.utils.errors import ErrorCategory

from pipecat_tts_failover.config import (
    DEFAULT_FIRST_AUDIO_TIMEOUT,
    DEFAULT_SILENCE_FLOOR,
    DEFAULT_STALL_TIMEOUT,
    check_probe_backoff,
    non_negative,
    positive_int,
    positive_seconds,
)
from pipecat_tts_failover.detection import FailureReason, reason_for_error
from pipecat_tts_failover.downstream_push import DOWNSTREAM, DownstreamPusher
from pipecat_tts_failover.errors import AllProvidersFailedError
from pipecat_tts_failover.events import (
    FailedOver,
    FailoverEvent,
    FailoverListener,
    FailureExcused,
    ProbeFinished,
    ProviderDown,
    ProviderSlow,
    ProviderUp,
    SentenceAttempted,
)
from pipecat_tts_failover.frame_backlog import FrameBacklog
from pipecat_tts_failover.health import AttemptVerdict, HealthPolicy, is_blamed
from pipecat_tts_failover.latency import AdaptiveTimeout, parse_quantile
from pipecat_tts_failover.link_probe import probe_link
from pipecat_tts_failover.loop_lag import LoopLagMonitor, loop_lag_monitor
from pipecat_tts_failover.policy import CallPolicy
from pipecat_tts_failover.provider_link import ProviderLink, provider_setup, setup_done
from pipecat_tts_failover.providers import ServiceFactory, normalize_provider_id, resolve_services
from pipecat_tts_failover.recovery import Probe, ProbeVerdict, Recovery, recovery_for
from pipecat_tts_failover.relay import Relay, RelayHooks, SentenceReport
from pipecat_tts_failover.speed import SpeedTracker
from pipecat_tts_failover.store.base import Controls, HealthStore
from pipecat_tts_failover.store.memory import default_store
from pipecat_tts_failover.store.writer import StoreWriter
from pipecat_tts_failover.watch import Deadlines

# How long a call's start may wait on the store before it assumes every provider is healthy.
_STORE_READ_TIMEOUT = 0.25
# How long the end of a call waits for each provider's service to stop.
_SERVICE_STOP_TIMEOUT = 5.0
# How long the end of a call waits with nothing coming out of the speaker before it gives
# up on what is owed (it waits as long as speech keeps coming, failovers included).
_END_OF_CALL_QUIET = 15.0
# How long a backup on cold standby may take to connect when it is needed.
_COLD_START_TIMEOUT = 5.0
_STANDBY_MODES = ("warm", "cold")
# Pause and resume frames: pipecat's pause of a processor's frames, which the backlog holds.
_PAUSE_FRAMES = (FrameProcessorPauseFrame, FrameProcessorPauseUrgentFrame)
_RESUME_FRAMES = (FrameProcessorResumeFrame, FrameProcessorResumeUrgentFrame)
# Processed in the push that brings them, whatever waits: the call's start (nothing comes
# before it), its cancellation, and an interruption (it stops what holds the relay).
_AT_ONCE_FRAMES = (StartFrame, CancelFrame, InterruptionFrame)


class FailoverTTSService(BasePipeline):
    """A TTS service made of several providers that keeps speaking when one fails.

    Goes in the pipeline where a TTS service goes. Each provider's service runs
    inside it, linked straight to it, as a normal pipecat service; the call's frames
    go to the speaking provider's service as they come, and what it pushes
    goes on as it pushed it, so on a healthy call the stream downstream is the
    service's own (its text aggregation, skipped text, transforms, token
    streaming, word timestamps and errors). The processor watches it: an
    error, an exception, no audio within ``first_audio_timeout`` of a request,
    a gap longer than ``stall_timeout`` while speech is owed, no audio at all,
    or only digital silence fails the provider, and what the caller has not
    heard yet is handed to the next provider's service, from the first word not
    heard where the provider reports word timestamps, inside the same reply.

    The call moves at once: after ``failure_threshold`` failed sentences in a
    row (one by default) it stays for the rest of the call on the backup that
    spoke. Whether every new call avoids the provider is the fleet's decision,
    taken on evidence kept in the health store by the rules of ``health``
    (a :class:`HealthPolicy`): an isolated hiccup ejects nobody, a provider
    that keeps failing (confirmed by probes through its idle service in the
    call), fails at a high rate, or fails permanently is ejected, and is probed
    back to health before any caller meets it again.

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
        services: Mapping[str, TTSService | ServiceFactory] | Sequence[TTSService],
        first_audio_timeout: float | str = DEFAULT_FIRST_AUDIO_TIMEOUT,
        stall_timeout: float = DEFAULT_STALL_TIMEOUT,
        failure_threshold: int = 1,
        cooldown: float | None = None,
        health: HealthPolicy | None = None,
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
        standby: str = "warm",
        name: str | None = None,
    ):
        """Initialize the failover service.

        Args:
            services: The providers' TTS services in preference order: a dict of
                provider id to service, or a list (ids are then derived from the
                service classes: ``CartesiaTTSService`` gives ``"cartesia"``).
                At least two. Ids are normalized (case, spaces, ``-``/``_``).
                In a dict, a provider may be given as a factory instead: a
                function of no arguments that returns its service. With
                ``standby="cold"`` it is called only when the call first needs
                that provider, so a call that never fails over never builds
                its backup; with ``"warm"``, here.
            first_audio_timeout: Seconds from sending a sentence to its first
                audio byte before the provider has failed it, or ``"adaptive"``:
                each provider's deadline then follows its observed latency tail
                (see ``adaptive_timeout``).
            stall_timeout: Seconds the audio of a sentence may stop before its
                end (and the most digital silence in a row, in seconds of audio)
                before the provider has failed it.
            failure_threshold: Failed sentences in a row in this call before the
                call moves off a provider for good (the call's own move; it
                does not eject the provider for the fleet, ``health`` does).
                Permanent errors (authentication, authorization, invalid
                request) move at once.
            cooldown: Seconds the first ejection of a provider lasts: a
                shorthand for ``health=HealthPolicy(ejection=cooldown)``
                (later ejections of the same provider last longer).
            health: The rules by which the fleet ejects a provider, on the
                evidence of every sentence attempt of every call sharing the
                store. Default ``HealthPolicy()``; see the configuration docs.
            store: Where provider health is kept. None uses one in-memory store
                shared by every FailoverTTSService of the process.
            silence_floor: RMS level (on the 0..32768 scale of 16-bit audio) at
                or below which audio counts as digital silence.
            alerters: Alerters told when a provider goes down or comes back
                (``SlackWebhookAlerter``, ``CallbackAlerter``, ...). Alerts are
                sent from the alerters' own tasks, never on the audio path.
            metrics: A metrics listener such as ``PrometheusMetrics``.
            probes: Recovery probes by provider id (``CartesiaProbe``,
                ``ElevenLabsProbe``, ``ServiceProbe``). A provider that is
                ejected stays down until a probe speaks: it is probed shortly
                before its ejection ends, by one worker of the fleet, and
                again with exponential backoff while it fails. A provider
                without a probe of its own is probed through its own service
                in a live call that is not using it (the probe's audio goes
                nowhere), so no caller is the first to try it again.
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
            standby: How the providers the call is not speaking with wait:
                ``"warm"`` starts every provider's service with the call (a
                WebSocket service connects, and holds a session, for the whole
                call), so a failover speaks without connecting first;
                ``"cold"`` starts a provider's service only when the call first
                needs it, so a call holds one session, and a failover to a
                WebSocket provider pays for its connection. See the
                configuration docs for the measured trade-off.
            name: Name of this processor in logs.

        Raises:
            TypeError: If ``services`` is not a dict or list of pipecat
                ``TTSService``, ``store`` is not a ``HealthStore``, or an
                argument has the wrong type.
            ValueError: If fewer than two services are given, an id repeats,
                or a timeout, count or level is out of range.
        """
        super().__init__(name=name, enable_direct_mode=True)
        resolved = resolve_services(services)
        self._factories: dict[str, ServiceFactory] = {}
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
        if adaptive_timeout is not None and adaptive is None:
            raise ValueError(
                'adaptive_timeout is used only with first_audio_timeout="adaptive"; '
                f"got first_audio_timeout={first_audio_timeout!r}"
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
        if not isinstance(prefer_faster, bool):
            raise TypeError(f"prefer_faster must be True or False, got {prefer_faster!r}")
        self._prefer_faster = prefer_faster
        if standby not in _STANDBY_MODES:
            raise ValueError(f'standby must be "warm" or "cold", got {standby!r}')
        self._cold_standby = standby == "cold"
        for pid, given in resolved.items():
            if isinstance(given, TTSService):
                continue
            if self._cold_standby:
                self._factories[pid] = given
            else:
                resolved[pid] = _made_by(pid, given, resolved.values())
        self._failure_threshold = positive_int("failure_threshold", failure_threshold)
        self._health = _health_policy(health, cooldown)
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
        for pid, probe in self._probes.items():
            if not callable(probe):
                raise TypeError(
                    f"probes[{pid!r}] must be a probe (CartesiaProbe, ElevenLabsProbe, "
                    f"ServiceProbe or an async generator function), not {type(probe).__name__}"
                )
        self._probe_backoff, self._probe_backoff_max = check_probe_backoff(
            probe_backoff, probe_backoff_max
        )
        self._recovery: Recovery | None = None
        self._store_down: set[str] = set()
        self._lag: LoopLagMonitor | None = None
        # Providers whose unusable service or permanent failure this call has reported.
        self._reported_unusable: set[str] = set()
        # Each provider's last error, and the loop lag when it last failed.
        self._last_error: dict[str, tuple[ErrorCategory | None, str]] = {}
        self._lag_at_failure: dict[str, float] = {}
        # Failures recorded in the store as they happened, not yet seen in a report.
        self._recorded_early: dict[str, int] = {}
        # Providers sent a settings update since they last spoke: pipecat applies
        # some (ElevenLabs' voice settings) by closing the context under way.
        self._settings_sent: set[str] = set()
        # Probes through this call's idle services, and those of them that confirm a failure.
        self._probing: dict[str, asyncio.Task] = {}
        self._confirming: dict[str, asyncio.Task] = {}
        self._confirm_pending: set[str] = set()
        listeners = [*alerters, *([metrics] if metrics is not None else [])]
        for listener in listeners:
            if not isinstance(listener, FailoverListener):
                raise TypeError(
                    f"alerters and metrics take objects with on_event(event), "
                    f"not {type(listener).__name__}"
                )
        self._listeners: list[FailoverListener] = listeners

        self._links = {pid: ProviderLink(pid, self._speed.stats(pid)) for pid in resolved}
        for pid, given in resolved.items():
            if isinstance(given, TTSService):
                self._adopt(self._links[pid], given)
        self._writer = StoreWriter(str(self))
        self._pusher = DownstreamPusher(self)
        self._policy = CallPolicy(tuple(self._links), self._failure_threshold)
        self._relay = Relay(
            self._links,
            RelayHooks(
                push=self._pusher.push,
                pusher=self._pusher,
                push_upstream=lambda frame: self.push_frame(frame, FrameDirection.UPSTREAM),
                order=self._order_for_speech,
                deadlines=self._speed.deadlines,
                start_link=self._start_link,
                spawn=self._spawn,
                cancel=self.cancel_task,
                on_failed=self._sentence_failed,
                on_failover=lambda f, t, r: self._call_event_handler("on_failover", f, t, r),
                on_report=self._on_report,
                on_all_failed=self._all_failed,
                before_select=self._return_if_recovered if self._return_immediately else None,
                hedge_delay=self._speed.hedge_delay,
                hedge_allowed=self._speed.hedge_allowed,
                stolen=self._stolen_since,
            ),
            str(self),
        )
        # Data frames, and system frames apart: these go ahead of data frames,
        # as in pipecat's own queues, and wait only while the relay is held.
        self._backlog, self._system_backlog = (
            FrameBacklog(
                self._process_now,
                spawn=self._spawn,
                cancel=self.cancel_task,
                name=f"{self}::{kind}",
            )
            for kind in ("backlog", "system-backlog")
        )
        # Settings updates for providers whose factory is still to be called.
        self._settings_for_later: dict[str, list[TTSUpdateSettingsFrame]] = {}
        for link in self._links.values():
            link.listener = self._relay
        self._start_frame: StartFrame | None = None
        self._pipeline_setup: FrameProcessorSetup | None = None

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
        """The providers' services by id, in preference order.

        A provider given as a factory on cold standby is here once the call has
        built its service.
        """
        return {pid: link.service for pid, link in self._links.items() if link.service is not None}

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
        """The providers' services (those built so far)."""
        return list(self.services.values())

    def processors_with_metrics(self) -> list[FrameProcessor]:
        """The providers' services, which report their own TTFB and usage metrics."""
        services = self.processors
        return [s for s in services if s.can_generate_metrics()] + [
            p for s in services for p in s.processors_with_metrics()
        ]

    async def setup(self, setup: FrameProcessorSetup):
        """Set up this processor and the providers' services.

        pipecat's WebSocket services connect when they are set up: with cold
        standby only the preferred provider is, the others when the call
        first needs them.
        """
        await super().setup(setup)
        self._setup_finished()
        self._pipeline_setup = setup
        self._pusher.set_up(setup)
        links = list(self._links.values())
        await self._set_up_links(links[:1] if self._cold_standby else links)

    async def _set_up_links(self, links: list[ProviderLink]):
        for link in links:
            if link.service is None and link.attach_error is None:
                await self._build_service(link)
        links = [link for link in links if not link.set_up and link.service is not None]
        for link in links:
            link.set_up = True
        if links and self._pipeline_setup is not None:
            setup = provider_setup(self._pipeline_setup)
            await self._setup_processors([link.service for link in links], setup)
            setup_done(setup)

    async def _build_service(self, link: ProviderLink):
        """Call a provider's factory (cold standby) and link the service it returns.

        A factory that raises or returns no usable service leaves the provider
        unusable in this call, with the reason logged: the call goes on with
        the others, and the fleet's health of the provider is not touched.
        """
        pid = link.provider_id
        try:
            others = [other.service for other in self._links.values()]
            service = _made_by(pid, self._factories[pid], others)
            self._adopt(link, service)
        except Exception as e:  # noqa: BLE001 - the app's factory: any error it raises
            link.attach_error = str(e)
            self._last_error[pid] = (ErrorCategory.APPLICATION, link.attach_error)
            logger.error(f"{self}: {pid} has no service: {e}")
            return
        for frame in self._settings_for_later.pop(pid, ()):
            await service.queue_frame(frame)

    def _adopt(self, link: ProviderLink, service: TTSService):
        """Hold a provider's service: claimed by this processor, linked, its errors remembered."""
        _claim(service, self)
        link.attach(service)
        service.add_event_handler("on_error", self._remember_error)

    async def cleanup(self):
        """Release the providers' services and the store writer. Safe to call twice."""
        await super().cleanup()
        await self._system_backlog.cancel()
        await self._backlog.cancel()
        await self._end_probes()
        await self._writer.stop()
        await self._cleanup_processors(
            [link.service for link in self._links.values() if link.set_up]
        )

    #
    # Frame processing
    #

    async def queue_frame(
        self,
        frame: Frame,
        direction: FrameDirection = FrameDirection.DOWNSTREAM,
        callback=None,
    ):
        """Process a frame in the task that pushed it, or queue it behind one that waits.

        The processor runs in pipecat's direct mode: a frame of the call's
        speech is handed to the speaking provider's service in the push that
        brought it, so a sentence crosses as many queues as it would bare. A
        frame that would have to wait (the call's end, a reply whose provider
        must be started or the store read first, a failover under way), or
        that comes behind one that waits, or before the call started, or
        while the processor is paused, goes to the backlog instead and the
        push returns at once. System frames go ahead of the data frames
        waiting; they wait, in a backlog of their own, only while a failover
        or a reply's start holds the relay, so the processor before this one
        is not held up then either. The call's start, its cancellation and
        interruptions are processed at once. See :mod:`frame_backlog`.

        Args:
            frame: The frame.
            direction: Its direction.
            callback: Called once the frame is processed.
        """
        if self._cancelling:
            return
        if direction is not DOWNSTREAM or isinstance(frame, _AT_ONCE_FRAMES):
            at_once = True
        elif isinstance(frame, SystemFrame):
            backlog = self._system_backlog
            at_once = backlog.idle and self._relay.passes_at_once()
        else:
            backlog = self._backlog
            at_once = (
                backlog.idle
                and not isinstance(frame, EndFrame)
                and (isinstance(frame, TTSUpdateSettingsFrame) or self._relay.sends_at_once())
            )
        if at_once:
            await self._process_now(frame, direction, callback)
        else:
            backlog.add(frame, direction, callback)

    async def _process_now(self, frame: Frame, direction: FrameDirection, callback):
        """Process a frame in this task, as pipecat's direct mode does (its events, its errors)."""
        await FrameProcessor.queue_frame(self, frame, direction, callback)

    def _spawn(self, coroutine, name: str) -> asyncio.Task:
        return self.create_task(coroutine, name=name)

    async def process_frame(self, frame: Frame, direction: FrameDirection):
        """Route a frame: the call's frames to the speaking provider, lifecycle to every one.

        Args:
            frame: The frame to process.
            direction: The direction of the frame.
        """
        await super().process_frame(frame, direction)

        if isinstance(frame, StartFrame):
            await self._start(frame)
            await self.push_frame(frame, direction)
            self._system_backlog.start()
            self._backlog.start()
        elif isinstance(frame, CancelFrame):
            await self._system_backlog.cancel()
            await self._backlog.cancel()
            await self._cancel(frame)
            await self.push_frame(frame, direction)
        elif isinstance(frame, EndFrame):
            await self._stop(frame)
            await self.push_frame(frame, direction)
        elif direction == FrameDirection.UPSTREAM:
            await self.push_frame(frame, direction)
        elif isinstance(frame, InterruptionFrame):
            await self._backlog.interrupt()
            await self._relay.interrupt(frame)
            await self.push_frame(frame, direction)
        elif isinstance(frame, TTSUpdateSettingsFrame):
            await self._route_settings(frame, direction)
        else:
            if isinstance(frame, _PAUSE_FRAMES) and frame.processor.name == self.name:
                self._backlog.pause()
            elif isinstance(frame, _RESUME_FRAMES) and frame.processor.name == self.name:
                self._backlog.resume()
            await self._relay.send(frame)

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
        self._lag = loop_lag_monitor()
        self._lag.acquire()
        self._recovery = recovery_for(
            self._store,
            first_audio_timeout=self._deadlines.first_audio,
            silence_floor=self._deadlines.silence_floor,
            backoff_base=self._probe_backoff,
            backoff_max=self._probe_backoff_max,
        )
        self._recovery.add(self._probes, self._listeners)
        self._recovery.offer(self, self._recovery_probe)
        for pid in down:
            self._recovery.watch(pid)
        if self._prefer_faster and not controls.pinned:
            self._prefer_faster_provider()
        if self._policy.down:
            logger.info(
                f"{self}: call starts on {self._policy.call_provider}; "
                f"marked down: {', '.join(sorted(self._policy.down))}"
            )
        self._start_frame = frame
        call_link = self._links[self._policy.call_provider]
        starting = [
            link for link in self._links.values() if link is call_link or not self._cold_standby
        ]
        await self._set_up_links(starting)
        for link in starting:
            await link.send_lifecycle(frame, timeout=None)
        self._order_for_speech()  # reports a provider whose service is unusable already

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

    async def _start_link(self, link: ProviderLink) -> bool:
        """Start a provider's service the call has not started yet (cold standby)."""
        if link.started or self._start_frame is None:
            return True
        logger.info(f"{self}: starting {link.provider_id} (cold standby)")
        await self._set_up_links([link])
        if link.service is None:
            return False
        return await link.send_lifecycle(self._start_frame, _COLD_START_TIMEOUT)

    def _order_for_speech(self) -> list[str]:
        """The providers to try for what comes next, the call's provider first.

        A provider whose service has become unusable is left out, and
        reported once: events, the fleet's health, the call's move.
        """
        unusable = [pid for pid, link in self._links.items() if not link.is_usable]
        for pid in unusable:
            if pid not in self._reported_unusable:
                self._report_unusable(pid)
        skip = [*unusable, *self._probing]
        return self._policy.order_for_sentence(skip)

    def _report_unusable(self, pid: str):
        """Report a provider the call skips because pipecat marked its service unusable."""
        self._reported_unusable.add(pid)
        category, message = self._last_error.get(pid, (None, ""))
        reason = reason_for_error(category, raised=False, usable=False, message=message)
        if not reason.is_permanent:
            reason = FailureReason.UNUSABLE
        logger.warning(f"{self}: {pid} is unusable ({reason}); skipping it")
        if pid in self._policy.down:
            # The call had left it already, and said so: only the fleet learns more.
            self._record(pid, reason, message or None)
            return
        moved = self._policy.leave(pid)

        async def report():
            self._notify(SentenceAttempted(pid, reason))
            await self._call_event_handler("on_sentence_failed", pid, reason)
            if moved is not None:
                self._notify(FailedOver(moved[0], moved[1], reason, None))
                await self._call_event_handler("on_failover", moved[0], moved[1], reason)

        self.create_task(report(), name=f"unusable::{pid}")
        self._record(pid, reason, message or None)

    def _stolen_since(self, since: float) -> float:
        """Seconds the event loop lost since ``since``: the call's deadlines give them back."""
        return self._lag.stolen_since(since) if self._lag is not None else 0.0

    def _remember_error(self, service: TTSService, error: ErrorFrame):
        """Keep each provider's last error: it names why a service became unusable."""
        for pid, link in self._links.items():
            if link.service is service:
                self._last_error[pid] = (error.category, error.error)

    async def _stop(self, frame: EndFrame):
        await self._relay.finish(frame, _END_OF_CALL_QUIET)
        self._speed.share(self._writer)
        await self._writer.drain(timeout=2.0)
        await self._finish_confirmations()
        await self._end_probes()
        # A fresh EndFrame each: an interrupted service may have dropped the call's own.
        await asyncio.gather(
            *(
                link.send_lifecycle(EndFrame(), _SERVICE_STOP_TIMEOUT)
                for link in self._links.values()
                if link.started and not link.ended
            )
        )
        await self._writer.stop()

    async def _cancel(self, frame: CancelFrame):
        await self._end_probes()
        await self._relay.cancel()
        await asyncio.gather(
            *(
                link.send_lifecycle(frame, 1.0)
                for link in self._links.values()
                if link.started and not link.ended
            )
        )
        await self._writer.stop()

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
            targets = [self._links[self._relay.speaker_id or self._policy.call_provider]]
        for link in targets:
            self._settings_sent.add(link.provider_id)
            if link.service is not None:
                await link.service.queue_frame(frame, direction)
            elif link.attach_error is None:
                self._settings_for_later.setdefault(link.provider_id, []).append(frame)

    #
    # What the relay reports
    #

    async def _on_report(self, report: SentenceReport):
        """Record how a span of speech went: events, learning, the policy and the store."""
        for pid, reason in report.failures:
            self._notify(SentenceAttempted(pid, reason))
        if report.spoken_by is not None:
            for _ in range(max(1, report.sentences)):
                self._notify(SentenceAttempted(report.spoken_by, None))
        for from_id, to_id, reason in report.hops:
            gap = report.first_audio_delay if to_id == report.spoken_by else None
            self._notify(FailedOver(from_id, to_id, reason, gap))
        for pid, p95 in self._speed.learn(list(self._links), report):
            logger.warning(f"{self}: {pid} is slow: p95 first audio {p95:.3f}s")
            self._notify(ProviderSlow(pid, p95))
            await self._call_event_handler("on_provider_slow", pid, p95)
        self._settle(report.failures, report.errors, report.spoken_by)

    async def _return_if_recovered(self):
        """Move the call back to a preferred provider that recovered (``return_to_primary="immediately"``)."""
        try:
            async with asyncio.timeout(_STORE_READ_TIMEOUT):
                health = await self._store.get(self.provider_ids)
        except Exception:  # noqa: BLE001 - stay where we are if the store can't say
            return
        if moved := self._policy.refresh(health):
            logger.info(f"{self}: {moved[1]} recovered; call moves back from {moved[0]}")

    def _settle(
        self,
        failures: list[tuple[str, FailureReason]],
        errors: dict[str, str | None],
        spoken_by: str | None,
    ):
        """Apply the call's move and record every attempt in the fleet's health."""
        outcome = self._policy.sentence_done(failures, spoken_by)
        for pid, reason in failures:
            if self._recorded_early.get(pid):
                self._recorded_early[pid] -= 1  # recorded when it happened
                continue
            self._record(pid, reason, errors.get(pid), confirm=True)
        if spoken_by is not None:
            self._settings_sent.discard(spoken_by)
            self._record(spoken_by, None)
            if spoken_by in self._store_down:
                # A canary (or a last resort) spoke: the provider is back.
                self._store_down.discard(spoken_by)
                self._writer.submit(lambda: self._mark_up(spoken_by))
        if outcome.moved_to is not None:
            logger.warning(
                f"{self}: call moved from {outcome.moved_from} to {outcome.moved_to} for good"
            )
        self._confirm_when_idle()

    async def _sentence_failed(self, pid: str, reason: FailureReason):
        """A provider failed what it was speaking: tell the fleet at once (not when the replay is over), and the app."""
        if self._lag is not None:
            since = asyncio.get_running_loop().time() - self._deadlines.first_audio - 0.5
            self._lag_at_failure[pid] = self._lag.worst_since(since)
        if reason.is_permanent:
            self._reported_unusable.add(pid)
        self._recorded_early[pid] = self._recorded_early.get(pid, 0) + 1
        error = self._last_error.get(pid, (None, None))[1]
        self._record(pid, reason, error, confirm=True)
        await self._call_event_handler("on_sentence_failed", pid, reason)

    def _excuse(self, pid: str, reason: FailureReason, lag: float) -> str | None:
        """Why a failure is not held against the provider, if it is not."""
        if not is_blamed(reason):
            return "client_misuse"
        if self._links[pid].attach_error is not None:
            return "no_service"  # the app's factory gave none: no fault of the provider
        if reason is FailureReason.NO_AUDIO and pid in self._settings_sent:
            # The context the app's settings change closed under the reply.
            self._settings_sent.discard(pid)
            return "client_misuse"
        if lag > self._health.max_loop_lag:
            return "loop_lag"
        return None

    def _record(
        self, pid: str, failure: FailureReason | None, error: str | None = None, confirm=False
    ):
        """Queue one attempt's outcome for the fleet's health (off the audio path)."""
        if failure is not None:
            lag = self._lag_at_failure.pop(pid, 0.0)
            if cause := self._excuse(pid, failure, lag):
                logger.info(f"{self}: {pid} failed ({failure}) but is not blamed: {cause}")
                self._notify(FailureExcused(pid, failure, cause))
                return
        self._writer.submit(lambda: self._write_attempt(pid, failure, error, confirm=confirm))

    async def _write_attempt(
        self, pid: str, failure: FailureReason | None, error: str | None, *, confirm: bool
    ) -> AttemptVerdict:
        """Record an attempt in the store; report an ejection this write made.

        With ``confirm``, a failure that ejected nobody is checked at once by
        probes through the provider's now idle service in this call.
        """
        verdict = await self._store.record_attempt(
            pid,
            failure,
            policy=self._health,
            peers=self.provider_ids,
            draw=random.uniform(-1.0, 1.0),
        )
        if failure is None:
            return verdict
        if verdict.ejected:
            now = time.time()
            seconds = verdict.down_until - now if verdict.down_until else None
            logger.warning(
                f"{self}: {pid} ejected for the fleet ({verdict.rule}: {failure})"
                + (f" for {seconds:.0f}s" if seconds else "")
            )
            self._notify(ProviderDown(pid, failure, error, now, 1, verdict.rule, seconds))
            self._eject_seen(pid)
        elif verdict.spared:
            logger.info(f"{self}: {pid} kept in: every other provider is down (panic floor)")
            self._notify(FailureExcused(pid, failure, "panic_floor"))
        elif verdict.down_until is not None:
            self._eject_seen(pid)
        elif confirm and self._health.confirm_probes:
            # Probed once the call no longer uses it (at once if it has moved on).
            self._confirm_pending.add(pid)
            self._confirm_when_idle()
        return verdict

    def _eject_seen(self, pid: str):
        """The fleet ejected a provider: this call leaves it, and recovery watches it."""
        self._store_down.add(pid)
        self._policy.saw_down(pid)
        if self._recovery is not None:
            self._recovery.watch(pid)

    #
    # Probes through the call's idle services
    #

    def _can_probe(self, link: ProviderLink) -> bool:
        """Whether a provider's service in this call is free for a probe."""
        return (
            link.provider_id != self._policy.call_provider
            and link.provider_id not in self._probing
            and not link.ended
            and link.is_usable
            and (link.started or self._cold_standby)
            and self._start_frame is not None
            and not self._relay.uses(link)
        )

    def _confirm_when_idle(self):
        """Start the confirmations owed for providers the call has stopped using."""
        for pid in list(self._confirm_pending):
            if self._can_probe(self._links[pid]):
                self._confirm_pending.discard(pid)
                self._confirm(pid)

    def _confirm(self, pid: str):
        """Probe a provider that just failed, up to ``confirm_probes`` times, and record the outcomes."""
        link = self._links[pid]

        async def confirm():
            for _ in range(self._health.confirm_probes):
                verdict = await self._probe(link, "confirm")
                if verdict.reason is not None and self._excuse(pid, verdict.reason, verdict.lag):
                    return
                recorded = await self._write_attempt(
                    pid, verdict.reason, verdict.error, confirm=False
                )
                if verdict.ok or recorded.down_until is not None:
                    return
                if not self._can_probe_again(link):
                    return

        task = self.create_task(confirm(), name=f"confirm::{pid}")
        self._probing[pid] = self._confirming[pid] = task
        task.add_done_callback(lambda _: self._probing.pop(pid, None))
        task.add_done_callback(lambda _: self._confirming.pop(pid, None))

    def _can_probe_again(self, link: ProviderLink) -> bool:
        return not link.ended and link.is_usable and not self._relay.uses(link)

    async def _probe(self, link: ProviderLink, purpose: str) -> "_Probed":
        """One probe through an idle link; the loop's worst lag during it comes with the verdict."""
        await self._start_link(link)
        loop = asyncio.get_running_loop()
        started = loop.time()
        verdict = await probe_link(
            link,
            first_audio_timeout=self._speed.deadlines(link.provider_id, False).first_audio,
            silence_floor=self._deadlines.silence_floor,
        )
        self._notify(
            ProbeFinished(link.provider_id, verdict.ok, verdict.reason, verdict.seconds, purpose)
        )
        lag = self._lag.worst_since(started) if self._lag is not None else 0.0
        return _Probed(verdict.ok, verdict.reason, verdict.error, lag)

    def _recovery_probe(self, pid: str):
        """Offer recovery a probe of an ejected provider through this call's idle service."""
        link = self._links.get(pid)
        if link is None or not self._can_probe(link):
            return None

        async def run() -> ProbeVerdict | None:
            if not self._can_probe(link):
                return None
            task = self.create_task(self._probe(link, "recovery"), name=f"recovery-probe::{pid}")
            self._probing[pid] = task
            try:
                probed = await task
            except asyncio.CancelledError:
                if task.cancelled() and not asyncio.current_task().cancelling():
                    return None  # the call ended under the probe: no verdict
                raise
            finally:
                self._probing.pop(pid, None)
            if probed.reason is not None and self._excuse(pid, probed.reason, probed.lag):
                return None
            return ProbeVerdict(probed.ok, probed.reason, 0.0, probed.error)

        return run

    async def _finish_confirmations(self):
        """Let confirmation probes in flight finish at the end of a call: the fleet needs their evidence."""
        tasks = list(self._confirming.values())
        if not tasks:
            return
        bound = self._health.confirm_probes * (self._deadlines.first_audio + 1.0)
        await asyncio.wait(tasks, timeout=bound)

    async def _end_probes(self):
        """Stop this call's probes and its offer to recovery; let go of the lag monitor."""
        if self._recovery is not None:
            self._recovery.withdraw(self)
        for task in list(self._probing.values()):
            await self.cancel_task(task)
        self._probing.clear()
        if self._lag is not None:
            lag, self._lag = self._lag, None
            await lag.release()

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

    async def _all_failed(self, text: str, report: SentenceReport):
        """Every provider failed: tell the pipeline, with each provider's own error."""
        error = AllProvidersFailedError(
            text, [(pid, str(reason)) for pid, reason in report.failures], report.errors
        )
        logger.error(f"{self}: {error}")
        logger.debug(f"{self}: unspoken text [{text}]")
        await self._call_event_handler("on_all_providers_failed", text)
        await self.push_error(str(error), exception=error, category=ErrorCategory.SERVER)


@dataclass(frozen=True, slots=True)
class _Probed:
    """A probe's verdict through a call's idle service, with the loop's worst lag during it."""

    ok: bool
    reason: FailureReason | None
    error: str | None
    lag: float


def _health_policy(health: HealthPolicy | None, cooldown: float | None) -> HealthPolicy:
    """The health policy from ``health=`` and the ``cooldown=`` shorthand."""
    if health is not None and not isinstance(health, HealthPolicy):
        raise TypeError(f"health must be a HealthPolicy, not {type(health).__name__}")
    if cooldown is None:
        return health or HealthPolicy()
    seconds = positive_seconds("cooldown", cooldown)
    if health is not None:
        raise ValueError(
            "give cooldown or health, not both: cooldown=N is HealthPolicy(ejection=N)"
        )
    defaults = HealthPolicy()
    return dataclasses.replace(
        defaults, ejection=seconds, max_ejection=max(seconds, defaults.max_ejection)
    )


def _made_by(pid: str, factory: ServiceFactory, others: Iterable[object]) -> TTSService:
    """The service a provider's factory returns.

    Raises:
        TypeError: If it is not a pipecat TTSService.
        ValueError: If it is one of ``others`` (another provider's service).
    """
    service = factory()
    if not isinstance(service, TTSService):
        raise TypeError(
            f"services[{pid!r}]: its factory returned {type(service).__name__}, "
            "which is not a pipecat TTSService"
        )
    if any(service is other for other in others):
        raise ValueError(f"services[{pid!r}]: its factory returned another provider's service")
    return service


def _claim(service: TTSService, owner: FailoverTTSService):
    """Mark a service as held by one FailoverTTSService: one service cannot serve two."""
    held_by = getattr(service, "_pipecat_tts_failover_owner", None)
    if held_by is not None and held_by is not owner:
        raise ValueError(
            f"services: {service} is already held by {held_by}; "
            "give each FailoverTTSService services of its own"
        )
    service._pipecat_tts_failover_owner = owner
