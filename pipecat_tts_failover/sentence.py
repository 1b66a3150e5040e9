"""One sentence across providers: failover in order, an optional hedge, replay from the first unheard word."""

import asyncio
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field

from loguru import logger
from pipecat.frames.frames import Frame

from pipecat_tts_failover.attempt import Attempt, AttemptResult, Deadlines, unspoken_text
from pipecat_tts_failover.detection import FailureReason
from pipecat_tts_failover.provider_link import ProviderLink


@dataclass
class SentenceReport:
    """How one sentence went.

    Parameters:
        spoken_by: The provider that finished it, or None if every one failed.
        failures: ``(provider_id, reason)`` for each failed attempt, in order.
        errors: The first error message of each provider that failed.
        hops: ``(from_id, to_id, reason)`` for each move to another provider.
        first_audio_delay: Seconds from the sentence's first request to the
            first audible audio of the provider that spoke it.
        latencies: ``(provider_id, seconds)`` first-audio latency of each attempt
            that produced audible audio.
        attempts: ``(provider_id, result)`` of each attempt that was not dropped
            for a hedge.
        hedged_to: The provider a hedge was sent to, if one was.
    """

    spoken_by: str | None = None
    failures: list[tuple[str, FailureReason]] = field(default_factory=list)
    errors: dict[str, str | None] = field(default_factory=dict)
    hops: list[tuple[str, str, FailureReason]] = field(default_factory=list)
    first_audio_delay: float | None = None
    latencies: list[tuple[str, float]] = field(default_factory=list)
    attempts: list[tuple[str, AttemptResult]] = field(default_factory=list)
    hedged_to: str | None = None


FailoverHook = Callable[[str, str, FailureReason], Awaitable[None]]
FailedHook = Callable[[str, FailureReason], Awaitable[None]]


class SentenceRun:
    """Speaks one sentence on the first provider that can.

    Attempts run one after the other in the given order, each from the first
    word not yet heard. With a hedge delay, if the first provider has sent no
    audio by then, the next one starts on the same text in parallel: whichever
    turns audible first is heard and the other is abandoned (its service
    interrupted, nothing of it reaching the caller). If the first provider then
    fails, the hedge simply carries on as its failover.

    Args:
        links: Provider links by id.
        order: Providers to try, in order.
        text: The sentence.
        deadlines: The deadlines of an attempt on a provider; the flag says
            whether it is the last provider left to try.
        forward: Pushes one frame the caller should hear.
        append_to_context: Carried on the text frames the services push.
        hedge_after: Seconds before hedging the first attempt, or None.
        hedge_allowed: Asked when a hedge is due: whether the budget allows it.
        on_failover: Awaited when the sentence moves to another provider.
        on_failed: Awaited when a provider fails the sentence.
        name: Used in log lines.
    """

    def __init__(
        self,
        *,
        links: Mapping[str, ProviderLink],
        order: Sequence[str],
        text: str,
        deadlines: Callable[[str, bool], Deadlines],
        forward: Callable[[Frame], Awaitable[None]],
        append_to_context: bool,
        hedge_after: float | None,
        hedge_allowed: Callable[[str], bool],
        on_failover: FailoverHook,
        on_failed: FailedHook,
        name: str,
    ):
        self._links = links
        self._pending = list(order)
        self._remaining = text
        self._deadlines = deadlines
        self._forward = forward
        self._append_to_context = append_to_context
        self._hedge_after = hedge_after
        self._hedge_allowed = hedge_allowed
        self._on_failover = on_failover
        self._on_failed = on_failed
        self._name = name
        self._running: dict[Attempt, ProviderLink] = {}
        self._selected: Attempt | None = None
        self.report = SentenceReport()

    async def cancel(self):
        """Abandon every attempt in flight (on an interruption or cancellation)."""
        await self._drop_others(None)

    async def run(self) -> SentenceReport:
        """Speak the sentence; return how it went."""
        loop = asyncio.get_running_loop()
        started = loop.time()
        if not self._pending:
            return self.report
        first = await self._start(self._pending.pop(0))
        hedge_at = None
        if self._hedge_after is not None and self._pending:
            hedge_at = started + self._hedge_after

        while self._running:
            timeout = None if hedge_at is None else max(0.0, hedge_at - loop.time())
            done, _ = await asyncio.wait(
                [attempt.done for attempt in self._running],
                timeout=timeout,
                return_when=asyncio.FIRST_COMPLETED,
            )
            if not done:
                hedge_at = None
                if not first.has_audio and self._hedge_allowed(first.provider_id):
                    self.report.hedged_to = self._pending[0]
                    logger.debug(
                        f"{self._name}: {first.provider_id} is slow; hedging on {self._pending[0]}"
                    )
                    await self._start(self._pending.pop(0))
                continue
            for attempt in [a for a in self._running if a.finished]:
                link = self._running.pop(attempt)
                result = attempt.result
                if result.lost:
                    continue
                self.report.attempts.append((attempt.provider_id, result))
                if attempt.first_audio_latency is not None:
                    self.report.latencies.append((attempt.provider_id, attempt.first_audio_latency))
                if result.ok:
                    await self._announce_unannounced(result)
                    link.close_attempt()
                    self.report.spoken_by = attempt.provider_id
                    if result.first_audio_at is not None:
                        self.report.first_audio_delay = result.first_audio_at - started
                    await self._drop_others(attempt)
                    return self.report
                hedge_at = None
                await self._failed(attempt, link)
        return self.report

    async def _start(self, provider_id: str) -> Attempt:
        link = self._links[provider_id]

        async def forward(frame: Frame):
            # The first attempt to turn audible is the one the caller hears.
            if self._selected is None:
                self._selected = attempt
                await self._drop_others(attempt)
            if self._selected is attempt:
                await self._forward(frame)

        last = not self._pending and not self._running
        attempt = Attempt(provider_id, self._deadlines(provider_id, last), forward)
        self._running[attempt] = link
        await link.speak(self._remaining, attempt, append_to_context=self._append_to_context)
        attempt.start()
        return attempt

    async def _announce_unannounced(self, result: AttemptResult):
        """Pass on the text of words the caller heard that had not been passed on yet."""
        for frame in result.unannounced:
            await self._forward(frame)

    async def _drop_others(self, keep: Attempt | None):
        for attempt in [a for a in self._running if a is not keep]:
            link = self._running.pop(attempt)
            attempt.lose()
            await link.abandon()

    async def _failed(self, attempt: Attempt, link: ProviderLink):
        result = attempt.result
        pid = attempt.provider_id
        assert result.reason is not None
        await link.abandon()
        logger.debug(
            f"{self._name}: {pid} failed [{self._remaining}]: {result.reason} {result.error or ''}"
        )
        self.report.failures.append((pid, result.reason))
        self.report.errors.setdefault(pid, result.error)
        await self._on_failed(pid, result.reason)
        if self._selected is attempt:
            # Part of the sentence was heard: the rest is said from the first unheard word.
            await self._announce_unannounced(result)
            self._selected = None
            self._remaining = unspoken_text(self._remaining, result.spoken_words) or self._remaining
        if self._running:
            # A hedge is already speaking the sentence: it carries on as the failover,
            # and with nothing left to try after it, it is waited for as the last resort.
            survivor = next(iter(self._running))
            to_id = survivor.provider_id
            if not self._pending:
                survivor.extend_first_audio(self._deadlines(to_id, True).first_audio)
        elif self._pending:
            to_id = self._pending.pop(0)
        else:
            return
        logger.warning(
            f"{self._name}: {pid} failed a sentence ({result.reason}); moving to {to_id}"
        )
        self.report.hops.append((pid, to_id, result.reason))
        await self._on_failover(pid, to_id, result.reason)
        if not self._running:
            await self._start(to_id)
