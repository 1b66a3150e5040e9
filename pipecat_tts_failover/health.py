"""When the fleet ejects a provider: rules over the evidence of every sentence attempt.

A call moves off a provider at its first failed sentence (that protects the
caller and needs no evidence). Whether every *new* call avoids the provider is
a fleet decision, taken on evidence kept in the health store: the outcomes of
sentence attempts in a sliding window of time buckets, the fleet's consecutive
failures, and how often the provider was ejected lately.

:class:`HealthPolicy` holds the rules' numbers; :class:`HealthWindow` applies
them to one provider's record. The in-memory store runs ``HealthWindow``
itself; the Redis store runs the same rules atomically in Lua
(``store/lua/record_attempt.lua``). Both are pure: no clock, no randomness of
their own.
"""

import math
from dataclasses import dataclass, field

from pipecat_tts_failover.config import non_negative, positive_int, positive_seconds
from pipecat_tts_failover.detection import FailureReason

RULE_PERMANENT = "permanent"
RULE_CONSECUTIVE = "consecutive"
RULE_RATE = "rate"


@dataclass(frozen=True, slots=True)
class HealthPolicy:
    """The evidence the fleet needs before every new call avoids a provider.

    The defaults need no tuning. A provider is ejected (marked down for the
    fleet) when one of these holds:

    - **permanent**: a failure that repeats until someone changes something
      (authentication, authorization, invalid voice or model, exhausted quota,
      a service pipecat marked unusable) ejects at once;
    - **consecutive**: ``consecutive`` failed attempts in a row across the
      fleet, with no success in between. After a caller's failure the call
      confirms it with up to ``confirm_probes`` probes through the failed
      provider's now idle service (their audio goes nowhere); their outcomes
      count as attempts, so with one call at a time a provider that fails
      every request is ejected before the next caller meets it, and a probe
      that speaks shows the failure was an isolated hiccup;
    - **rate**: at least ``failure_rate`` of the attempts in the last
      ``window`` seconds failed, with at least ``min_volume`` attempts.

    An ejection lasts ``ejection`` seconds times the number of recent
    ejections of the same provider, capped at ``max_ejection``, with
    ``jitter``; each ``forgive_after`` seconds without an ejection forgives
    one. The last provider that is not ejected is never ejected for
    non-permanent evidence (a panic floor: calls then keep preference order).
    An attempt judged while this process's event loop lagged more than
    ``max_loop_lag`` seconds is not held against the provider.

    Parameters:
        consecutive: Failed attempts in a row, fleet-wide, that eject.
            Three: a caller's failure and two confirming probes. Isolated
            errors at a rate p eject only when p**3 strikes (8e-6 per attempt
            at 2 %: about once a day at 10 sentences/s), while a hard outage
            ejects within three attempts.
        confirm_probes: Probes a call sends through a provider's idle service
            right after that provider failed one of its sentences (0: none).
        failure_rate: Share of failed attempts in the window that ejects.
        min_volume: Attempts the window needs before the rate rule applies.
        window: Seconds of outcomes the rate rule looks at.
        bucket: Seconds per time bucket of the window.
        ejection: Seconds the first ejection lasts.
        max_ejection: The longest ejection.
        jitter: Fraction (0..1) by which each ejection's length is varied at random.
        forgive_after: Seconds without an ejection after which one past
            ejection no longer lengthens the next.
        max_loop_lag: Event-loop lag, in seconds, above which this process
            does not blame providers for its attempts' failures.
    """

    consecutive: int = 3
    confirm_probes: int = 2
    failure_rate: float = 0.5
    min_volume: int = 10
    window: float = 30.0
    bucket: float = 5.0
    ejection: float = 30.0
    max_ejection: float = 300.0
    jitter: float = 0.15
    forgive_after: float = 300.0
    max_loop_lag: float = 0.25

    def __post_init__(self):
        positive_int("consecutive", self.consecutive)
        if isinstance(self.confirm_probes, bool) or not isinstance(self.confirm_probes, int):
            raise TypeError(
                f"confirm_probes must be an int, not {type(self.confirm_probes).__name__}"
            )
        if self.confirm_probes < 0:
            raise ValueError(f"confirm_probes must be zero or more, got {self.confirm_probes!r}")
        if not 0.0 < positive_seconds("failure_rate", self.failure_rate) <= 1.0:
            raise ValueError(f"failure_rate must be in (0, 1], got {self.failure_rate!r}")
        positive_int("min_volume", self.min_volume)
        positive_seconds("window", self.window)
        positive_seconds("bucket", self.bucket)
        if self.bucket > self.window:
            raise ValueError(
                f"bucket ({self.bucket:g} s) must not be longer than window ({self.window:g} s)"
            )
        positive_seconds("ejection", self.ejection)
        positive_seconds("max_ejection", self.max_ejection)
        if self.max_ejection < self.ejection:
            raise ValueError(
                f"max_ejection ({self.max_ejection:g} s) must be at least ejection "
                f"({self.ejection:g} s)"
            )
        if not 0.0 <= non_negative("jitter", self.jitter) < 1.0:
            raise ValueError(f"jitter must be in [0, 1), got {self.jitter!r}")
        positive_seconds("forgive_after", self.forgive_after)
        positive_seconds("max_loop_lag", self.max_loop_lag)

    @property
    def buckets(self) -> int:
        """How many buckets the window holds."""
        return max(1, math.ceil(self.window / self.bucket))

    def ejection_seconds(self, ejections: int, draw: float) -> float:
        """How long the ``ejections``-th recent ejection lasts.

        Args:
            ejections: Recent ejections of the provider, this one included (1+).
            draw: A random number in [-1, 1] for the jitter.

        Returns:
            ``ejection * ejections``, capped at ``max_ejection``, varied by the jitter.
        """
        seconds = min(self.max_ejection, self.ejection * max(1, ejections))
        return seconds * (1.0 + self.jitter * max(-1.0, min(1.0, draw)))

    @classmethod
    def first_failure(cls, cooldown: float = 60.0) -> "HealthPolicy":
        """The rule of version 0.1: the first failed sentence ejects for ``cooldown`` seconds.

        Kept for comparison (``benchmarks/fleet_health.py``); it ejects a
        healthy provider for every isolated error.
        """
        return cls(
            consecutive=1,
            confirm_probes=0,
            ejection=cooldown,
            max_ejection=cooldown,
            jitter=0.0,
            max_loop_lag=3600.0,
        )


def is_blamed(reason: FailureReason) -> bool:
    """Whether a failure counts against the provider at all.

    A limit the client hit by its own use (a provider's cap on open contexts
    reached by the call's own barge-ins) says nothing about the provider's health.
    """
    return reason is not FailureReason.CLIENT_MISUSE


@dataclass(frozen=True, slots=True)
class AttemptVerdict:
    """What recording one attempt did to a provider's fleet record.

    Parameters:
        ejected: This write ejected the provider: exactly one writer sees
            True per incident (alerts are deduplicated on it).
        rule: The rule that ejected it (``"permanent"``, ``"consecutive"``,
            ``"rate"``), when one did.
        down_until: Wall-clock end of the ejection in force, if any.
        spared: A rule called for ejection but the panic floor kept the
            provider in: every other provider is down.
        consecutive: Failed attempts in a row after this one.
        attempts: Attempts in the window after this one.
        failures: Failed attempts in the window after this one.
        ejections: Recent ejections, this one included.
    """

    ejected: bool = False
    rule: str | None = None
    down_until: float | None = None
    spared: bool = False
    consecutive: int = 0
    attempts: int = 0
    failures: int = 0
    ejections: int = 0


@dataclass
class HealthWindow:
    """One provider's evidence: window buckets, the consecutive count, ejection history.

    Parameters:
        buckets: ``{bucket index: [attempts, failures]}``; the index is
            ``floor(time / bucket)``.
        consecutive: Failed attempts in a row, fleet-wide.
        ejections: Ejections counted toward the next one's length.
        ejected_at: Wall-clock time of the last ejection.
    """

    buckets: dict[int, list[int]] = field(default_factory=dict)
    consecutive: int = 0
    ejections: int = 0
    ejected_at: float | None = None

    def totals(self, policy: HealthPolicy, now: float) -> tuple[int, int]:
        """Attempts and failures in the window at ``now`` (dropping older buckets)."""
        current = int(now // policy.bucket)
        oldest = current - policy.buckets + 1
        for index in [i for i in self.buckets if i < oldest]:
            del self.buckets[index]
        attempts = sum(b[0] for b in self.buckets.values())
        failures = sum(b[1] for b in self.buckets.values())
        return attempts, failures

    def recent_ejections(self, policy: HealthPolicy, now: float) -> int:
        """Past ejections still counted: one is forgiven per ``forgive_after`` seconds since the last."""
        if self.ejected_at is None:
            return 0
        forgiven = int(max(0.0, now - self.ejected_at) // policy.forgive_after)
        return max(0, self.ejections - forgiven)

    def record(
        self,
        failure: FailureReason | None,
        policy: HealthPolicy,
        now: float,
        *,
        down: bool,
        others_up: bool,
    ) -> tuple[str | None, bool]:
        """Add one attempt's outcome and say which rule, if any, ejects the provider.

        Args:
            failure: Why the attempt failed, or None if it spoke.
            policy: The rules.
            now: Wall-clock time of the attempt.
            down: Whether the provider is ejected already (then nothing ejects again).
            others_up: Whether another provider of the group is not ejected
                (the panic floor needs one).

        Returns:
            ``(rule, spared)``: the rule that ejects, or None; and whether a
            rule was met but the panic floor kept the provider in.
        """
        bucket = self.buckets.setdefault(int(now // policy.bucket), [0, 0])
        bucket[0] += 1
        if failure is None:
            self.consecutive = 0
            return None, False
        bucket[1] += 1
        self.consecutive += 1
        if down:
            return None, False
        if failure.is_permanent:
            return RULE_PERMANENT, False
        attempts, failures = self.totals(policy, now)
        rule = None
        if self.consecutive >= policy.consecutive:
            rule = RULE_CONSECUTIVE
        elif attempts >= policy.min_volume and failures >= policy.failure_rate * attempts:
            rule = RULE_RATE
        if rule is not None and not others_up:
            return None, True
        return rule, False

    def eject(self, policy: HealthPolicy, now: float, draw: float) -> float:
        """Count an ejection at ``now``; return when it ends.

        The window's evidence starts afresh; the run of failures goes on
        until the provider speaks again.
        """
        self.ejections = self.recent_ejections(policy, now) + 1
        self.ejected_at = now
        self.buckets.clear()
        return now + policy.ejection_seconds(self.ejections, draw)
