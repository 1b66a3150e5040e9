"""SpeedTracker: what one call knows and decides about its providers' speed.

Deadlines (fixed or adaptive), when to hedge and whether the budget allows it,
which providers are slow, and the latency samples shared with the store. The
windows and budgets behind it are per process and store (see
:func:`pipecat_tts_failover.latency.stats_for`), so every call of a process
learns from every other.
"""

import asyncio
import dataclasses
from typing import TYPE_CHECKING

from loguru import logger

from pipecat_tts_failover.detection import FailureReason
from pipecat_tts_failover.latency import AdaptiveTimeout, HedgeBudget, ProviderStats, stats_for
from pipecat_tts_failover.store.base import HealthStore, LatencySharing
from pipecat_tts_failover.store.writer import StoreWriter
from pipecat_tts_failover.watch import Deadlines

if TYPE_CHECKING:
    from pipecat_tts_failover.relay import SentenceReport

# How much longer than its first-audio deadline the last provider left to try is waited for.
LAST_RESORT_FACTOR = 2.0
# Samples a provider needs before its p95 says anything.
_SLOW_MIN_SAMPLES = 20


class SpeedTracker:
    """Deadlines, hedging and slowness of a call's providers.

    Args:
        store: The health store; the stats are shared per store and process.
        deadlines: The fixed deadlines (the adaptive first-audio one replaces
            ``first_audio`` when ``adaptive`` is set).
        adaptive: How adaptive deadlines are drawn, or None for fixed ones.
        hedge_seconds: A fixed hedge delay, or None.
        hedge_quantile: A hedge delay drawn from this latency quantile, or None.
        hedge_budget: Most hedges per sentence over a provider's last 100.
        slow_threshold: p95 latency above which a provider is slow, or None.
    """

    def __init__(
        self,
        store: HealthStore,
        *,
        deadlines: Deadlines,
        adaptive: AdaptiveTimeout | None,
        hedge_seconds: float | None,
        hedge_quantile: float | None,
        hedge_budget: float,
        slow_threshold: float | None,
    ):
        self._store = store
        self._deadlines = deadlines
        self._adaptive = adaptive
        self._hedge_seconds = hedge_seconds
        self._hedge_quantile = hedge_quantile
        self._hedge_budget = hedge_budget
        self._slow_threshold = slow_threshold
        self._samples: dict[str, list[float]] = {}

    @property
    def adaptive(self) -> AdaptiveTimeout | None:
        """How adaptive deadlines are drawn, or None."""
        return self._adaptive

    def stats(self, provider_id: str) -> ProviderStats:
        """The process's stats of one provider."""
        stats = stats_for(self._store)
        entry = stats.get(provider_id)
        if entry is None:
            entry = stats[provider_id] = ProviderStats()
        if entry.hedges is None and (self._hedge_seconds or self._hedge_quantile):
            entry.hedges = HedgeBudget(self._hedge_budget)
        return entry

    def deadlines(self, provider_id: str, last: bool = False) -> Deadlines:
        """A provider's deadlines: fixed, or drawn from its latency tail.

        The last provider left to try has nothing to fail over to, so cutting
        it short would only lose the sentence: it gets twice the fixed
        first-audio deadline, or the adaptive ceiling.
        """
        if self._adaptive is None:
            first_audio = self._deadlines.first_audio * (LAST_RESORT_FACTOR if last else 1)
        elif last:
            first_audio = self._adaptive.ceiling
        else:
            first_audio = self._adaptive.deadline(self.stats(provider_id).latency)
        return dataclasses.replace(self._deadlines, first_audio=first_audio)

    def hedge_delay(self, provider_id: str) -> float | None:
        """Seconds before a sentence on this provider is hedged, or None for no hedge."""
        if self._hedge_quantile is None:
            return self._hedge_seconds
        window = self.stats(provider_id).latency
        if len(window) < (self._adaptive or AdaptiveTimeout()).min_samples:
            return None
        return window.quantile(self._hedge_quantile)

    def hedge_allowed(self, provider_id: str) -> bool:
        """Whether one more hedge of this provider stays within the budget."""
        budget = self.stats(provider_id).hedges
        return budget is not None and budget.allows()

    def is_slow(self, provider_id: str) -> bool:
        """Whether the provider is currently reported slow."""
        return self.stats(provider_id).reported_slow

    def learn(self, order: list[str], report: "SentenceReport") -> list[tuple[str, float]]:
        """Feed one sentence's latencies to the stats.

        Args:
            order: The providers the sentence was to try, in order.
            report: How the sentence went.

        Returns:
            ``(provider_id, p95)`` for each provider that has just become slow.
        """
        for pid, seconds in report.latencies:
            self.stats(pid).latency.add(seconds)
            self._samples.setdefault(pid, []).append(seconds)
        if self._adaptive is not None:
            # A provider that missed its deadline took at least that long: counting
            # it raises the tail, so a provider that got slower for good is given
            # a longer deadline within a few sentences instead of failing forever.
            for pid, reason in report.failures:
                if reason is FailureReason.NO_FIRST_AUDIO:
                    self.stats(pid).latency.add(self.deadlines(pid).first_audio)
        if order and (budget := self.stats(order[0]).hedges) is not None:
            budget.record(report.hedged_to is not None)
        if self._slow_threshold is None:
            return []
        became_slow = []
        for pid, _ in report.latencies:
            stats = self.stats(pid)
            enough = len(stats.latency) >= _SLOW_MIN_SAMPLES
            p95 = stats.latency.quantile(0.95) if enough else None
            slow = p95 is not None and p95 > self._slow_threshold
            if slow and not stats.reported_slow:
                became_slow.append((pid, p95))
            stats.reported_slow = slow
        return became_slow

    async def seed(self, provider_ids: list[str], timeout: float, name: str):
        """Start a fresh worker with the fleet's latency view, where the store shares one."""
        self._samples = {}
        if not isinstance(self._store, LatencySharing):
            return
        empty = [pid for pid in provider_ids if not len(self.stats(pid).latency)]
        if not empty:
            return
        try:
            async with asyncio.timeout(timeout):
                samples = await self._store.get_latency_samples(empty)
        except Exception as e:  # noqa: BLE001 - latency history is a nicety, not a need
            logger.debug(f"{name}: latency samples unreadable ({e!r})")
            return
        for pid in empty:
            self.stats(pid).latency.extend(samples.get(pid, ()))

    def share(self, writer: StoreWriter):
        """Hand the call's latency samples to the store, once, through the writer."""
        if not isinstance(self._store, LatencySharing):
            return
        store: LatencySharing = self._store
        for pid, samples in self._samples.items():
            writer.submit(lambda pid=pid, samples=samples: store.add_latency_samples(pid, samples))
        self._samples = {}
