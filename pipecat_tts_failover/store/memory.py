"""InMemoryHealthStore: provider health shared by the calls of one process."""

import dataclasses
from collections import deque
from collections.abc import Mapping, Sequence

from pipecat_tts_failover.detection import FailureReason
from pipecat_tts_failover.health import AttemptVerdict, HealthPolicy, HealthWindow
from pipecat_tts_failover.store.base import (
    Clock,
    Controls,
    ProviderHealth,
    check_provider_ids,
    merge_registered,
    wall_clock,
)

LATENCY_SAMPLES_KEPT = 200


class InMemoryHealthStore:
    """Provider health kept in this process.

    Every ``FailoverTTSService`` built without a ``store`` shares one instance
    (see :func:`default_store`), so a provider marked down by one call is
    skipped by the next call in the same process until its cooldown ends.

    Args:
        clock: Wall-clock source, injectable for tests.
    """

    def __init__(self, *, clock: Clock = wall_clock):
        self._clock = clock
        self._health: dict[str, ProviderHealth] = {}
        self._locks: dict[str, float] = {}
        self._latency: dict[str, deque[float]] = {}
        self._controls = Controls()
        self._registered: list[str] = []
        self._windows: dict[str, HealthWindow] = {}

    async def get(self, provider_ids: Sequence[str]) -> Mapping[str, ProviderHealth]:
        """Return the health of each provider (a healthy record for unknown ones).

        Raises:
            TypeError: ``provider_ids`` is one id, not a sequence of ids.
        """
        now = self._clock()
        return {pid: self._current(pid, now) for pid in check_provider_ids(provider_ids)}

    async def known_providers(self) -> list[str]:
        """Every provider this store has a record of."""
        return sorted(self._health)

    async def register_providers(self, provider_ids: Sequence[str]) -> None:
        """Record the provider ids a call uses, in its preference order.

        Raises:
            TypeError: ``provider_ids`` is one id, not a sequence of ids.
        """
        ids = check_provider_ids(provider_ids)
        self._registered = merge_registered(self._registered, ids)

    async def registered_providers(self) -> list[str]:
        """Every provider id registered, in the merged preference order."""
        return list(self._registered)

    async def record_attempt(
        self,
        provider_id: str,
        failure: FailureReason | None,
        *,
        policy: HealthPolicy,
        peers: Sequence[str] = (),
        draw: float = 0.0,
    ) -> AttemptVerdict:
        """Add one sentence attempt's outcome to the provider's evidence; eject it if a rule says so.

        Args:
            provider_id: The provider.
            failure: Why the attempt failed, or None if it spoke.
            policy: The ejection rules.
            peers: The other providers of the caller's group (for the panic floor).
            draw: A random number in [-1, 1] for the ejection's jitter.

        Returns:
            What the write did; ``ejected`` is True for exactly one writer per incident.
        """
        now = self._clock()
        health = self._current(provider_id, now)
        window = self._windows.setdefault(provider_id, HealthWindow())
        others_up = any(not self._current(p, now).is_down(now) for p in peers if p != provider_id)
        rule, spared = window.record(
            failure, policy, now, down=health.is_down(now), others_up=others_up
        )
        down_until = health.down_until
        since, reason = health.since, health.reason
        if rule is not None and failure is not None:
            down_until = window.eject(policy, now, draw)
            since, reason = now, failure
        attempts, failures = window.totals(policy, now)
        ejections = window.recent_ejections(policy, now)
        self._health[provider_id] = dataclasses.replace(
            health,
            down_until=down_until,
            reason=reason,
            since=since,
            failures=window.consecutive,
            attempts=attempts,
            window_failures=failures,
            ejections=ejections,
        )
        return AttemptVerdict(
            ejected=rule is not None,
            rule=rule,
            down_until=down_until,
            spared=spared,
            consecutive=window.consecutive,
            attempts=attempts,
            failures=failures,
            ejections=ejections,
        )

    async def mark_down(self, provider_id: str, *, reason: FailureReason, cooldown: float) -> bool:
        """Mark a provider down for ``cooldown`` seconds; True if it was up before."""
        now = self._clock()
        health = self._health.get(provider_id) or ProviderHealth(provider_id)
        if health.is_down(now):
            return False
        self._health[provider_id] = dataclasses.replace(
            health, down_until=now + cooldown, reason=reason, since=now
        )
        return True

    async def mark_up(self, provider_id: str) -> bool:
        """Mark a provider healthy; True if it was down before."""
        health = self._health.get(provider_id)
        if health is None:
            return False
        was_down = health.is_down(self._clock())
        # The window's counts and the ejection history stay; only the run of failures ends.
        self._health[provider_id] = dataclasses.replace(
            health, down_until=None, reason=None, since=None, failures=0
        )
        if window := self._windows.get(provider_id):
            window.consecutive = 0
        return was_down

    def _current(self, provider_id: str, now: float) -> ProviderHealth:
        """The provider's record, with a mark-down that has run out cleared."""
        health = self._health.get(provider_id) or ProviderHealth(provider_id)
        if health.down_until is not None and not health.is_down(now):
            health = dataclasses.replace(health, down_until=None, reason=None, since=None)
            self._health[provider_id] = health
        return health

    async def extend_down(self, provider_id: str, cooldown: float) -> bool:
        """Keep a provider that is down marked down for ``cooldown`` more seconds from now.

        Returns:
            True if it was down (and now stays down longer), False otherwise.
        """
        now = self._clock()
        health = self._current(provider_id, now)
        if health.down_until is None:
            return False
        until = max(health.down_until, now + cooldown)
        self._health[provider_id] = dataclasses.replace(health, down_until=until)
        return True

    async def try_lock(self, name: str, ttl: float) -> bool:
        """Take a named lock for ``ttl`` seconds; False if someone else holds it."""
        now = self._clock()
        if self._locks.get(name, 0.0) > now:
            return False
        self._locks[name] = now + ttl
        return True

    async def release_lock(self, name: str) -> None:
        """Release a named lock."""
        self._locks.pop(name, None)

    async def get_controls(self) -> Controls:
        """The operator's controls: pinned provider, failover on or off."""
        return self._controls

    async def set_controls(self, controls: Controls) -> None:
        """Replace the operator's controls."""
        self._controls = controls

    async def get_latency_samples(self, provider_ids: Sequence[str]) -> Mapping[str, list[float]]:
        """The most recent first-audio latency samples of each provider, oldest first."""
        return {pid: list(self._latency.get(pid, ())) for pid in provider_ids}

    async def add_latency_samples(self, provider_id: str, samples: Sequence[float]) -> None:
        """Add a call's first-audio latency samples of one provider."""
        self._latency.setdefault(provider_id, deque(maxlen=LATENCY_SAMPLES_KEPT)).extend(samples)

    async def close(self) -> None:
        """Nothing to release; present for the protocol."""

    def reset(self) -> None:
        """Forget everything (for tests and operators)."""
        self._health.clear()
        self._windows.clear()
        self._locks.clear()
        self._latency.clear()
        self._controls = Controls()
        self._registered.clear()


_default: InMemoryHealthStore | None = None


def default_store() -> InMemoryHealthStore:
    """The in-memory store shared by every FailoverTTSService of this process."""
    global _default
    if _default is None:
        _default = InMemoryHealthStore()
    return _default
