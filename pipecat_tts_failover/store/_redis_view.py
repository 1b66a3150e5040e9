"""The local view a RedisHealthStore answers from, and the writes it owes Redis.

Pure bookkeeping, no I/O: ``RedisHealthStore`` feeds the view from Redis's
replies and published changes, and changes it directly (recording what it
owes) while Redis is away.
"""

import dataclasses
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from pipecat_tts_failover.detection import FailureReason
from pipecat_tts_failover.store.base import ProviderHealth


@dataclass(frozen=True, slots=True)
class Revision:
    """A provider's record as Redis last reported it.

    Parameters:
        health: The record.
        rev: Redis's revision of it; every change bumps it, so an older update
            arriving late (a message queued behind a snapshot) is dropped.
    """

    health: ProviderHealth
    rev: int


class LocalView:
    """Every provider's last known record.

    Changes made while Redis is away (``count_failure``, ``mark_down``...)
    follow the in-memory store's semantics and keep the record's revision, so
    the next update from Redis supersedes them.
    """

    def __init__(self):
        self._records: dict[str, Revision] = {}

    def get(self, provider_id: str, now: float) -> ProviderHealth:
        """The provider's record at ``now``; a mark-down that has run out reads as up."""
        record = self._records.get(provider_id)
        if record is None:
            return ProviderHealth(provider_id)
        health = record.health
        if health.down_until is not None and not health.is_down(now):
            health = dataclasses.replace(health, down_until=None, reason=None, since=None)
        return health

    def apply(self, revision: Revision) -> bool:
        """Take a record from Redis unless the view already has a newer one.

        Returns:
            Whether the view changed.
        """
        pid = revision.health.provider_id
        current = self._records.get(pid)
        if current is not None and current.rev >= revision.rev:
            return False
        self._records[pid] = revision
        return True

    def replace(self, revisions: Iterable[Revision]):
        """Forget everything and take a full snapshot from Redis."""
        self._records = {r.health.provider_id: r for r in revisions}

    def active_mark_downs(self, now: float) -> list[ProviderHealth]:
        """The records whose mark-down is in force at ``now``."""
        return [r.health for r in self._records.values() if r.health.is_down(now)]

    def count_failure(self, provider_id: str, count: int = 1) -> int:
        """Add failed sentences locally; return the new count."""
        health = self.get_raw(provider_id)
        failures = health.failures + count
        self._set(dataclasses.replace(health, failures=failures))
        return failures

    def reset_failures(self, provider_id: str) -> bool:
        """Reset the failure count locally; return whether it was above 0."""
        health = self.get_raw(provider_id)
        if not health.failures:
            return False
        self._set(dataclasses.replace(health, failures=0))
        return True

    def mark_down(
        self, provider_id: str, *, reason: FailureReason, down_until: float, now: float
    ) -> ProviderHealth | None:
        """Mark a provider down locally unless it is already down at ``now``.

        Returns:
            The new record, or None if the provider was already down.
        """
        health = self.get_raw(provider_id)
        if health.is_down(now):
            return None
        health = dataclasses.replace(health, down_until=down_until, reason=reason, since=now)
        self._set(health)
        return health

    def mark_up(self, provider_id: str, now: float) -> tuple[bool, bool]:
        """Clear a provider's mark-down and failure count locally.

        Returns:
            ``(was_down, changed)``: whether it was down at ``now``, and whether
            the record held anything to clear.
        """
        health = self.get_raw(provider_id)
        changed = health.down_until is not None or health.failures > 0
        if changed:
            self._set(ProviderHealth(provider_id))
        return health.is_down(now), changed

    def get_raw(self, provider_id: str) -> ProviderHealth:
        """The provider's record as stored, expired mark-down included."""
        record = self._records.get(provider_id)
        return record.health if record is not None else ProviderHealth(provider_id)

    def _set(self, health: ProviderHealth):
        record = self._records.get(health.provider_id)
        self._records[health.provider_id] = Revision(health, record.rev if record else 0)


@dataclass(slots=True)
class Owed:
    """What one provider's record owes Redis, written back in field order.

    Parameters:
        mark_down: A mark-down to write, with its absolute times.
        mark_up_at: Or the wall-clock time of a mark-up to write.
        reset: Reset the failure count (a success or a mark-up happened).
        failures: Then add this many failed sentences.
    """

    mark_down: ProviderHealth | None = None
    mark_up_at: float | None = None
    reset: bool = False
    failures: int = 0

    def then(self, later: "Owed") -> "Owed":
        """The writes owed for this followed by ``later``."""
        marked = later.mark_down is not None or later.mark_up_at is not None
        return Owed(
            mark_down=later.mark_down if marked else self.mark_down,
            mark_up_at=later.mark_up_at if marked else self.mark_up_at,
            reset=self.reset or later.reset,
            failures=later.failures if later.reset else self.failures + later.failures,
        )


class PendingWrites:
    """Changes made while Redis was away, per provider, until they are written back."""

    def __init__(self):
        self._owed: dict[str, Owed] = {}

    def __len__(self) -> int:
        return len(self._owed)

    def failure(self, provider_id: str):
        """A failed sentence was counted locally."""
        self._owed.setdefault(provider_id, Owed()).failures += 1

    def success(self, provider_id: str):
        """The failure count was reset locally."""
        self._owed[provider_id] = self._owed.get(provider_id, Owed()).then(Owed(reset=True))

    def mark_down(self, health: ProviderHealth):
        """A provider was marked down locally (``health`` carries its times)."""
        owed = self._owed.get(health.provider_id, Owed())
        self._owed[health.provider_id] = owed.then(Owed(mark_down=health))

    def mark_up(self, provider_id: str, at: float):
        """A provider was marked up locally at ``at``."""
        owed = self._owed.get(provider_id, Owed())
        self._owed[provider_id] = owed.then(Owed(mark_up_at=at, reset=True))

    def pop(self) -> tuple[str, Owed] | None:
        """Take one provider's writes to send, or None if nothing is owed."""
        if not self._owed:
            return None
        provider_id = next(iter(self._owed))
        return provider_id, self._owed.pop(provider_id)

    def put_back(self, provider_id: str, owed: Owed):
        """Return writes that could not be sent, ahead of any made since."""
        later = self._owed.pop(provider_id, None)
        self._owed[provider_id] = owed.then(later) if later is not None else owed

    def snapshot(self) -> Mapping[str, Owed]:
        """What is owed, for logs and tests."""
        return dict(self._owed)
