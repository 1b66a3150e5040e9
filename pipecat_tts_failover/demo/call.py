"""One demo call through a real pipecat pipeline: turns sent as an LLM would, audio caught at the caller's end.

The call's TTS is either a ``FailoverTTSService`` or, for ``--compare``,
pipecat's own ``ServiceSwitcher`` with ``ServiceSwitcherStrategyFailover``,
each around pipecat's real ``CartesiaTTSService`` (primary) and
``ElevenLabsTTSService`` (backup) pointed at the emulators.
"""

import asyncio
import inspect
import json
import re
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from loguru import logger
from pipecat.frames.frames import (
    AggregatedTextFrame,
    EndFrame,
    Frame,
    TTSAudioRawFrame,
    TTSSpeakFrame,
    TTSStoppedFrame,
    TTSTextFrame,
)
from pipecat.pipeline.pipeline import Pipeline
from pipecat.pipeline.worker import PipelineParams, PipelineWorker
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor
from pipecat.services.cartesia.tts import CartesiaTTSService
from pipecat.services.elevenlabs.tts import ElevenLabsTTSService
from pipecat.services.tts_service import TTSService
from pipecat.workers.runner import WorkerRunner

from pipecat_tts_failover.demo.script import BACKUP, PRIMARY, SCRIPT, Timing, Turn, sentences
from pipecat_tts_failover.demo.timeline import CallTimeline
from pipecat_tts_failover.events import FailoverEvent, ProbeFinished, ProviderDown, ProviderUp
from pipecat_tts_failover.store.base import HealthStore

API_KEY = "test-key"
VOICE = "demo-voice"
SAMPLE_RATE = 24000
FAILOVER, SWITCHER = "failover", "switcher"

_START_TIMEOUT = 15.0
_END_TIMEOUT = 10.0

BeforeTurn = Callable[[int], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class Endpoints:
    """Where the providers' emulators listen.

    Parameters:
        cartesia_ws: Cartesia's WebSocket endpoint (``CartesiaTTSService(url=...)``).
        cartesia_http: Cartesia's HTTP base URL (the recovery probe's ``base_url``).
        elevenlabs_ws: ElevenLabs' WebSocket base URL (``ElevenLabsTTSService(url=...)``).
    """

    cartesia_ws: str
    cartesia_http: str
    elevenlabs_ws: str

    @classmethod
    def of(cls, cartesia, elevenlabs) -> "Endpoints":
        """The endpoints of a started CartesiaEmulator and ElevenLabsEmulator."""
        return cls(cartesia.websocket_url, cartesia.http_url, elevenlabs.ws_url)


async def run_call(
    kind: str,
    endpoints: Endpoints,
    timeline: CallTimeline,
    timing: Timing,
    *,
    store: HealthStore | None = None,
    before_turn: BeforeTurn | None = None,
    on_change: Callable[[], None] | None = None,
    script: Sequence[Turn] = SCRIPT,
) -> CallTimeline:
    """Play the script through a real pipeline and record what the caller heard in ``timeline``.

    Each turn's sentences are sent together, as an LLM's reply arrives. The
    next turn starts once the caller has heard the last one (and said their
    line); a turn with no new frame for ``timing.give_up_wall`` is over.

    Args:
        kind: ``"failover"`` (FailoverTTSService) or ``"switcher"`` (pipecat's ServiceSwitcher).
        endpoints: The emulators.
        timeline: Where the call is recorded.
        timing: The call's timings.
        store: The FailoverTTSService's health store.
        before_turn: Awaited with the turn's index before each turn, as the
            caller starts speaking: where the demo breaks and fixes the primary.
        on_change: Called whenever the timeline changes.
        script: The call's turns.

    Returns:
        The timeline.
    """
    frames_arrived = asyncio.Event()

    def changed():
        if on_change is not None:
            on_change()

    services: dict[str, TTSService] = {
        PRIMARY: CartesiaTTSService(
            api_key=API_KEY,
            url=endpoints.cartesia_ws,
            settings=CartesiaTTSService.Settings(voice=VOICE),
            stop_frame_timeout_s=timing.stop_frame_wall,
        ),
        BACKUP: ElevenLabsTTSService(
            api_key=API_KEY,
            url=endpoints.elevenlabs_ws,
            settings=ElevenLabsTTSService.Settings(voice=VOICE),
            stop_frame_timeout_s=timing.stop_frame_wall,
        ),
    }
    if kind == FAILOVER:
        tts, speaker = _failover(services, endpoints, timeline, timing, store, changed)
    elif kind == SWITCHER:
        tts, speaker = _switcher(services, timeline, changed)
    else:
        raise ValueError(f'kind must be "failover" or "switcher", got {kind!r}')

    def arrived():
        frames_arrived.set()
        changed()

    sink = _CallerEnd(timeline, script, speaker, arrived)
    worker = PipelineWorker(
        Pipeline([tts, sink]),
        cancel_on_idle_timeout=False,
        enable_rtvi=False,
        params=PipelineParams(audio_out_sample_rate=timeline.sample_rate),
    )
    started = asyncio.Event()

    @worker.event_handler("on_pipeline_started")
    async def _on_started(_worker, _frame):
        started.set()

    runner = WorkerRunner(handle_sigint=False)
    await runner.add_workers(worker)
    run = asyncio.create_task(runner.run(), name=f"demo-call::{timeline.label}")
    finished = False
    try:
        try:
            async with asyncio.timeout(_START_TIMEOUT):
                await started.wait()
        except TimeoutError:
            raise RuntimeError(
                f"the {timeline.label} pipeline did not start within {_START_TIMEOUT:g} s"
            ) from None
        first = speaker.first()
        timeline.begin(first)
        if first != PRIMARY:
            timeline.event("start", f"call starts on {first}: {PRIMARY} is marked down")
        changed()
        await _play(worker, sink, timeline, timing, script, frames_arrived, before_turn, changed)
        timeline.finish()
        changed()
        finished = True
    finally:
        await _end(worker, run, graceful=finished)
    return timeline


async def _play(
    worker: PipelineWorker,
    sink: "_CallerEnd",
    timeline: CallTimeline,
    timing: Timing,
    script: Sequence[Turn],
    frames_arrived: asyncio.Event,
    before_turn: BeforeTurn | None,
    changed: Callable[[], None],
):
    index = 0
    for t, turn in enumerate(script):
        await asyncio.sleep(timeline.wall_until(timeline.playout_end))
        if before_turn is not None:
            await before_turn(t)
        if turn.caller:
            start = max(timeline.now(), timeline.playout_end)
            timeline.caller(turn.caller, start, start + timing.caller_speaks)
            changed()
            await asyncio.sleep(timeline.wall_until(start + timing.caller_speaks))
        timeline.turn_sent(t)
        changed()
        for text in turn.bot:
            await worker.queue_frame(TTSSpeakFrame(text))
        wanted = range(index, index + len(turn.bot))
        index += len(turn.bot)
        while not all(i in sink.stopped for i in wanted):
            frames_arrived.clear()
            try:
                async with asyncio.timeout(timing.give_up_wall):
                    await frames_arrived.wait()
            except TimeoutError:
                logger.info(f"demo {timeline.label}: turn {t + 1} given up")
                break
        timeline.turn_over(t)
        changed()
    await asyncio.sleep(timeline.wall_until(timeline.playout_end))


async def _end(worker: PipelineWorker, run: asyncio.Task, *, graceful: bool):
    """End the call: an EndFrame once it is over, a cancel if it was cut short or will not end."""
    if not run.done():
        if graceful:
            await worker.queue_frame(EndFrame())
            try:
                async with asyncio.timeout(_END_TIMEOUT):
                    await asyncio.shield(run)
            except TimeoutError:
                logger.warning("demo: the call did not end in time; cancelling it")
                graceful = False
        if not graceful:
            await worker.cancel()
            try:
                async with asyncio.timeout(_END_TIMEOUT):
                    await asyncio.shield(run)
            except TimeoutError:
                run.cancel()
    try:
        await run
    except asyncio.CancelledError:
        if not run.cancelled():
            raise


class _FailoverSpeaker:
    """Which provider the FailoverTTSService is speaking with right now."""

    def __init__(self, tts):
        self._tts = tts
        self._moved_to: str | None = None

    def first(self) -> str:
        return self._tts.active_provider

    def new_sentence(self):
        self._moved_to = None

    def failed_over(self, to_id: str):
        self._moved_to = to_id

    def __call__(self) -> str:
        return self._moved_to or self._tts.active_provider


class _SwitcherSpeaker:
    """Which service the ServiceSwitcher has active right now."""

    def __init__(self, switcher, names: dict[int, str]):
        self._switcher = switcher
        self._names = names

    def first(self) -> str:
        return self()

    def new_sentence(self):
        pass

    def __call__(self) -> str:
        return self._names[id(self._switcher.strategy.active_service)]


class _Narrator:
    """Puts the FailoverTTSService's events on the timeline (an alerter: returns at once)."""

    def __init__(self, timeline: CallTimeline, changed: Callable[[], None]):
        self._timeline = timeline
        self._changed = changed

    def on_event(self, event: FailoverEvent) -> None:
        if isinstance(event, ProviderDown):
            self._timeline.event(
                "down", f"{event.provider_id} marked down ({_words(event.reason)})"
            )
        elif isinstance(event, ProbeFinished) and not event.ok:
            self._timeline.event(
                "probe", f"probe of {event.provider_id} failed ({_words(event.reason)})"
            )
        elif isinstance(event, ProviderUp):
            self._timeline.event("up", f"{event.provider_id} back up: a probe spoke")
        else:
            return
        self._changed()


def _words(reason) -> str:
    """A FailureReason as words: ``no_first_audio`` is "no first audio"."""
    return str(reason).replace("_", " ")


# The demo's settings given in seconds (wall-clock when passed, seconds of the call when shown).
_DURATIONS = (
    "first_audio_timeout",
    "stall_timeout",
    "cooldown",
    "probe_backoff",
    "probe_backoff_max",
)


def failover_settings(timing: Timing) -> dict[str, Any]:
    """The settings the demo's FailoverTTSService gets, besides its services, store, probes and alerters.

    Short enough for a 30-second call to break, fail over, probe and come back,
    so most are not the defaults (see :func:`non_default_settings`).

    Args:
        timing: The call's timings.

    Returns:
        Keyword arguments, durations in wall-clock seconds.
    """
    return {
        "first_audio_timeout": timing.first_audio_wall,
        "stall_timeout": timing.stall_wall,
        "cooldown": timing.wall(timing.cooldown),
        "probe_backoff": timing.wall(timing.probe_backoff),
        "probe_backoff_max": timing.wall(timing.probe_backoff_max),
        "return_to_primary": "immediately",
    }


def non_default_settings(timing: Timing) -> list[str]:
    """The demo's FailoverTTSService settings that differ from the defaults, as ``name=value (default d)``.

    Durations are in seconds of the call (what the timeline shows, whatever ``--speed``).
    """
    from pipecat_tts_failover.health import HealthPolicy
    from pipecat_tts_failover.service import FailoverTTSService

    defaults = inspect.signature(FailoverTTSService.__init__).parameters
    shown = []
    for name, value in failover_settings(timing).items():
        if name in _DURATIONS:
            value = round(value * timing.speed, 3)
        default = defaults[name].default
        if name == "cooldown":  # the shorthand for the first ejection's length
            default = HealthPolicy().ejection
        if value != default:
            shown.append(f"{name}={_python(value)} (default {_python(default)})")
    shown.append(f'probes={{"{PRIMARY}": CartesiaProbe(...)}} (default none)')
    return shown


def _python(value: object) -> str:
    """A setting as written in Python: ``1.0``, ``"immediately"``."""
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return repr(float(value))
    return repr(value)


def _failover(services, endpoints, timeline, timing, store, changed):
    from pipecat_tts_failover.service import FailoverTTSService

    tts = FailoverTTSService(
        services=services,
        store=store,
        alerters=[_Narrator(timeline, changed)],
        probes={PRIMARY: _probe(endpoints)},
        name="DemoFailoverTTS",
        **failover_settings(timing),
    )
    speaker = _FailoverSpeaker(tts)

    @tts.event_handler("on_failover")
    async def _on_failover(_processor, from_id: str, to_id: str, reason):
        speaker.failed_over(to_id)
        timeline.event("failover", f"failover {from_id} → {to_id}: {_words(reason)}")
        changed()

    return tts, speaker


def _switcher(services, timeline, changed):
    from pipecat.pipeline.service_switcher import (
        ServiceSwitcher,
        ServiceSwitcherStrategyFailover,
    )

    switcher = ServiceSwitcher(
        services=list(services.values()), strategy_type=ServiceSwitcherStrategyFailover
    )
    names = {id(service): pid for pid, service in services.items()}

    @switcher.strategy.event_handler("on_service_switched")
    async def _on_switched(_strategy, service):
        timeline.event("switch", f"switched to {names.get(id(service), service.name)}")
        changed()

    return switcher, _SwitcherSpeaker(switcher, names)


def _normalized(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip()


class _CallerEnd(FrameProcessor):
    """The end of the pipeline, where the caller's phone would be: records what arrives.

    Sentences are told apart by their TTS context: each sentence's
    ``AggregatedTextFrame`` announces its text with its context id, and its
    audio and ``TTSStoppedFrame`` carry the same id.
    """

    def __init__(self, timeline: CallTimeline, script, speaker, arrived: Callable[[], None]):
        super().__init__(enable_direct_mode=True)
        self._timeline = timeline
        self._speaker = speaker
        self._arrived = arrived
        self._index = {_normalized(text): i for i, text in enumerate(sentences(tuple(script)))}
        self._by_context: dict[str, int] = {}
        self._current: int | None = None
        self.stopped: set[int] = set()

    async def process_frame(self, frame: Frame, direction: FrameDirection):
        await super().process_frame(frame, direction)
        if direction == FrameDirection.DOWNSTREAM:
            self._record(frame)
        await self.push_frame(frame, direction)

    def _record(self, frame: Frame):
        if isinstance(frame, AggregatedTextFrame) and not isinstance(frame, TTSTextFrame):
            index = self._index.get(_normalized(frame.text))
            if index is None:
                return
            self._current = index
            if frame.context_id:
                self._by_context[frame.context_id] = index
            self._speaker.new_sentence()
        elif isinstance(frame, TTSAudioRawFrame):
            index = self._by_context.get(frame.context_id or "", self._current)
            if index is None:
                return
            self._timeline.audio(index, self._speaker(), frame.audio, frame.sample_rate)
        elif isinstance(frame, TTSStoppedFrame):
            index = self._by_context.get(frame.context_id or "")
            if index is None:
                return
            self.stopped.add(index)
            self._timeline.stopped(index)
        else:
            return
        self._arrived()


def _probe(endpoints: Endpoints):
    """A recovery probe of the primary's emulator.

    The Cartesia SDK's ``tts.bytes`` reads the whole body before yielding, so
    the probe's first audio comes only once the whole text is spoken: a short
    text keeps that within the first-audio deadline.
    """
    from cartesia import AsyncCartesia  # noqa: F401 - imported now, not on the call's event loop

    from pipecat_tts_failover.probes import CartesiaProbe

    return CartesiaProbe(API_KEY, voice_id=VOICE, base_url=endpoints.cartesia_http, text="Hi.")
