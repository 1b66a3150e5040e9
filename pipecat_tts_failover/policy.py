"""Which provider a call and each of its sentences use: the call's own move, and stickiness.

Pure: no I/O, no clock of its own. ``FailoverTTSService`` feeds it the health
read from the store when the call starts, the fleet's ejections it learns of,
and the outcome of every attempt. Whether the *fleet* ejects a provider is not
decided here but in the store, on evidence (see :mod:`health`).
"""

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from pipecat_tts_failover.detection import FailureReason
from pipecat_tts_failover.store.base import Controls, ProviderHealth


@dataclass(frozen=True, slots=True)
class SentenceOutcome:
    """What the policy decided once a sentence was over.

    Parameters:
        left: Providers this call stopped using on this sentence: they
            crossed the failure threshold or failed permanently.
        moved_from: The provider the call was on before it moved, if it moved.
        moved_to: The provider the call is on from now on, if it moved.
    """

    left: tuple[tuple[str, FailureReason], ...] = ()
    moved_from: str | None = None
    moved_to: str | None = None


@dataclass
class CallPolicy:
    """Provider choice for one call.

    The call starts on the first provider in preference order that the store
    does not mark down (in preference order when every one is: the panic
    floor). Each sentence tries the call's provider first, then the others in
    preference order (those down last, as a last resort). A provider that fails
    ``failure_threshold`` sentences in a row in this call, or fails
    permanently, is left: if it was the call's provider, the call moves for
    good to the provider that spoke the sentence, so the caller hears one voice
    from then on.

    Args:
        provider_ids: Provider ids in preference order.
        failure_threshold: Consecutive failed sentences in this call before
            the call leaves a provider.
        health: Health per provider, read from the store at call start. A
            provider is down when its record has ``down_until`` set: stores
            report only mark-downs that are still in force.
        controls: The operator's controls: a pinned provider starts every
            call; with failover disabled the call uses one provider only.
        canary: A provider marked down that this call tries anyway, as a
            canary for its recovery.
    """

    provider_ids: Sequence[str]
    failure_threshold: int
    health: Mapping[str, ProviderHealth] = field(default_factory=dict)
    controls: Controls = field(default_factory=Controls)
    canary: str | None = None
    call_provider: str = field(init=False)
    _down: set[str] = field(init=False)
    _failures: dict[str, int] = field(init=False)

    def __post_init__(self):
        self._down = {
            pid
            for pid in self.provider_ids
            if pid in self.health and self.health[pid].down_until is not None and pid != self.canary
        }
        self._failures = dict.fromkeys(self.provider_ids, 0)
        # Providers the store has reported down during this call: only these
        # can be seen to come back.
        self._store_down = set(self._down)
        pinned = self.controls.pinned
        if pinned in self.provider_ids:
            self.call_provider = pinned
        elif not self.controls.failover_enabled:
            self.call_provider = self.provider_ids[0]
        else:
            self.call_provider = self._first_up()

    def _first_up(self) -> str:
        return next(
            (pid for pid in self.provider_ids if pid not in self._down), self.provider_ids[0]
        )

    @property
    def failover_enabled(self) -> bool:
        """False when the operator's kill switch is on."""
        return self.controls.failover_enabled

    @property
    def down(self) -> frozenset[str]:
        """Providers this call treats as down."""
        return frozenset(self._down)

    def order_for_sentence(self, unusable: Iterable[str] = ()) -> list[str]:
        """The providers to try for the next sentence, in order.

        Args:
            unusable: Providers whose service reports it can no longer do its
                job; they are left out entirely.

        Returns:
            The call's provider first, then the healthy ones in preference
            order, then those marked down.
        """
        if not self.failover_enabled:
            return [self.call_provider]
        skip = set(unusable)
        rest = [pid for pid in self.provider_ids if pid != self.call_provider]
        ordered = [self.call_provider, *(p for p in rest if p not in self._down)]
        ordered += [p for p in rest if p in self._down]
        if self.call_provider in self._down:
            # The call's own provider went down with nowhere better to go: try
            # the healthy ones first.
            ordered = [p for p in ordered if p not in self._down] + [
                p for p in ordered if p in self._down
            ]
        return [p for p in ordered if p not in skip]

    def sentence_done(
        self, failures: Sequence[tuple[str, FailureReason]], spoken_by: str | None
    ) -> SentenceOutcome:
        """Record how a sentence went and decide what changes.

        Args:
            failures: ``(provider_id, reason)`` for each failed attempt, in order.
            spoken_by: The provider that spoke the sentence, or None if all failed.

        Returns:
            The providers the call left and where it moved, if anywhere.
        """
        left: list[tuple[str, FailureReason]] = []
        if not self.failover_enabled:
            return SentenceOutcome()
        for pid, reason in failures:
            self._failures[pid] += 1
            crossed = reason.is_permanent or self._failures[pid] >= self.failure_threshold
            if crossed and pid not in self._down:
                self._down.add(pid)
                left.append((pid, reason))
        if spoken_by is not None:
            self._failures[spoken_by] = 0
            self._down.discard(spoken_by)

        moved_from = moved_to = None
        if self.call_provider in self._down and spoken_by not in (None, self.call_provider):
            moved_from, moved_to = self.call_provider, spoken_by
            self.call_provider = spoken_by
        return SentenceOutcome(tuple(left), moved_from, moved_to)

    def leave(self, provider_id: str) -> tuple[str, str] | None:
        """Stop using a provider at once (its service became unusable).

        Returns:
            ``(from_id, to_id)`` if it was the call's provider and the call
            moved to another one that is not down, else None.
        """
        self._down.add(provider_id)
        if provider_id != self.call_provider or not self.failover_enabled:
            return None
        if self.controls.pinned == provider_id:
            return None
        to_id = next((p for p in self.provider_ids if p not in self._down), None)
        if to_id is None:
            return None
        self.call_provider = to_id
        return provider_id, to_id

    def saw_down(self, provider_id: str):
        """Note that the store has recorded a provider down (an ejection this call wrote).

        From then on the store reporting it healthy means it recovered, even if
        no sentence start happened to read it down in between.
        """
        self._store_down.add(provider_id)

    def refresh(self, health: Mapping[str, ProviderHealth]) -> tuple[str, str] | None:
        """Move the call back to a more preferred provider the store reports healthy again.

        Used with ``return_to_primary="immediately"``. A pinned call or one with
        failover disabled never moves.

        Args:
            health: Health per provider, as the store reports it now.

        Returns:
            ``(from_id, to_id)`` if the call moved, else None.
        """
        if self.controls.pinned in self.provider_ids or not self.failover_enabled:
            return None
        self._store_down |= {p for p, h in health.items() if h.down_until is not None}
        for pid in self.provider_ids:
            if pid == self.call_provider:
                return None
            record = health.get(pid)
            if pid in self._store_down and record is not None and record.down_until is None:
                self._store_down.discard(pid)
                self._down.discard(pid)
                self._failures[pid] = 0
                moved = (self.call_provider, pid)
                self.call_provider = pid
                return moved
        return None
