"""Why a sentence failed on a provider, and the audio checks that decide it."""

import warnings
from enum import Enum

from pipecat.utils.errors import ErrorCategory

with warnings.catch_warnings():
    # pipecat itself does its audio maths with audioop (audioop-lts from Python 3.13).
    warnings.simplefilter("ignore", DeprecationWarning)
    import audioop


class FailureReason(str, Enum):
    """Why one sentence failed on one provider.

    Parameters:
        ERROR: The provider pushed an ``ErrorFrame`` it can carry on from.
        PERMANENT_ERROR: The provider pushed an error pipecat classes as permanent
            (authentication, authorization, invalid request) or one that left the
            service unable to do its job. The call moves at once, whatever the
            threshold.
        EXCEPTION: Synthesis raised an exception.
        NO_FIRST_AUDIO: No audio arrived within ``first_audio_timeout``.
        STALLED: Audio stopped for longer than ``stall_timeout`` before the end.
        NO_AUDIO: The provider finished the sentence without any audio.
        SILENT_AUDIO: The provider sent only digital silence.
        UNUSABLE: The service had already reported it can no longer do its job.
        OPERATOR: An operator marked the provider down by hand.
    """

    ERROR = "error"
    PERMANENT_ERROR = "permanent_error"
    EXCEPTION = "exception"
    NO_FIRST_AUDIO = "no_first_audio"
    STALLED = "stalled"
    NO_AUDIO = "no_audio"
    SILENT_AUDIO = "silent_audio"
    UNUSABLE = "unusable"
    OPERATOR = "operator"

    def __str__(self) -> str:
        return self.value

    @property
    def is_permanent(self) -> bool:
        """Whether the provider will fail the same way until someone changes something."""
        return self in (FailureReason.PERMANENT_ERROR, FailureReason.UNUSABLE)


def reason_for_error(
    category: ErrorCategory | None, *, raised: bool, usable: bool
) -> FailureReason:
    """Classify an ``ErrorFrame`` from a provider.

    Args:
        category: The pipecat category of the error, if any.
        raised: Whether the error came from an exception raised by the service.
        usable: Whether the service can still do its job after the error.

    Returns:
        The reason to record for the sentence.
    """
    if not usable or (category is not None and category.is_permanent):
        return FailureReason.PERMANENT_ERROR
    return FailureReason.EXCEPTION if raised else FailureReason.ERROR


def pcm16_rms(audio: bytes) -> float:
    """Root mean square of 16-bit little-endian PCM, in sample units (0..32768).

    Args:
        audio: Raw PCM bytes; a trailing odd byte is ignored.

    Returns:
        The RMS level, rounded down to a whole sample unit; 0.0 for empty input.
    """
    # audioop's C loop: a few microseconds even when the CPU's caches are cold,
    # as they are for a chunk that arrives after a quiet spell on the socket
    # (numpy's dispatch costs ten times that there).
    usable = len(audio) & ~1
    if usable == 0:
        return 0.0
    return float(audioop.rms(audio if usable == len(audio) else audio[:usable], 2))


def is_audible(audio: bytes, silence_floor: float) -> bool:
    """Whether a chunk of 16-bit PCM is louder than digital silence.

    Args:
        audio: Raw PCM bytes.
        silence_floor: RMS level (0..32768) at or below which audio counts as silence.

    Returns:
        True if the chunk's RMS is above the floor.
    """
    return pcm16_rms(audio) > silence_floor
