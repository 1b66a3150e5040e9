"""Operator controls, as a Python API: what the ``status``, ``mark-down``, ``pin`` ... commands do.

Every function works on a :class:`~pipecat_tts_failover.store.HealthStore`, so
the same calls steer one process (in-memory store) or a whole fleet (Redis).

Workers register the provider ids they use when a call starts. The functions
that change a provider refuse one no worker has registered (a typo would
otherwise be stored and silently ignored by every call) with
:class:`UnknownProviderError`; ``force=True`` takes it anyway, for a provider
about to be deployed.

Example::

    store = RedisHealthStore("redis://redis:6379/0")
    await pin(store, "elevenlabs")          # every new call starts on ElevenLabs
    await set_failover(store, enabled=False)  # kill switch: no failover at all
    rows = await status(store, ["cartesia", "elevenlabs"])
"""

import difflib
from collections.abc import Sequence
from dataclasses import dataclass, field

from pipecat_tts_failover.detection import FailureReason
from pipecat_tts_failover.providers import normalize_provider_id
from pipecat_tts_failover.store.base import (
    Controls,
    HealthStore,
    ProviderHealth,
    check_provider_ids,
)


class UnknownProviderError(ValueError):
    """No worker has registered the provider id an operator named.

    Parameters:
        provider_id: The id as the operator wrote it.
        normalized: The id once normalized.
        known: The ids workers have registered, in preference order.
    """

    def __init__(self, provider_id: str, normalized: str, known: Sequence[str]):
        self.provider_id = provider_id
        self.normalized = normalized
        self.known = list(known)
        as_id = f" (as an id: {normalized!r})" if normalized != provider_id else ""
        if self.known:
            close = difflib.get_close_matches(normalized, self.known, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            known_text = f"known providers: {', '.join(self.known)}{hint}"
        else:
            known_text = "no worker has registered its providers yet (workers do at a call's start)"
        super().__init__(
            f"unknown provider {provider_id!r}{as_id}: no worker has registered it; {known_text}"
        )


@dataclass(frozen=True, slots=True)
class FleetStatus:
    """What the store says of every provider, and the operator's controls.

    Parameters:
        providers: The providers' records.
        controls: The operator's controls.
        registered: The provider ids workers have registered, in preference order.
    """

    providers: list[ProviderHealth]
    controls: Controls
    registered: list[str] = field(default_factory=list)


async def _registered_id(store: HealthStore, provider_id: str, *, force: bool = False) -> str:
    """Normalize a provider id an operator wrote and check that a worker registered it.

    Args:
        store: The health store.
        provider_id: The id as written (``"ElevenLabs"`` is ``"elevenlabs"``).
        force: Accept an id no worker has registered.

    Returns:
        The normalized id.

    Raises:
        UnknownProviderError: No worker has registered it, and not ``force``.
        TypeError: ``provider_id`` is not a string.
        ValueError: Nothing is left of it once normalized.
    """
    normalized = normalize_provider_id(provider_id)
    if not force:
        known = await store.registered_providers()
        if normalized not in known:
            raise UnknownProviderError(provider_id, normalized, known)
    return normalized


async def status(store: HealthStore, provider_ids: Sequence[str] | None = None) -> FleetStatus:
    """Read the health of providers and the controls.

    Args:
        store: The health store.
        provider_ids: The providers to show; None shows every provider a
            worker registered, in preference order, then any other the
            store has a record of (sorted).

    Returns:
        The providers' records, in that order, and the controls.
    """
    registered = await store.registered_providers()
    if provider_ids is None:
        known = getattr(store, "known_providers", None)
        recorded = sorted(await known()) if known is not None else []
        provider_ids = [*registered, *(p for p in recorded if p not in registered)]
    ids = [normalize_provider_id(pid) for pid in check_provider_ids(provider_ids)]
    health = await store.get(ids)
    return FleetStatus([health[pid] for pid in ids], await store.get_controls(), registered)


async def mark_down(
    store: HealthStore,
    provider_id: str,
    *,
    cooldown: float,
    reason: FailureReason = FailureReason.OPERATOR,
    force: bool = False,
) -> bool:
    """Take a provider out of new calls for ``cooldown`` seconds; True if it was up.

    Raises:
        UnknownProviderError: No worker has registered it, and not ``force``.
        ValueError: ``cooldown`` is not a positive number of seconds.
    """
    if cooldown <= 0:
        raise ValueError(f"cooldown must be a positive number of seconds, got {cooldown!r}")
    pid = await _registered_id(store, provider_id, force=force)
    return await store.mark_down(pid, reason=reason, cooldown=cooldown)


async def mark_up(store: HealthStore, provider_id: str, *, force: bool = False) -> bool:
    """Put a provider back into new calls; True if it was down.

    Raises:
        UnknownProviderError: No worker has registered it, and not ``force``.
    """
    return await store.mark_up(await _registered_id(store, provider_id, force=force))


async def pin(store: HealthStore, provider_id: str, *, force: bool = False) -> None:
    """Start every new call on one provider (failover still applies unless disabled).

    Raises:
        UnknownProviderError: No worker has registered it, and not ``force``.
    """
    pid = await _registered_id(store, provider_id, force=force)
    controls = await store.get_controls()
    await store.set_controls(Controls(pinned=pid, failover_enabled=controls.failover_enabled))


async def unpin(store: HealthStore) -> None:
    """Let new calls start on the preferred healthy provider again."""
    controls = await store.get_controls()
    await store.set_controls(Controls(pinned=None, failover_enabled=controls.failover_enabled))


async def set_failover(store: HealthStore, *, enabled: bool) -> None:
    """The kill switch: with failover disabled, calls use one provider and never move."""
    controls = await store.get_controls()
    await store.set_controls(Controls(pinned=controls.pinned, failover_enabled=enabled))


async def reset(
    store: HealthStore, provider_ids: Sequence[str] | None = None, *, force: bool = False
) -> list[str]:
    """Mark every provider up and clear the controls.

    Args:
        store: The health store.
        provider_ids: The providers to mark up; None: every one :func:`status` lists.
        force: Accept ids no worker has registered.

    Returns:
        The providers that were down.

    Raises:
        UnknownProviderError: One of ``provider_ids`` is not registered, and not ``force``.
    """
    if provider_ids is not None:
        ids = check_provider_ids(provider_ids)
        provider_ids = [await _registered_id(store, p, force=force) for p in ids]
    current = await status(store, provider_ids)
    was_down = [h.provider_id for h in current.providers if h.down_until is not None]
    for health in current.providers:
        await store.mark_up(health.provider_id)
    await store.set_controls(Controls())
    return was_down
