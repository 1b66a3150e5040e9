"""The local view a RedisHealthStore answers from (records, controls) and the writes it owes Redis.

Pure bookkeeping, no I/O: ``RedisHealthStore`` feeds the view from Redis's
replies and published changes, and changes it directly (recording what it
owes) while Redis is away.
"""

import dataclasses
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from pipecat_tts_failover.detection import FailureReason
from pipecat_tts_failover.health import AttemptVerdict, HealthPolicy, HealthWindow
from pipecat_tts_failover.store.base import Controls, ProviderHealth


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


@dataclass(frozen=True, slots=True)
class ControlsRevision:
    """The operator's controls as Redis last reported them.

    Parameters:
        controls: The controls.
        rev: Redis's revision of them (0: never set).
    """

    controls: Controls
    rev: int


class LocalView:
    """Every provider's last known record, and the operator's controls.

    Changes made while Redis is away (``record_attempt``, ``mark_down``...)
    follow the in-memory store's semantics and keep the record's revision, so
    the next update from Redis supersedes them.
    """

    def __init__(self):
        self._records: dict[str, Revision] = {}
        self._controls = ControlsRevision(Controls(), 0)
        # This worker's own evidence while Redis is away; dropped at each resynchronization.
        self._windows: dict[str, HealthWindow] = {}

    @property
    def controls(self) -> ControlsRevision:
        """The operator's controls and their revision."""
        return self._controls

    @property
    def provider_ids(self) -> list[str]:
        """Every provider with a record."""
        return sorted(self._records)

    def apply_controls(self, revision: ControlsRevision) -> bool:
        """Take controls from Redis unless the view already has newer ones.

        Returns:
            Whether the view changed.
        """
        if revision.rev <= self._controls.rev:
            return False
        self._controls = revision
        return True

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

    def replace(self, revisions: Iterable[Revision], controls: ControlsRevision):
        """Forget everything (local evidence included) and take a full snapshot from Redis."""
        self._records = {r.health.provider_id: r for r in revisions}
        self._controls = controls
        self._windows.clear()

    def active_mark_downs(self, now: float) -> list[ProviderHealth]:
        """The records whose mark-down is in force at ``now``."""
        return [r.health for r in self._records.values() if r.health.is_down(now)]

    def record_attempt(
        self,
        provider_id: str,
        failure: FailureReason | None,
        *,
        policy: HealthPolicy,
        peers: Sequence[str],
        draw: float,
        now: float,
    ) -> AttemptVerdict:
        """Judge an attempt locally, with the rules ``record_attempt.lua`` applies in Redis.

        The evidence is this worker's own since Redis went away, on top of what
        the view last heard: the fleet's count of failures in a row and its
        recent ejections (counted from the last mark-down's start). The
        window's buckets start empty: the view holds only their totals.
        """
        health = self.get(provider_id, now)
        window = self._windows.get(provider_id)
        if window is None:
            raw = self.get_raw(provider_id)
            window = HealthWindow(
                consecutive=raw.failures,
                ejections=raw.ejections,
                ejected_at=(raw.since if raw.since is not None else now) if raw.ejections else None,
            )
            self._windows[provider_id] = window
        others_up = any(not self.get(p, now).is_down(now) for p in peers if p != provider_id)
        rule, spared = window.record(
            failure, policy, now, down=health.is_down(now), others_up=others_up
        )
        if rule is not None and failure is not None:
            until = window.eject(policy, now, draw)
            health = dataclasses.replace(health, down_until=until, reason=failure, since=now)
        attempts, failures = window.totals(policy, now)
        ejections = window.recent_ejections(policy, now)
        self._set(
            dataclasses.replace(
                health,
                failures=window.consecutive,
                attempts=attempts,
                window_failures=failures,
                ejections=ejections,
            )
        )
        return AttemptVerdict(
            ejected=rule is not None,
            rule=rule,
            down_until=health.down_until,
            spared=spared,
            consecutive=window.consecutive,
            attempts=attempts,
            failures=failures,
            ejections=ejections,
        )

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

    def extend_down(self, provider_id: str, *, down_until: float, now: float) -> tuple[bool, bool]:
        """Keep a provider that is down at ``now`` marked down until at least ``down_until``.

        Returns:
            ``(was_down, changed)``: whether it was down at ``now``, and whether
            its mark-down now ends later.
        """
        health = self.get_raw(provider_id)
        if not health.is_down(now):
            return False, False
        assert health.down_until is not None
        if down_until <= health.down_until:
            return True, False
        self._set(dataclasses.replace(health, down_until=down_until))
        return True, True

    def mark_up(self, provider_id: str, now: float) -> tuple[bool, bool]:
        """Clear a provider's mark-down and count of failures in a row locally (as ``mark_up.lua``).

        The window's counts and the ejection history stay.

        Returns:
            ``(was_down, changed)``: whether it was down at ``now``, and whether
            the record held anything to clear.
        """
        health = self.get_raw(provider_id)
        changed = health.down_until is not None or health.failures > 0
        if changed:
            self._set(
                dataclasses.replace(health, down_until=None, reason=None, since=None, failures=0)
            )
        if window := self._windows.get(provider_id):
            window.consecutive = 0
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
        ejection: That mark-down is an ejection the store decided on its
            own evidence: written with its count of recent ejections.
        mark_up_at: Or the wall-clock time of a mark-up to write.
        extend_to: Then keep a mark-down Redis already holds until this
            wall-clock time (a recovery probe failed while Redis was away).

    Attempts recorded while Redis was away are not owed: a window's evidence
    is worth seconds, and an attempt whose script reached a slow Redis after
    the store gave up on it would count twice. What they decided is: an
    ejection is owed as a mark-down.
    """

    mark_down: ProviderHealth | None = None
    ejection: bool = False
    mark_up_at: float | None = None
    extend_to: float | None = None

    def then(self, later: "Owed") -> "Owed":
        """The writes owed for this followed by ``later``."""
        marked = later.mark_down is not None or later.mark_up_at is not None
        return Owed(
            mark_down=later.mark_down if marked else self.mark_down,
            ejection=later.ejection if marked else self.ejection,
            mark_up_at=later.mark_up_at if marked else self.mark_up_at,
            extend_to=later.extend_to if marked else _latest(self.extend_to, later.extend_to),
        )


def _latest(a: float | None, b: float | None) -> float | None:
    return b if a is None else a if b is None else max(a, b)


class PendingWrites:
    """Changes made while Redis was away, per provider, until they are written back."""

    def __init__(self):
        self._owed: dict[str, Owed] = {}

    def __len__(self) -> int:
        return len(self._owed)

    def mark_down(self, health: ProviderHealth, *, ejection: bool = False):
        """A provider was marked down locally (``health`` carries its times).

        Args:
            health: The record with its mark-down.
            ejection: The store ejected it on its own evidence (``health``
                carries the ejection count).
        """
        owed = self._owed.get(health.provider_id, Owed())
        self._owed[health.provider_id] = owed.then(Owed(mark_down=health, ejection=ejection))

    def extend_down(self, provider_id: str, down_until: float):
        """A provider's mark-down was extended locally to ``down_until``."""
        owed = self._owed.setdefault(provider_id, Owed())
        if owed.mark_down is not None:
            # Not yet written: write it with its new end (it may outlast the old one).
            end = _latest(owed.mark_down.down_until, down_until)
            owed.mark_down = dataclasses.replace(owed.mark_down, down_until=end)
        else:
            owed.extend_to = _latest(owed.extend_to, down_until)

    def mark_up(self, provider_id: str, at: float):
        """A provider was marked up locally at ``at``."""
        owed = self._owed.get(provider_id, Owed())
        self._owed[provider_id] = owed.then(Owed(mark_up_at=at))

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
