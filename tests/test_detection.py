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
    for category in (ErrorCategory.AUTHENTICATION, ErrorCategory.INVALID_REQUEST):
        assert (
            reason_for_error(category, raised=False, usable=True) is FailureReason.PERMANENT_ERROR
        )
    assert (
        reason_for_error(ErrorCategory.SERVER, raised=False, usable=False)
        is FailureReason.PERMANENT_ERROR
    )
    assert FailureReason.PERMANENT_ERROR.is_permanent and not FailureReason.STALLED.is_permanent
