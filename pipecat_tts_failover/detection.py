"""Why a sentence failed on a provider, and the audio checks that decide it."""

import re
import warnings
from enum import Enum
from typing import TYPE_CHECKING

from pipecat.utils.errors import ErrorCategory, classify_http_status_code

with warnings.catch_warnings():
    # pipecat itself does its audio maths with audioop (audioop-lts from Python 3.13).
    warnings.simplefilter("ignore", DeprecationWarning)
    import audioop

if TYPE_CHECKING:
    from pipecat.frames.frames import ErrorFrame


class FailureReason(str, Enum):
    """Why one sentence failed on one provider.

    Parameters:
        ERROR: The provider pushed an ``ErrorFrame`` that says no more.
        SERVER_ERROR: The provider reported an internal failure (5xx).
        RATE_LIMITED: The provider refused for too many requests (429).
        CONNECTIVITY: The provider could not be reached.
        AUTHENTICATION: The provider rejected the credentials (401/403).
            Permanent.
        INVALID_REQUEST: The provider rejected the request: unknown voice or
            model, bad settings. Permanent.
        QUOTA: The account's credit or quota is exhausted. Permanent.
        PERMANENT_ERROR: Another error pipecat classes as permanent. Permanent.
        CLIENT_MISUSE: The client broke one of the provider's rules by its own
            use (too many open contexts from rapid barge-ins, a settings change
            the provider does not allow mid-stream). The call moves on, but the
            provider is not blamed for it.
        EXCEPTION: Synthesis raised an exception.
        NO_FIRST_AUDIO: No audio arrived within ``first_audio_timeout``.
        STALLED: Audio stopped for longer than ``stall_timeout`` before the end.
        NO_AUDIO: The provider finished the sentence without any audio.
        SILENT_AUDIO: The provider sent only digital silence.
        UNUSABLE: The service had reported it can no longer do its job.
            Permanent.
        OPERATOR: An operator marked the provider down by hand.
    """

    ERROR = "error"
    SERVER_ERROR = "server_error"
    RATE_LIMITED = "rate_limited"
    CONNECTIVITY = "connectivity"
    AUTHENTICATION = "authentication"
    INVALID_REQUEST = "invalid_request"
    QUOTA = "quota"
    PERMANENT_ERROR = "permanent_error"
    CLIENT_MISUSE = "client_misuse"
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
        return self in _PERMANENT


_PERMANENT = frozenset(
    {
        FailureReason.AUTHENTICATION,
        FailureReason.INVALID_REQUEST,
        FailureReason.QUOTA,
        FailureReason.PERMANENT_ERROR,
        FailureReason.UNUSABLE,
    }
)

_BY_CATEGORY = {
    ErrorCategory.AUTHENTICATION: FailureReason.AUTHENTICATION,
    ErrorCategory.AUTHORIZATION: FailureReason.AUTHENTICATION,
    ErrorCategory.INVALID_REQUEST: FailureReason.INVALID_REQUEST,
    ErrorCategory.QUOTA: FailureReason.QUOTA,
    ErrorCategory.RATE_LIMIT: FailureReason.RATE_LIMITED,
    ErrorCategory.SERVER: FailureReason.SERVER_ERROR,
    ErrorCategory.CONNECTIVITY: FailureReason.CONNECTIVITY,
}

# What providers say when the client broke a rule by its own use, not when they fail:
# ElevenLabs' cap of five open contexts per socket, and its rule that voice
# settings come in the first message and never change.
_CLIENT_MISUSE = re.compile(
    r"max_active_conversations|voice_settings|settings can ?not be changed", re.IGNORECASE
)
# What providers' own error codes say, where pipecat leaves the category unknown
# (it does for every one of these in 1.14): Cartesia's and ElevenLabs' codes.
_CODES_IN_MESSAGE = (
    (
        re.compile(r"quota_exceeded|insufficient_credits|exceeds your quota", re.IGNORECASE),
        FailureReason.QUOTA,
    ),
    (
        re.compile(r"concurrency_limited|too_many_concurrent_requests|rate_limited", re.IGNORECASE),
        FailureReason.RATE_LIMITED,
    ),
    (
        re.compile(r"invalid_api_key|invalid api key|unauthorized", re.IGNORECASE),
        FailureReason.AUTHENTICATION,
    ),
    (
        re.compile(r"model_not_found|voice_not_found|invalid model", re.IGNORECASE),
        FailureReason.INVALID_REQUEST,
    ),
)
# A status code quoted in an error message: "status 503", "status_code": 401, "HTTP 429", "(429)".
_STATUS_IN_MESSAGE = re.compile(
    r"(?:status(?:_code)?|http|code)[\"':= ]{0,4}([45]\d\d)\b|\(([45]\d\d)\)", re.IGNORECASE
)


def reason_for_error(
    category: ErrorCategory | None,
    *,
    raised: bool,
    usable: bool,
    message: str | None = None,
) -> FailureReason:
    """Classify an ``ErrorFrame`` from a provider by what the provider said.

    pipecat's category decides where it has one; otherwise the provider's own
    error code in the message (``quota_exceeded``, ``concurrency_limited``,
    ``invalid_api_key``...), or a status code it quotes (a Cartesia error
    "status 503", a rejected handshake's 401).

    Args:
        category: The pipecat category of the error, if any.
        raised: Whether the error came from an exception raised by the service.
        usable: Whether the service can still do its job after the error.
        message: The error's text.

    Returns:
        The reason to record for the attempt.
    """
    if message and _CLIENT_MISUSE.search(message):
        return FailureReason.CLIENT_MISUSE
    if category in (None, ErrorCategory.UNKNOWN) and message:
        for pattern, coded in _CODES_IN_MESSAGE:
            if pattern.search(message):
                return coded
    status = _STATUS_IN_MESSAGE.search(message or "")
    if category in (None, ErrorCategory.UNKNOWN) and status:
        category = classify_http_status_code(int(status.group(1) or status.group(2)))
    reason = _BY_CATEGORY.get(category)
    if reason is not None and reason.is_permanent:
        return reason
    if category is not None and category.is_permanent:
        return FailureReason.PERMANENT_ERROR
    if not usable:
        return FailureReason.UNUSABLE
    if reason is not None:
        return reason
    return FailureReason.EXCEPTION if raised else FailureReason.ERROR


def reason_for_error_frame(frame: "ErrorFrame") -> FailureReason:
    """Classify an ``ErrorFrame`` a provider's service pushed (see :func:`reason_for_error`)."""
    return reason_for_error(
        frame.category,
        raised=frame.exception is not None,
        usable=frame.processor.is_usable if frame.processor else True,
        message=frame.error,
    )


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


pcm16_rms_even = audioop.rms
"""``pcm16_rms`` for a chunk of whole 16-bit samples, called as ``(audio, 2)``: the audio path's, with no Python call of its own."""


def is_audible(audio: bytes, silence_floor: float) -> bool:
    """Whether a chunk of 16-bit PCM is louder than digital silence.

    Args:
        audio: Raw PCM bytes.
        silence_floor: RMS level (0..32768) at or below which audio counts as silence.

    Returns:
        True if the chunk's RMS is above the floor.
    """
    return pcm16_rms(audio) > silence_floor
