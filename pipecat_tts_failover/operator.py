"""Operator controls, as a Python API: what the ``status``, ``mark-down``, ``pin`` ... commands do.

Every function works on a :class:`~pipecat_tts_failover.store.HealthStore`, so
the same calls steer one process (in-memory store) or a whole fleet (Redis).

Example::

    store = RedisHealthStore("redis://redis:6379/0")
    await pin(store, "elevenlabs")          # every new call starts on ElevenLabs
    await set_failover(store, enabled=False)  # kill switch: no failover at all
    rows = await status(store, ["cartesia", "elevenlabs"])
"""

from collections.abc import Sequence
from dataclasses import dataclass

from pipecat_tts_failover.detection import FailureReason
from pipecat_tts_failover.providers import normalize_provider_id
from pipecat_tts_failover.store.base import Controls, HealthStore, ProviderHealth


@dataclass(frozen=True, slots=True)
class FleetStatus:
    """What the store says of every provider, and the operator's controls."""

    providers: list[ProviderHealth]
    controls: Controls


async def status(store: HealthStore, provider_ids: Sequence[str] | None = None) -> FleetStatus:
    """Read the health of providers and the controls.

    Args:
        store: The health store.
        provider_ids: The providers to show; None shows every provider the
            store knows of.

    Returns:
        The providers' records, in the order asked (or sorted), and the controls.
    """
    if provider_ids is None:
        known = getattr(store, "known_providers", None)
        provider_ids = sorted(await known()) if known is not None else []
    ids = [normalize_provider_id(pid) for pid in provider_ids]
    health = await store.get(ids)
    return FleetStatus([health[pid] for pid in ids], await store.get_controls())


async def mark_down(
    store: HealthStore,
    provider_id: str,
    *,
    cooldown: float,
    reason: FailureReason = FailureReason.OPERATOR,
) -> bool:
    """Take a provider out of new calls for ``cooldown`` seconds; True if it was up."""
    if cooldown <= 0:
        raise ValueError(f"cooldown must be a positive number of seconds, got {cooldown!r}")
    return await store.mark_down(
        normalize_provider_id(provider_id), reason=reason, cooldown=cooldown
    )


async def mark_up(store: HealthStore, provider_id: str) -> bool:
    """Put a provider back into new calls; True if it was down."""
    return await store.mark_up(normalize_provider_id(provider_id))


async def pin(store: HealthStore, provider_id: str) -> None:
    """Start every new call on one provider (failover still applies unless disabled)."""
    controls = await store.get_controls()
    await store.set_controls(
        Controls(
            pinned=normalize_provider_id(provider_id), failover_enabled=controls.failover_enabled
        )
    )


async def unpin(store: HealthStore) -> None:
    """Let new calls start on the preferred healthy provider again."""
    controls = await store.get_controls()
    await store.set_controls(Controls(pinned=None, failover_enabled=controls.failover_enabled))


async def set_failover(store: HealthStore, *, enabled: bool) -> None:
    """The kill switch: with failover disabled, calls use one provider and never move."""
    controls = await store.get_controls()
    await store.set_controls(Controls(pinned=controls.pinned, failover_enabled=enabled))


async def reset(store: HealthStore, provider_ids: Sequence[str] | None = None) -> list[str]:
    """Mark every provider up and clear the controls.

    Returns:
        The providers that were down.
    """
    current = await status(store, provider_ids)
    was_down = [h.provider_id for h in current.providers if h.down_until is not None]
    for health in current.providers:
        await store.mark_up(health.provider_id)
    await store.set_controls(Controls())
    return was_down
