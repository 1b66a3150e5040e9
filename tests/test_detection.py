"""Silence detection and error classification."""

import numpy as np
import pytest
from pipecat.utils.errors import ErrorCategory

from pipecat_tts_failover.detection import FailureReason, is_audible, pcm16_rms, reason_for_error


def pcm(values) -> bytes:
    return np.asarray(values, dtype="<i2").tobytes()


def test_rms_of_16_bit_pcm():
    assert pcm16_rms(b"") == 0.0
    assert pcm16_rms(pcm([0] * 100)) == 0.0
    assert pcm16_rms(pcm([1000, -1000] * 50)) == 1000.0
    # Whole sample units; a trailing odd byte is ignored.
    assert pcm16_rms(pcm([300, 400]) + b"\x01") == pytest.approx(125_000**0.5, abs=1)


def test_digital_silence_and_dither_are_not_audible_but_speech_is():
    assert not is_audible(pcm([0] * 320), 16.0)
    assert not is_audible(pcm(np.random.default_rng(0).integers(-8, 9, 320)), 16.0)
    tone = (3000 * np.sin(np.arange(320) * 2 * np.pi * 200 / 16000)).astype("<i2")
    assert is_audible(tone.tobytes(), 16.0)


def test_error_classification():
    assert reason_for_error(None, raised=False, usable=True) is FailureReason.ERROR
    assert (
        reason_for_error(ErrorCategory.UNKNOWN, raised=True, usable=True) is FailureReason.EXCEPTION
    )
    # pipecat's category names the reason, permanent ones first.
    expected = {
        ErrorCategory.AUTHENTICATION: FailureReason.AUTHENTICATION,
        ErrorCategory.AUTHORIZATION: FailureReason.AUTHENTICATION,
        ErrorCategory.INVALID_REQUEST: FailureReason.INVALID_REQUEST,
        ErrorCategory.QUOTA: FailureReason.QUOTA,
        ErrorCategory.RATE_LIMIT: FailureReason.RATE_LIMITED,
        ErrorCategory.SERVER: FailureReason.SERVER_ERROR,
        ErrorCategory.CONNECTIVITY: FailureReason.CONNECTIVITY,
    }
    for category, reason in expected.items():
        assert reason_for_error(category, raised=False, usable=True) is reason, category
    # A service left unusable is unusable, unless its category says more.
    assert (
        reason_for_error(ErrorCategory.SERVER, raised=False, usable=False) is FailureReason.UNUSABLE
    )
    assert (
        reason_for_error(ErrorCategory.AUTHENTICATION, raised=False, usable=False)
        is FailureReason.AUTHENTICATION
    )


@pytest.mark.parametrize(
    "message, reason",
    [
        ("Cartesia error: status 503, overloaded", FailureReason.SERVER_ERROR),
        ('{"status_code": 401, "detail": "bad key"}', FailureReason.AUTHENTICATION),
        ("server rejected WebSocket connection: HTTP 429", FailureReason.RATE_LIMITED),
        ("Error (402)", FailureReason.QUOTA),
        ("max_active_conversations: too many open contexts", FailureReason.CLIENT_MISUSE),
        ("something broke", FailureReason.ERROR),
        # What pipecat 1.14 pushes, category unknown (the fault matrix's real triggers):
        (
            "Error: {'type': 'error', 'status_code': 429, 'error_code': 'concurrency_limited'}",
            FailureReason.RATE_LIMITED,
        ),
        (
            'ElevenLabs API error: {"detail": {"status": "too_many_concurrent_requests"}}',
            FailureReason.RATE_LIMITED,
        ),
        (
            'ElevenLabs API error: {"detail": {"status": "quota_exceeded", "message": "..."}}',
            FailureReason.QUOTA,
        ),
        ("received 1008 (policy violation) Invalid API key", FailureReason.AUTHENTICATION),
    ],
)
def test_a_status_code_or_rule_quoted_in_the_message_names_the_reason(message, reason):
    assert reason_for_error(None, raised=False, usable=True, message=message) is reason
    assert (
        reason_for_error(ErrorCategory.UNKNOWN, raised=False, usable=True, message=message)
        is reason
    )


def test_permanent_reasons():
    assert FailureReason.PERMANENT_ERROR.is_permanent and not FailureReason.STALLED.is_permanent
    permanent = {r for r in FailureReason if r.is_permanent}
    assert permanent == {
        FailureReason.AUTHENTICATION,
        FailureReason.INVALID_REQUEST,
        FailureReason.QUOTA,
        FailureReason.PERMANENT_ERROR,
        FailureReason.UNUSABLE,
    }
