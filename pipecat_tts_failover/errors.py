"""Exceptions raised by pipecat-tts-failover.

The tree is small on purpose::

    FailoverError                 base of everything this package raises
    ├── AllProvidersFailedError   every provider failed one sentence (carried on
    │                             the ErrorFrame pushed upstream, never raised
    │                             into the pipeline)
    └── HealthStoreError          a health store could not be used as configured

Bad configuration raises the built-in ``ValueError`` or ``TypeError`` at
construction, naming the argument.
"""

from collections.abc import Mapping


class FailoverError(Exception):
    """Base class for errors of pipecat-tts-failover."""


class AllProvidersFailedError(FailoverError):
    """Every provider failed to speak what the caller was owed.

    Args:
        text: The text that went unspoken.
        failures: ``(provider_id, reason)`` pairs, in the order they were tried.
        errors: Each provider's own error message, where it sent one.
    """

    def __init__(
        self,
        text: str,
        failures: list[tuple[str, str]],
        errors: Mapping[str, str | None] | None = None,
    ):
        self.text = text
        self.failures = failures
        self.errors = dict(errors or {})
        tried = "; ".join(
            f"{pid} ({reason}: {self.errors[pid]})" if self.errors.get(pid) else f"{pid} ({reason})"
            for pid, reason in failures
        )
        super().__init__(f"every TTS provider failed: {tried}")


class HealthStoreError(FailoverError):
    """A health store could not be used as configured."""
