"""The HealthStore protocol: where provider health lives between calls."""

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from pipecat_tts_failover.detection import FailureReason
from pipecat_tts_failover.health import AttemptVerdict, HealthPolicy

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
        failures: Failed attempts in a row, fleet-wide, since the last success.
        attempts: Attempts in the health policy's window, when last written.
        window_failures: Failed attempts in that window.
        ejections: Recent ejections (they lengthen the next one).
    """

    provider_id: str
    down_until: float | None = None
    reason: FailureReason | None = None
    since: float | None = None
    failures: int = 0
    attempts: int = 0
    window_failures: int = 0
    ejections: int = 0

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

    async def record_attempt(
        self,
        provider_id: str,
        failure: FailureReason | None,
        *,
        policy: HealthPolicy,
        peers: Sequence[str] = (),
        draw: float = 0.0,
    ) -> AttemptVerdict:
        """Add one sentence attempt's outcome to the provider's fleet-wide evidence.

        Applies ``policy`` atomically (see :class:`HealthWindow`): a rule that
        is met ejects the provider, unless every one of ``peers`` is down
        already and the failure is not permanent (the panic floor).

        Args:
            provider_id: The provider.
            failure: Why the attempt failed, or None if it spoke.
            policy: The ejection rules.
            peers: The other providers of the caller's group.
            draw: A random number in [-1, 1] for the ejection's jitter.

        Returns:
            What the write did; ``ejected`` is True for exactly one writer per incident.
        """
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

    async def register_providers(self, provider_ids: Sequence[str]) -> None:
        """Record the provider ids a worker uses, in its preference order.

        ``FailoverTTSService`` calls it (from its background writer) when a
        call starts, so operator tools know which providers exist before
        anything is written about them, and can refuse a typo. Each worker's
        order is merged into one list with :func:`merge_registered`.
        """
        ...

    async def registered_providers(self) -> list[str]:
        """Every provider id any worker has registered, in the merged preference order."""
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


def check_provider_ids(provider_ids: object, name: str = "provider_ids") -> list[str]:
    """Check that a store was given a sequence of provider ids, not one id.

    A bare string is a sequence too: ``get("cartesia")`` would otherwise ask
    for the providers ``"c"``, ``"a"``, ``"r"``...

    Args:
        provider_ids: The value given.
        name: The argument's name, for the error message.

    Returns:
        The ids, as a list.

    Raises:
        TypeError: If it is a string, not a sequence, or holds something other
            than strings.
    """
    if isinstance(provider_ids, (str, bytes)):
        raise TypeError(
            f"{name} must be a sequence of provider ids, not one {type(provider_ids).__name__} "
            f"(write [{provider_ids!r}])"
        )
    if not isinstance(provider_ids, Sequence):
        raise TypeError(
            f"{name} must be a sequence of provider ids, not {type(provider_ids).__name__}"
        )
    ids = list(provider_ids)
    for pid in ids:
        if not isinstance(pid, str):
            raise TypeError(f"{name} holds {type(pid).__name__} {pid!r}, not a str provider id")
    return ids


def merge_registered(registered: Sequence[str], provider_ids: Sequence[str]) -> list[str]:
    """Merge one worker's providers, in its preference order, into the registered list.

    The order already registered never changes, so every worker and operator
    reads the same list. A new id goes right after the worker's previous id;
    a new first id goes right before the first of the worker's later ids
    already registered, or at the end. Registering the same list again
    changes nothing. (``lua/register_providers.lua`` does the same in Redis.)

    Example: ``["cartesia", "elevenlabs"]`` merged with ``["rime", "cartesia",
    "playht"]`` gives ``["rime", "cartesia", "playht", "elevenlabs"]``.

    Args:
        registered: The list so far.
        provider_ids: One worker's provider ids, in its preference order.

    Returns:
        The merged list (a new list).
    """
    merged = list(registered)
    anchor: int | None = None  # where the worker's previous id sits in merged
    for i, pid in enumerate(provider_ids):
        if pid in merged:
            anchor = merged.index(pid)
            continue
        if anchor is not None:
            at = anchor + 1
        else:
            later = [merged.index(p) for p in provider_ids[i + 1 :] if p in merged]
            at = later[0] if later else len(merged)
        merged.insert(at, pid)
        anchor = at
    return merged


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
