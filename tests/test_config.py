"""The checks FailoverTTSService's arguments go through."""

import math

import pytest

from pipecat_tts_failover.config import check_probe_backoff


def test_probe_backoff_may_grow_up_to_its_maximum():
    assert check_probe_backoff(2, 30) == (2.0, 30.0)
    assert check_probe_backoff(5.0, 5.0) == (5.0, 5.0)


def test_a_probe_backoff_longer_than_its_maximum_is_refused():
    with pytest.raises(
        ValueError, match=r"probe_backoff_max \(1 s\) must be at least probe_backoff \(10 s\)"
    ):
        check_probe_backoff(10, 1)


@pytest.mark.parametrize(
    ("base", "maximum", "error", "name"),
    [
        (math.inf, math.inf, ValueError, "probe_backoff"),
        (0, 10, ValueError, "probe_backoff"),
        (1, math.nan, ValueError, "probe_backoff_max"),
        ("1", 10, TypeError, "probe_backoff"),
        (1, True, TypeError, "probe_backoff_max"),
    ],
)
def test_probe_backoff_values_are_finite_positive_seconds(base, maximum, error, name):
    with pytest.raises(error, match=f"^{name} must be a"):
        check_probe_backoff(base, maximum)
