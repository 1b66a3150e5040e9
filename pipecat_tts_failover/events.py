"""What FailoverTTSService reports to alerters and metrics: small frozen records, one per happening.

Listeners (alerters, metrics) receive them through ``on_event``, which is
called on the audio path: it must return at once (count, or queue for a task of
its own), never wait on the network, and never raise.
"""

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from pipecat_tts_failover.detection import FailureReason


@dataclass(frozen=True, slots=True)
class SentenceAttempted:
    """A provider spoke a sentence, or failed it.

    Parameters:
        provider_id: The provider.
        reason: Why it failed, or None if it spoke the sentence in full.
    """

    provider_id: str
    reason: FailureReason | None

    @property
    def outcome(self) -> str:
        """``"spoken"`` or the failure reason's value."""
        return "spoken" if self.reason is None else self.reason.value


@dataclass(frozen=True, slots=True)
class FailedOver:
    """A sentence moved from one provider to another.

    Parameters:
        from_id: The provider that failed the sentence.
        to_id: The provider that takes it over.
        reason: Why the first one failed.
        gap_seconds: Dead air: from the sentence's request to the failed provider
            until the new provider's first audible audio (None if it never spoke).
    """

    from_id: str
    to_id: str
    reason: FailureReason
    gap_seconds: float | None


@dataclass(frozen=True, slots=True)
class ProviderDown:
    """A provider was marked down; sent by the one worker whose mark-down changed the state.

    Parameters:
        provider_id: The provider.
        reason: Why.
        error: The provider's first error message, if there was one.
        since: Wall-clock time it went down.
        failed_sentences: Sentences it failed in the call that marked it down.
        rule: The health rule that ejected it (``"permanent"``,
            ``"consecutive"``, ``"rate"``); None when an operator did.
        seconds: How long the ejection lasts, when known.
    """

    provider_id: str
    reason: FailureReason
    error: str | None
    since: float
    failed_sentences: int
    rule: str | None = None
    seconds: float | None = None


@dataclass(frozen=True, slots=True)
class ProviderUp:
    """A provider was marked healthy again; sent by the one worker that changed the state.

    Parameters:
        provider_id: The provider.
        outage_seconds: How long it was down, when known.
    """

    provider_id: str
    outage_seconds: float | None


@dataclass(frozen=True, slots=True)
class ProbeFinished:
    """A recovery probe of a provider finished.

    Parameters:
        provider_id: The provider.
        ok: Whether it produced real audio in time.
        reason: Why it failed, when it did.
        seconds: How long it took.
        purpose: ``"recovery"`` (a provider that is down, before it comes
            back) or ``"confirm"`` (right after it failed a caller's sentence).
    """

    provider_id: str
    ok: bool
    reason: FailureReason | None
    seconds: float
    purpose: str = "recovery"


@dataclass(frozen=True, slots=True)
class ProviderSlow:
    """A provider's first-audio latency tail passed the slow threshold (reported once per episode).

    Parameters:
        provider_id: The provider.
        p95_seconds: Its p95 first-audio latency.
    """

    provider_id: str
    p95_seconds: float


@dataclass(frozen=True, slots=True)
class FailureExcused:
    """A provider failed an attempt, but the failure was not held against it in the fleet's health.

    Parameters:
        provider_id: The provider.
        reason: Why the attempt failed.
        cause: Why it was excused: ``"loop_lag"`` (this process's event loop
            lagged past the health policy's bound while the attempt was
            judged), ``"client_misuse"`` (the client broke one of the
            provider's rules by its own use), ``"no_service"`` (the app's
            factory for the provider's service raised or returned no
            service) or ``"panic_floor"`` (a rule was met, but every other
            provider is down).
    """

    provider_id: str
    reason: FailureReason
    cause: str


FailoverEvent = (
    SentenceAttempted
    | FailedOver
    | ProviderDown
    | ProviderUp
    | ProbeFinished
    | ProviderSlow
    | FailureExcused
)


@runtime_checkable
class FailoverListener(Protocol):
    """Receives FailoverEvents. ``on_event`` must return at once and never raise."""

    def on_event(self, event: FailoverEvent) -> None:
        """Take one event."""
        ...
