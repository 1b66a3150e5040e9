"""The HealthStore protocol: where provider health lives between calls."""

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from pipecat_tts_failover.detection import FailureReason

Clock = Callable[[], float]
"""A function returning wall-clock seconds (``time.time`` by default).

Health is shared between processes, so stores keep wall-clock time, not
monotonic time.
"""

wall_clock: Clock = time.time


@dataclass(frozen=True, slots=True)
class ProviderHealth:
    """What a store knows about one provider.

    Parameters:
        provider_id: The normalized provider id.
        down_until: Wall-clock time the current mark-down ends, or None if the
            provider is not marked down.
        reason: Why it was marked down.
        since: Wall-clock time it was marked down.
        failures: Consecutive failed sentences recorded since the last success.
    """

    provider_id: str
    down_until: float | None = None
    reason: FailureReason | None = None
    since: float | None = None
    failures: int = 0

    def is_down(self, now: float) -> bool:
        """Whether the provider is marked down at ``now``."""
        return self.down_until is not None and now < self.down_until


@dataclass(frozen=True, slots=True)
class Controls:
    """What an operator has set for every new call.

    Parameters:
        pinned: A provider every new call starts on, or None.
        failover_enabled: False is the kill switch: calls always use the
            preferred (or pinned) provider and never fail over.
    """

    pinned: str | None = None
    failover_enabled: bool = True


@runtime_checkable
class HealthStore(Protocol):
    """Where provider health is kept, so new calls start on a healthy provider.

    Every method must return quickly: ``FailoverTTSService`` reads health when
    a call starts and writes from a background task, never on the audio path,
    but a store that waits on the network should still answer reads from a
    local view and queue its writes.

    ``mark_down`` and ``mark_up`` return whether *this* call changed the state,
    so exactly one caller (in a fleet: one worker) sees ``True`` per incident;
    alerts are deduplicated on that.
    """

    async def get(self, provider_ids: Sequence[str]) -> Mapping[str, ProviderHealth]:
        """Return the health of each provider (a healthy record for unknown ones).

        A record has ``down_until`` set only while its mark-down is in force:
        one whose cooldown has run out reads as healthy.
        """
        ...

    async def record_failure(self, provider_id: str, reason: FailureReason) -> int:
        """Count a failed sentence; return the consecutive failure count."""
        ...

    async def record_success(self, provider_id: str) -> None:
        """Reset the consecutive failure count after a spoken sentence."""
        ...

    async def mark_down(self, provider_id: str, *, reason: FailureReason, cooldown: float) -> bool:
        """Mark a provider down for ``cooldown`` seconds; True if it was up before."""
        ...

    async def mark_up(self, provider_id: str) -> bool:
        """Mark a provider healthy; True if it was down before."""
        ...

    async def extend_down(self, provider_id: str, cooldown: float) -> bool:
        """Keep a provider that is down marked down until at least ``cooldown`` seconds from now.

        Used by recovery after a failed probe. Not a new incident: nothing is
        published as a mark-down, ``since`` and ``reason`` stay.

        Returns:
            True if it was down, False if it was up (then nothing changes).
        """
        ...

    async def try_lock(self, name: str, ttl: float) -> bool:
        """Take a named lock for ``ttl`` seconds; False while someone else holds it."""
        ...

    async def release_lock(self, name: str) -> None:
        """Release a named lock taken with ``try_lock`` (by this store)."""
        ...

    async def get_controls(self) -> Controls:
        """The operator's controls for new calls (answered from a local view where there is one)."""
        ...

    async def set_controls(self, controls: Controls) -> None:
        """Replace the operator's controls; every worker's new calls see them."""
        ...

    async def close(self) -> None:
        """Release what the store holds. Safe to call twice."""
        ...


@runtime_checkable
class LatencySharing(Protocol):
    """A store that also shares first-audio latency samples, so a fresh worker starts with the fleet's view.

    Optional: ``FailoverTTSService`` uses it when the store has it.
    """

    async def get_latency_samples(self, provider_ids: Sequence[str]) -> Mapping[str, list[float]]:
        """The most recent samples of each provider (oldest first, at most a few hundred)."""
        ...

    async def add_latency_samples(self, provider_id: str, samples: Sequence[float]) -> None:
        """Add a call's samples of one provider."""
        ...
