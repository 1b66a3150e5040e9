"""The call's text through one provider's service at a time, moved to the next one when it fails."""

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field

from loguru import logger
from pipecat.frames.frames import (
    AggregatedTextFrame,
    AggregatedTextProgressFrame,
    EndFrame,
    ErrorFrame,
    Frame,
    InterruptionFrame,
    LLMFullResponseEndFrame,
    LLMFullResponseStartFrame,
    SystemFrame,
    TTSAudioRawFrame,
    TTSStartedFrame,
    TTSStoppedFrame,
    TTSTextFrame,
)
from pipecat.processors.frame_processor import FrameDirection
from pipecat.utils.errors import ErrorCategory
from pipecat.utils.text.base_text_aggregator import TextType

from pipecat_tts_failover.detection import FailureReason, reason_for_error_frame
from pipecat_tts_failover.downstream_push import DOWNSTREAM, DownstreamPusher
from pipecat_tts_failover.ledger import Ledger
from pipecat_tts_failover.provider_link import ProviderLink
from pipecat_tts_failover.speakable import has_alnum
from pipecat_tts_failover.watch import Deadlines, SpeechWatch

_WORD_FRAMES = (TTSTextFrame, AggregatedTextProgressFrame)
# A wait bounded by progress, not by time: a day stands in for no bound.
_FOREVER = 86400.0


@dataclass
class SentenceReport:
    """How one span of speech went: from a request until the provider had spoken all it was asked.

    Parameters:
        spoken_by: The provider that finished it, or None if every one failed.
        failures: ``(provider_id, reason)`` for each failure, in order.
        errors: The first error message of each provider that failed.
        hops: ``(from_id, to_id, reason)`` for each move to another provider.
        first_audio_delay: Seconds from the first request of the span to the
            first audible audio of the provider that spoke it.
        sentences: Segments (sentences) the provider that spoke announced in the span.
        latencies: ``(provider_id, seconds)`` first-audio latencies measured.
        hedged_to: The provider a hedge was sent to, if one was.
    """

    spoken_by: str | None = None
    failures: list[tuple[str, FailureReason]] = field(default_factory=list)
    errors: dict[str, str | None] = field(default_factory=dict)
    hops: list[tuple[str, str, FailureReason]] = field(default_factory=list)
    first_audio_delay: float | None = None
    latencies: list[tuple[str, float]] = field(default_factory=list)
    hedged_to: str | None = None
    sentences: int = 0


@dataclass
class RelayHooks:
    """What the relay tells its owner.

    Parameters:
        push: Pushes a frame downstream (what the caller gets).
        push_upstream: Pushes a frame upstream.
        order: The providers to try for the next span, call's provider first.
        deadlines: A provider's deadlines; the flag says it is the last one left.
        start_link: Starts a provider's service if it is not running yet
            (cold standby); returns whether it is ready.
        spawn: Starts a task owned by the processor.
        cancel: Cancels and awaits such a task.
        on_failed: Awaited when a provider fails.
        on_failover: Awaited when the speech moves to another provider.
        on_report: Awaited with the report of each finished span.
        on_all_failed: Awaited with the unspoken text when every provider failed.
        before_select: Awaited before the speaker is chosen for what comes next.
        hedge_delay: Seconds a request may wait for audio before it is hedged, or None.
        hedge_allowed: Whether the hedge budget allows one more hedge of a provider.
        stolen: Seconds this process's event loop lost since a loop time: a
            deadline gives them back to the provider.
        pusher: What pushing downstream needs, for a chunk of audio on the
            audio path of a healthy call to be pushed inline (``push``
            pushes it if not given).
    """

    push: Callable[[Frame], Awaitable[None]]
    push_upstream: Callable[[Frame], Awaitable[None]]
    order: Callable[[], list[str]]
    deadlines: Callable[[str, bool], Deadlines]
    start_link: Callable[[ProviderLink], Awaitable[bool]]
    spawn: Callable[[Awaitable[None], str], asyncio.Task]
    cancel: Callable[[asyncio.Task], Awaitable[None]]
    on_failed: Callable[[str, FailureReason], Awaitable[None]]
    on_failover: Callable[[str, str, FailureReason], Awaitable[None]]
    on_report: Callable[[SentenceReport], Awaitable[None]]
    on_all_failed: Callable[[str, SentenceReport], Awaitable[None]]
    before_select: Callable[[], Awaitable[None]] | None = None
    hedge_delay: Callable[[str], float | None] = lambda provider_id: None
    hedge_allowed: Callable[[str], bool] = lambda provider_id: False
    stolen: Callable[[float], float] | None = None
    pusher: DownstreamPusher | None = None


class Relay:
    """Hands the call's frames to one provider's service and passes on what it pushes.

    On a healthy call the relay is a wire: each frame goes to the speaking
    provider's service as it came, and what the service pushes goes on as it
    was pushed, so the stream downstream is the service's own. A
    :class:`SpeechWatch` keeps the deadlines and a :class:`Ledger` what the
    caller has not heard yet. When the provider fails, its service is
    interrupted (nothing more of it reaches the caller) and the next provider's
    service is handed what is still owed, text from the first word not heard,
    inside the same reply; downstream still sees one reply: the next service's
    started frame is dropped and its frames carry the reply's context id until
    the reply's stop frame.

    Args:
        links: The providers' links by id, in preference order.
        hooks: What the relay tells its owner.
        name: Used in log lines.
    """

    # One per call, held by hundreds of calls at once: no instance dict.
    __slots__ = (
        "_announcements",
        "_context_map",
        "_cut_words_to_drop",
        "_deferred_error",
        "_ending",
        "_failover",
        "_hedge",
        "_hedge_held",
        "_hedge_task",
        "_hedge_timer",
        "_hedge_watch",
        "_held",
        "_hooks",
        "_in_reply",
        "_last_word_out",
        "_ledger",
        "_links",
        "_lock",
        "_made_up",
        "_name",
        "_open_context",
        "_order",
        "_pusher",
        "_release",
        "_replaced_announcements",
        "_report",
        "_reselect",
        "_segment_map",
        "_span_started",
        "_speaker_changed",
        "_splice_next_start",
        "_stop_ahead_context",
        "_stops_ahead",
        "_tried",
        "_watch",
        "speaker",
    )

    def __init__(self, links: Mapping[str, ProviderLink], hooks: RelayHooks, name: str):
        self._links = links
        self._hooks = hooks
        self._pusher = hooks.pusher
        self._name = name
        self._lock = asyncio.Lock()
        self.speaker: ProviderLink | None = None
        self._watch: SpeechWatch | None = None
        self._ledger = Ledger()
        # Frames held while the speaker sends only silence after a request.
        self._held: list[Frame] | None = None
        self._report = SentenceReport()
        self._order: list[str] = []
        self._tried: list[str] = []
        self._span_started: float | None = None
        # An LLM reply was handed to the speaker and has not come out ended.
        self._in_reply = False
        # The reply's started frame that downstream saw, without its stop frame yet.
        self._open_context: str | None = None
        self._splice_next_start = False
        self._context_map: dict[str, str] = {}
        # Ids of frames the relay made up (a reply start for a new speaker): not passed on.
        self._made_up: set[int] = set()
        self._cut_words_to_drop = 0
        self._last_word_out: int | None = None
        # The segment announcements (of text with something to say) the caller
        # saw in the context now playing, as (the id the caller saw, the
        # speaker's own), and those the next speaker's announcements stand in
        # for after a failover, in order.
        self._announcements: list[tuple[int, int]] = []
        self._replaced_announcements: list[int] = []
        self._segment_map: dict[int, int] = {}
        # Stop frames pushed ahead of their context's playback (ids), the
        # context of one pushed in the step under way, and an error that waits
        # for that context's audio to play.
        self._stops_ahead: set[int] = set()
        self._stop_ahead_context: str | None = None
        # An error of the speaker's, with the context whose audio it still plays.
        self._deferred_error: tuple[ProviderLink, ErrorFrame, str | None] | None = None
        self._failover: asyncio.Task | None = None
        self._release: asyncio.Task | None = None
        # A hedge: the next provider speaking what is owed in parallel, its
        # frames held until it or the speaker turns audible first.
        self._hedge: ProviderLink | None = None
        self._hedge_watch: SpeechWatch | None = None
        self._hedge_held: list[Frame] = []
        self._hedge_timer: asyncio.TimerHandle | None = None
        self._hedge_task: asyncio.Task | None = None
        self._reselect = True
        self._ending = False
        # Made when the end of the call waits on the speaker, not held for the whole
        # call: an asyncio.Event holds a deque (about 600 bytes).
        self._speaker_changed: asyncio.Event | None = None

    def _signal_speaker_changed(self):
        if self._speaker_changed is not None:
            self._speaker_changed.set()

    @property
    def speaker_id(self) -> str | None:
        """The provider speaking now."""
        return None if self.speaker is None else self.speaker.provider_id

    def uses(self, link: ProviderLink) -> bool:
        """Whether the call speaks, or hedges, with a provider's link now."""
        return link is self.speaker or link is self._hedge

    def _idle(self) -> bool:
        watch = self._watch
        return (
            self._ledger.empty
            and (watch is None or watch.idle)
            and self._held is None
            and not self._in_reply
            and (self._failover is None or self._failover.done())
        )

    #
    # Frames from the pipeline
    #

    def sends_at_once(self) -> bool:
        """Whether :meth:`send` would hand a data frame over without waiting on anything.

        Not while a failover or an interruption holds the relay, nor where the
        next reply's speaker must be started first (cold standby) or the store
        read first (``return_to_primary="immediately"``).
        """
        if self._lock.locked():
            return False
        speaker = self.speaker
        if speaker is not None and (self._ending or not (self._reselect or self._idle())):
            return True
        if self._hooks.before_select is not None:
            return False
        order = self._hooks.order()
        link = self._links[order[0]] if order else next(iter(self._links.values()))
        return link is speaker or link.started

    def passes_at_once(self) -> bool:
        """Whether :meth:`send` would hand a system frame over without waiting on anything."""
        if self._lock.locked():
            return False
        return self.speaker is not None or self.sends_at_once()

    async def send(self, frame: Frame):
        """Hand a frame to the speaking provider's service."""
        async with self._lock:
            if self.speaker is None or (
                not self._ending
                and not isinstance(frame, SystemFrame)
                and (self._reselect or self._idle())
            ):
                await self._select()
            assert self.speaker is not None
            if not isinstance(frame, SystemFrame):
                self._ledger.add(frame)
            if isinstance(frame, LLMFullResponseStartFrame):
                self._in_reply = True
            await self.speaker.send(frame)
            if self._hedge is not None:
                await self._hedge.send(frame)

    async def interrupt(self, frame: InterruptionFrame):
        """Drop everything owed; the speaker's service handles the interruption too."""
        await self._cancel_failover()
        async with self._lock:
            if self.speaker is not None:
                await self.speaker.interrupt(frame)
            await self._drop_hedge()
            self._reset()

    async def finish(self, frame: EndFrame, quiet: float):
        """Hand the end of the call to the speaker and wait until it has spoken everything.

        However long what is owed takes to play (an overloaded worker plays
        slower than real time), the end waits for it while it comes out; it
        gives up only once nothing has come out of the speaker for ``quiet``
        seconds, and says so.
        """
        loop = asyncio.get_running_loop()
        # The call stays with the provider speaking its last words.
        self._ending = True
        progress = loop.time()
        while True:
            async with self._lock:
                if self.speaker is None:
                    break
                speaker = self.speaker
                if self._speaker_changed is None:
                    self._speaker_changed = asyncio.Event()
                speaker_changed = self._speaker_changed
                speaker_changed.clear()
            came_out = asyncio.ensure_future(speaker.send_lifecycle(frame, _FOREVER))
            changed = asyncio.ensure_future(speaker_changed.wait())
            while not came_out.done() and not changed.done():
                await asyncio.wait(
                    {came_out, changed},
                    timeout=min(1.0, quiet),
                    return_when=asyncio.FIRST_COMPLETED,
                )
                progress = max(progress, self._last_audio_at() or progress)
                if loop.time() - progress >= quiet:
                    break
            # False from send_lifecycle: the EndFrame did not come out, nothing was finished.
            done = (
                came_out.done()
                and not came_out.cancelled()
                and came_out.exception() is None
                and came_out.result()
            )
            for waiter in (came_out, changed):
                waiter.cancel()
            await asyncio.gather(came_out, changed, return_exceptions=True)
            if self.speaker is speaker and (done or speaker.cancelled):
                # Everything was spoken, or every provider failed what was owed.
                await self._cancel_failover()
                break
            if loop.time() - progress >= quiet:
                logger.warning(
                    f"{self._name}: the end of the call came before all was spoken "
                    f"(nothing came out for {quiet:g}s)"
                )
                break
            if self._failover is not None:
                await asyncio.wait({self._failover}, timeout=quiet)
        self.close()

    def _last_audio_at(self) -> float | None:
        watch = self._watch
        return watch.last_audio_at if watch is not None else None

    def close(self):
        """Stop the watches' timers (the call ended)."""
        self._cancel_hedge_timer()
        for watch in (self._watch, self._hedge_watch):
            if watch is not None:
                watch.close()

    async def cancel(self):
        """Drop everything at once (a CancelFrame)."""
        await self._cancel_failover()
        self._cancel_hedge_timer()
        self._hedge = self._hedge_watch = None
        self._reset()
        self.close()

    def _reset(self):
        self._ledger.clear()
        self._held = None
        if self._watch is not None:
            self._watch.close()
            self._watch = None
        self._report = SentenceReport()
        self._in_reply = False
        self._open_context = None
        self._splice_next_start = False
        self._context_map.clear()
        self._made_up.clear()
        self._cut_words_to_drop = 0
        self._announcements.clear()
        self._replaced_announcements.clear()
        self._segment_map.clear()
        self._stops_ahead.clear()
        self._deferred_error = None
        self._reselect = True

    async def _cancel_failover(self):
        for attribute in ("_failover", "_hedge_task", "_release"):
            task = getattr(self, attribute)
            setattr(self, attribute, None)
            if task is not None and not task.done() and task is not asyncio.current_task():
                await self._hooks.cancel(task)

    #
    # Choosing the speaker
    #

    async def _select(self):
        """Pick the call's provider for what comes next (between replies only)."""
        self._reselect = False
        if self._hooks.before_select is not None:
            await self._hooks.before_select()
        order = self._hooks.order()
        if not order:
            order = list(self._links)
        self._order = order
        self._tried = [order[0]]
        if self.speaker is None or self.speaker.provider_id != order[0]:
            await self._switch(self._links[order[0]])
            if self._in_reply:
                # Mid-reply (after every provider failed): the new speaker's service
                # needs the reply's start, which downstream has seen already.
                start = LLMFullResponseStartFrame()
                self._made_up.add(start.id)
                await self.speaker.send(start)
        elif self._watch is None or self._watch.failed is not None:
            # The same provider speaks again (after every provider failed, say).
            self._watch = self._new_watch(self.speaker)

    async def _switch(self, link: ProviderLink):
        await self._hooks.start_link(link)
        if self._watch is not None:
            self._watch.close()
        self.speaker = link
        self._watch = self._new_watch(link)
        self._signal_speaker_changed()
        if link.service is None:
            # Its factory gave no service (logged): fail it now, not at its first-audio deadline.
            self._on_failure(self._watch, FailureReason.UNUSABLE, link.attach_error)

    def _new_watch(self, link: ProviderLink) -> SpeechWatch:
        pid = link.provider_id
        last = not [p for p in self._order if p not in self._tried]
        watch = SpeechWatch(
            self._hooks.deadlines(pid, last),
            lambda reason, error: self._on_failure(watch, reason, error),
            word_timestamps=link.word_timestamps,
            speech_rate=link.stats.speech_rate,
            clock=link.clock_ns,
            stolen=self._hooks.stolen,
        )
        watch.limit_stall(link.stall_limit)
        return watch

    #
    # Frames from the providers' services
    #

    def request(self, link: ProviderLink, context_id: str | None):
        """A provider's service sent a request to its provider."""
        if link is not self.speaker or self._watch is None:
            return
        # Text with nothing to say (pipecat's rule: no letters or digits, as
        # "...", ":)" or an emoji) comes back as silence or nothing: as bare,
        # that is no failure.
        if not has_alnum(link.request_text):
            self._watch.request(context_id, speakable=False)
            return
        if self._span_started is None:
            self._span_started = asyncio.get_running_loop().time()
        self._watch.request(context_id)
        self._arm_hedge()

    #
    # Hedging
    #

    def _arm_hedge(self):
        """Hedge the request now due if it has no audio after the hedge delay."""
        watch = self._watch
        if (
            self._hedge is not None
            or self._hedge_timer is not None
            or self.speaker is None
            or watch is None
            or not watch.awaiting_audio
            or not [p for p in self._order if p not in self._tried]
        ):
            return
        delay = self._hooks.hedge_delay(self.speaker.provider_id)
        if delay is not None:
            self._hedge_timer = asyncio.get_running_loop().call_later(delay, self._hedge_due, watch)

    def _hedge_busy(self) -> bool:
        """Whether a task deciding the hedge's fate is under way."""
        return self._hedge_task is not None and not self._hedge_task.done()

    def _cancel_hedge_timer(self):
        if self._hedge_timer is not None:
            self._hedge_timer.cancel()
            self._hedge_timer = None

    def _hedge_due(self, watch: SpeechWatch):
        self._hedge_timer = None
        if watch is not self._watch or watch.failed is not None or not watch.awaiting_audio:
            return
        assert self.speaker is not None
        if not self._hooks.hedge_allowed(self.speaker.provider_id):
            return
        self._hedge_task = self._hooks.spawn(self._start_hedge(watch), "hedge")

    async def _start_hedge(self, watch: SpeechWatch):
        async with self._lock:
            if watch is not self._watch or watch.failed is not None or not watch.awaiting_audio:
                return
            next_id = next((p for p in self._order if p not in self._tried), None)
            if next_id is None:
                return
            link = self._links[next_id]
            assert self.speaker is not None
            logger.debug(f"{self._name}: {self.speaker.provider_id} is slow; hedging on {next_id}")
            self._tried.append(next_id)
            self._report.hedged_to = next_id
            await self._hooks.start_link(link)
            last = not [p for p in self._order if p not in self._tried]
            self._hedge = link
            self._hedge_held = []
            hedge_watch = self._hedge_watch = SpeechWatch(
                self._hooks.deadlines(next_id, last),
                lambda reason, error: self._on_hedge_failure(hedge_watch, reason, error),
                word_timestamps=link.word_timestamps,
                speech_rate=link.stats.speech_rate,
                clock=link.clock_ns,
                stolen=self._hooks.stolen,
            )
            hedge_watch.limit_stall(link.stall_limit)
            if link.service is None:
                # Its factory gave no service (logged): the hedge fails now.
                self._on_hedge_failure(hedge_watch, FailureReason.UNUSABLE, link.attach_error)
                return
            for frame in self._replay_frames():
                await link.send(frame)

    async def _hedge_output(self, frame: Frame):
        """Hold what the hedge pushes; the first of the two to turn audible is heard."""
        watch = self._hedge_watch
        if watch is None or watch.failed is not None:
            return
        if isinstance(frame, SystemFrame):
            return
        self._hedge_held.append(frame)
        if isinstance(frame, TTSAudioRawFrame):
            awaiting = self._watch is not None and self._watch.awaiting_audio
            if watch.audio(frame) and awaiting and not self._hedge_busy():
                self._hedge_task = self._hooks.spawn(self._hedge_wins(), "hedge-wins")
        elif isinstance(frame, TTSTextFrame):
            watch.word(frame)
        elif isinstance(frame, AggregatedTextFrame) and frame.will_be_spoken:
            watch.announced(frame)
        elif isinstance(frame, AggregatedTextProgressFrame):
            watch.progress(frame)
        elif isinstance(frame, TTSStoppedFrame):
            watch.stopped(frame)
        elif isinstance(frame, TTSStartedFrame):
            watch.started(frame)

    def _on_hedge_failure(self, watch: SpeechWatch, reason: FailureReason, error: str | None):
        if watch is not self._hedge_watch or self._hedge is None:
            return
        pid = self._hedge.provider_id
        self._report.failures.append((pid, reason))
        self._report.errors.setdefault(pid, error)
        last_left = not [p for p in self._order if p not in self._tried]
        if last_left and self.speaker is not None and self._watch is not None:
            # The speaker is the last provider left: it gets the last resort's deadline.
            self._watch.set_deadlines(self._hooks.deadlines(self.speaker.provider_id, True))
        self._hedge_task = self._hooks.spawn(self._drop_hedge_locked(), "hedge-failed")

    async def _drop_hedge_locked(self):
        async with self._lock:
            await self._drop_hedge()

    async def _drop_hedge(self):
        """Abandon the hedge: the speaker turned audible first, or the hedge failed."""
        self._cancel_hedge_timer()
        link, watch = self._hedge, self._hedge_watch
        self._hedge = self._hedge_watch = None
        self._hedge_held = []
        if watch is not None:
            watch.close()
        if link is not None:
            await link.abandon()

    async def _hedge_wins(self):
        """The hedge turned audible first: it becomes the speaker."""
        async with self._lock:
            if self._hedge is None or self.speaker is None or self._watch is None:
                return
            if not self._watch.awaiting_audio:
                return
            loser = self.speaker
            logger.debug(f"{self._name}: {self._hedge.provider_id} answered first")
            self._watch.close()
            await loser.abandon()
            await self._take_hedge()

    async def _take_hedge(self):
        """Make the hedge the speaker and pass on what it has pushed so far."""
        link, watch, held = self._hedge, self._hedge_watch, self._hedge_held
        assert link is not None and watch is not None
        self._hedge = self._hedge_watch = None
        self._hedge_held = []
        self._prepare_splice()
        self.speaker = link
        self._watch = watch
        self._signal_speaker_changed()
        for frame in held:
            await self._emit(frame)

    async def take(
        self,
        link: ProviderLink,
        frame: Frame,
        direction: FrameDirection = DOWNSTREAM,
        callback=None,
    ):
        """What a provider's service pushes, straight from its push (the link's ``queue_frame`` otherwise).

        A chunk of the speaker's audio on a healthy call is passed on here, in
        the one call the service's push makes; everything else goes through
        the link (lifecycle, interruptions) to :meth:`output` or
        :meth:`upstream`.
        """
        watch = self._watch
        if (
            frame.__class__ is TTSAudioRawFrame
            and direction is DOWNSTREAM
            and link is self.speaker
            and link.draining_id is None
            and watch is not None
            and watch.failed is None
            and self._held is None
            and self._hedge is None
            and self._deferred_error is None
        ):
            # The audio path of a healthy call: the steps of output(), fewer checks.
            audible = watch.audio(frame)
            if watch.failed is not None:
                return
            if not audible and watch.awaiting_audio:
                self._held = [frame]
                return
            pusher = self._pusher
            if self._context_map or pusher is None or (to := pusher.destination()) is None:
                await self._emit(frame)
            else:
                # Pushed as DownstreamPusher says, inline: nothing allocated between the two pushes.
                try:
                    if (observer := pusher.observer) is not None:
                        await observer.on_push_frame(pusher.pushed(frame, to))
                    await to.queue_frame(frame, DOWNSTREAM)
                except Exception as e:  # noqa: BLE001 - reported as push_frame reports it
                    await pusher.failed(e)
            if watch.requested and watch.audible and watch.idle:
                await self._spoken(watch)
            return
        await link.queue_frame(frame, direction, callback)

    async def output(self, link: ProviderLink, frame: Frame):
        """Take what a provider's service pushed downstream."""
        watch = self._watch
        if link is self._hedge:
            await self._hedge_output(frame)
            return
        if link is not self.speaker or watch is None or watch.failed is not None:
            logger.trace(f"{self._name}: dropping {frame} from {link.provider_id}")
            return
        if isinstance(frame, SystemFrame):
            await self._hooks.push(frame)
            return
        if isinstance(frame, TTSAudioRawFrame):
            audible = watch.audio(frame)
            if watch.failed is not None:
                return
            if audible and self._hedge is not None and not self._hedge_busy():
                # The speaker answered before the hedge: the hedge is dropped.
                self._hedge_task = self._hooks.spawn(self._drop_hedge_locked(), "hedge-lost")
            if self._held is not None:
                self._held.append(frame)
                if audible and not self._releasing() and self._deferred_error is None:
                    await self._release_held()
            elif not audible and watch.awaiting_audio:
                self._held = [frame]
            else:
                await self._emit(frame)
        else:
            timed = True
            if isinstance(frame, TTSTextFrame):
                timed = watch.word(frame)
            elif isinstance(frame, AggregatedTextFrame):
                if frame.will_be_spoken:
                    watch.announced(frame)
            elif isinstance(frame, AggregatedTextProgressFrame):
                watch.progress(frame)
            elif isinstance(frame, TTSStartedFrame):
                watch.started(frame)
            if watch.failed is not None:
                return
            if isinstance(frame, TTSStoppedFrame) and (
                watch.plays_later(frame) or link.plays_on(frame.context_id)
            ):
                # pipecat's Cartesia service pushes a context's stop frame as soon
                # as the provider reports an error for it, even while that context
                # (or an earlier one) still has audio queued in the service: it
                # plays after the stop frame, as it would bare. The watch judges
                # that playback; the error that follows in this step is the
                # pipeline's, as bare.
                # Held, with what follows, until the error that may come with
                # it is judged: a failure must not let the caller's pipeline
                # think the speech ended.
                self._stopped_ahead(frame)
                if self._held is None:
                    self._held = []
                self._held.append(frame)
                if not self._releasing():
                    self._release = self._hooks.spawn(self._release_after_step(watch), "release")
            elif isinstance(frame, TTSStoppedFrame) and watch.ends_silent(frame):
                watch.stopped(frame)
                return
            elif (
                isinstance(frame, TTSStoppedFrame)
                and self._held is None
                and not watch.speaks_in(frame.context_id)
            ):
                # Nothing to say was asked in this context: nothing to judge, so
                # it ends at once, ahead of pipecat's report that it had no audio.
                watch.stopped(frame)
                await self._emit(frame)
            elif isinstance(frame, TTSStoppedFrame):
                # The end of an audio context is judged a step later: pipecat's
                # Cartesia service pushes its stop frame and then the provider's
                # error in the same step. Until then it, and what follows it, wait.
                if self._held is None:
                    self._held = []
                self._held.append(frame)
                if not self._releasing():
                    self._release = self._hooks.spawn(self._release_after_step(watch), "release")
            elif self._held is not None:
                self._held.append(frame)
            elif isinstance(frame, _WORD_FRAMES) and (
                watch.awaiting_audio or (not timed and has_alnum(frame.text))
            ):
                # Words before any audible audio of their request, and words the
                # provider never timed (pipecat completes a context's words at its
                # end, and on a dropped socket), are held until audible audio
                # follows them or the context ends well: a failure must not pass
                # text off as spoken. Text with nothing to say (pipecat completes
                # it at once) has nothing to pass off.
                self._held = [frame]
            else:
                await self._emit(frame)
        if self._deferred_error is not None:
            await self._judge_deferred_error(link)
        if watch.idle and watch.requested and watch.audible and self._held is None:
            await self._spoken(watch)

    async def upstream(self, link: ProviderLink, frame: Frame, direction: FrameDirection):
        """Take what a provider's service pushed upstream."""
        if not isinstance(frame, ErrorFrame):
            if link is self.speaker:
                await self._hooks.push_upstream(frame)
            return
        if frame.category == ErrorCategory.APPLICATION:
            # The application's own code failed (a text transform): the user's error.
            if link is self.speaker:
                await self._hooks.push_upstream(frame)
            return
        if link is self._hedge and self._hedge_watch is not None:
            reason = reason_for_error_frame(frame)
            self._hedge_watch.fail(reason, frame.error)
            return
        watch = self._watch
        ahead = self._stop_ahead_context
        if link is self.speaker and ahead is not None and link.plays_on(ahead):
            # The error of a context whose audio the service still holds (see
            # _stopped_ahead): it is judged once that audio has played, as
            # the caller hears it bare.
            self._deferred_error = (link, frame, ahead)
            return
        if self.speaker is None and link.provider_id == next(iter(self._hooks.order()), None):
            # The call's provider, before the call's first words (a rejected
            # session, say): the pipeline hears of it as it would bare.
            await self._hooks.push_upstream(frame)
            return
        if link is not self.speaker or watch is None or watch.failed is not None:
            logger.debug(f"{link.service}: error of a provider not speaking: {frame.error}")
            return
        await self._judge_error(watch, frame)

    async def _judge_error(self, watch: SpeechWatch, frame: ErrorFrame):
        """Fail the speaker for an error, unless nothing it was asked is left unheard."""
        if (not watch.idle and not watch.owes_speech) or watch.ended_unspoken(frame.error):
            # Asked only text with nothing to say: whatever the service makes of
            # it (pipecat reports a context that ended with no audio) is its
            # own business, as bare.
            await self._hooks.push_upstream(frame)
            return
        nothing_owed = not self._ledger.unheard_text() and not self._ledger.owed_frames()
        all_heard = watch.idle and watch.requested and watch.audible
        if (nothing_owed and (watch.idle or watch.audible)) or all_heard:
            # Nothing owed, or the error came after the last word asked for was
            # heard: it is the service's own business, as it would be bare.
            await self._hooks.push_upstream(frame)
            return
        watch.fail(reason_for_error_frame(frame), frame.error)

    def _stopped_ahead(self, frame: TTSStoppedFrame):
        """Note a stop frame pushed ahead of its context's playback, for this step."""
        self._stops_ahead.add(frame.id)
        if self._stop_ahead_context is None:
            asyncio.get_running_loop().call_soon(self._end_stop_ahead_step)
        self._stop_ahead_context = frame.context_id

    def _end_stop_ahead_step(self):
        self._stop_ahead_context = None

    async def _judge_deferred_error(self, link: ProviderLink):
        """Judge a deferred error once its context's audio has played."""
        assert self._deferred_error is not None
        owner, frame, context_id = self._deferred_error
        if link is not owner or link.plays_on(context_id):
            return
        self._deferred_error = None
        watch = self._watch
        if watch is None or watch.failed is not None:
            return
        await self._judge_error(watch, frame)
        if watch.failed is None and self._held is not None and not self._releasing():
            self._release = self._hooks.spawn(self._release_after_step(watch), "release")

    def _releasing(self) -> bool:
        return self._release is not None and not self._release.done()

    async def _release_after_step(self, watch: SpeechWatch):
        """Judge the held end of an audio context once the step that pushed it is over."""
        # One turn of the loop: an error pushed in the same step has arrived by then.
        await asyncio.sleep(0)
        if watch is not self._watch or watch.failed is not None or self._held is None:
            return
        if self._deferred_error is not None:
            # Released once the error is judged.
            return
        for frame in self._held:
            if isinstance(frame, TTSStoppedFrame) and frame.id not in self._stops_ahead:
                watch.stopped(frame)
                if watch.failed is not None:
                    return
        await self._release_held()
        if watch.idle and watch.requested and watch.audible:
            await self._spoken(watch)

    async def _release_held(self):
        held, self._held = self._held or [], None
        for frame in held:
            await self._emit(frame)

    async def _emit(self, frame: Frame):
        """Pass on a frame of the speaker's, as one stream with what came before."""
        if isinstance(frame, TTSAudioRawFrame) and not self._context_map:
            # Nothing of the ledger or the splice concerns audio.
            await self._hooks.push(frame)
            return
        if frame.id in self._made_up:
            self._made_up.discard(frame.id)
            return
        ledger = self._ledger
        ledger.came_out(frame)
        if isinstance(frame, TTSTextFrame):
            self._last_word_out = frame.id
            ledger.heard(frame.text)
            if self._cut_words_to_drop and frame.pts:
                # A word cut short was said again; its text had gone on already.
                self._cut_words_to_drop -= 1
                return
        elif isinstance(frame, AggregatedTextFrame) and frame.skip_tts:
            ledger.heard(frame.raw_text or frame.text)
        if isinstance(frame, (TTSTextFrame, AggregatedTextProgressFrame)):
            if frame.segment_id in self._segment_map:
                frame.segment_id = self._segment_map[frame.segment_id]
        elif (
            isinstance(frame, AggregatedTextFrame)
            and frame.will_be_spoken
            and has_alnum(frame.text)
        ):
            self._report.sentences += 1
            if self._replaced_announcements:
                # The caller saw this segment announced by the speaker that failed.
                shown = self._replaced_announcements.pop(0)
                self._segment_map[frame.id] = shown
                self._announcements.append((shown, frame.id))
                return
            self._announcements.append((frame.id, frame.id))
        context_id = getattr(frame, "context_id", None)
        if context_id in self._context_map:
            frame.context_id = self._context_map[context_id]
        if isinstance(frame, TTSStartedFrame):
            if self._splice_next_start and self._open_context is not None:
                self._splice_next_start = False
                if context_id is not None:
                    self._context_map[context_id] = self._open_context
                return
            self._open_context = frame.context_id
        elif isinstance(frame, TTSStoppedFrame):
            ahead = frame.id in self._stops_ahead
            if ahead:
                # Its context plays after this: nothing of it was heard yet.
                self._stops_ahead.discard(frame.id)
            else:
                self._announcements.clear()
                self._replaced_announcements.clear()
            if not self._in_reply:
                ledger.settle_utterance(heard=not ahead)
            if frame.context_id == self._open_context:
                self._open_context = None
        elif isinstance(frame, LLMFullResponseEndFrame):
            self._in_reply = False
            ledger.settle_text()
        await self._hooks.push(frame)

    async def _spoken(self, watch: SpeechWatch):
        """The speaker spoke everything it was asked: report the span."""
        assert self.speaker is not None
        pid = self.speaker.provider_id
        report, self._report = self._report, SentenceReport()
        report.spoken_by = pid
        report.latencies = [(pid, seconds) for seconds in watch.latencies]
        if self._span_started is not None and watch.latencies:
            report.first_audio_delay = watch.latencies[0]
        self._span_started = None
        watch.reported()
        self._tried = [pid]
        self.speaker.stats.speech_rate = watch.speech_rate or self.speaker.stats.speech_rate
        await self._hooks.on_report(report)
        if watch is self._watch:
            # What was just learned moves an adaptive deadline.
            watch.set_deadlines(self._hooks.deadlines(pid, False))

    #
    # Failing over
    #

    def _on_failure(self, watch: SpeechWatch, reason: FailureReason, error: str | None):
        if watch is not self._watch or self.speaker is None:
            return
        self._held = None
        # The failed speaker's deferred error is judged already: it failed.
        self._deferred_error = None
        self._failover = self._hooks.spawn(
            self._fail_over(self.speaker, watch, reason, error), "failover"
        )

    async def _fail_over(
        self, failed: ProviderLink, watch: SpeechWatch, reason: FailureReason, error: str | None
    ):
        async with self._lock:
            pid = failed.provider_id
            report = self._report
            report.failures.append((pid, reason))
            report.errors.setdefault(pid, error)
            logger.debug(f"{self._name}: {pid} failed: {reason} {error or ''}")
            await self._settle_words(watch)
            await failed.abandon()
            await self._hooks.on_failed(pid, reason)
            report.latencies += [(pid, seconds) for seconds in watch.latencies]
            if watch.speech_rate:
                failed.stats.speech_rate = watch.speech_rate
            # Segments the caller saw announced and did not hear to the end.
            unfinished = [
                shown for shown, own in self._announcements if not watch.segment_done(own)
            ]
            if self._hedge is not None:
                # A hedge is already speaking what is owed: it carries on as the
                # failover, and with nothing left after it, as the last resort.
                to_id = self._hedge.provider_id
                logger.warning(f"{self._name}: {pid} failed ({reason}); {to_id} carries on")
                report.hops.append((pid, to_id, reason))
                report.sentences = 0
                await self._hooks.on_failover(pid, to_id, reason)
                if self._hedge_watch is not None and not [
                    p for p in self._order if p not in self._tried
                ]:
                    self._hedge_watch.set_deadlines(self._hooks.deadlines(to_id, True))
                await self._take_hedge()
                return
            next_id = next((p for p in self._order if p not in self._tried), None)
            if next_id is None:
                await self._all_failed()
                return
            logger.warning(f"{self._name}: {pid} failed ({reason}); moving to {next_id}")
            report.hops.append((pid, next_id, reason))
            report.sentences = 0
            await self._hooks.on_failover(pid, next_id, reason)
            self._tried.append(next_id)
            # The caller saw these segments announced: the next provider's
            # announcements of what is left of them are not news.
            self._replaced_announcements = unfinished
            await self._hand_over(self._links[next_id])

    async def _settle_words(self, watch: SpeechWatch):
        """Decide which words of the failed speaker the caller heard."""
        if watch.last_word_cut() and watch.current_word_id == self._last_word_out:
            # Said again whole by the next provider; its text went on already.
            self._ledger.unhear_last_word()
            self._cut_words_to_drop = 1
            return
        words = watch.words_said_after_last()
        if words:
            # The audio covers words whose text the service held back.
            frame = TTSTextFrame(" ".join(words), TextType.WORD)
            frame.context_id = self._open_context
            self._ledger.heard(frame.text)
            await self._hooks.push(frame)

    def _prepare_splice(self):
        """The next speaker's first started frame joins the reply downstream already sees."""
        self._splice_next_start = self._open_context is not None

    def _replay_frames(self) -> list[Frame]:
        """What a new speaker is handed: what is owed, inside the reply if one is open."""
        frames = self._ledger.replay()
        starts_reply = any(isinstance(f, LLMFullResponseStartFrame) for f in frames)
        if self._in_reply and not starts_reply:
            start = LLMFullResponseStartFrame()
            self._made_up.add(start.id)
            frames.insert(0, start)
        ledger = self._ledger = Ledger()
        for frame in frames:
            if frame.id not in self._made_up:
                ledger.add(frame)
        return frames

    async def _hand_over(self, link: ProviderLink):
        """Make ``link`` the speaker and hand it what is still owed."""
        await self._switch(link)
        self._prepare_splice()
        for frame in self._replay_frames():
            await link.send(frame)

    async def _all_failed(self):
        """Every provider failed what is owed: report it and close the reply downstream."""
        report, self._report = self._report, SentenceReport()
        text = self._ledger.unheard_text()
        owed = self._ledger.owed_frames()
        self._ledger.clear()
        self._span_started = None
        if self._open_context is not None:
            await self._hooks.push(TTSStoppedFrame(context_id=self._open_context))
            self._open_context = None
        for frame in owed:
            if isinstance(frame, LLMFullResponseEndFrame):
                self._in_reply = False
            await self._hooks.push(frame)
        self._splice_next_start = False
        self._reselect = True
        # The end of the call may be waiting on the speaker that just failed.
        self._signal_speaker_changed()
        await self._hooks.on_report(report)
        await self._hooks.on_all_failed(text, report)
