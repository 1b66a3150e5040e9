"""AdaptiveTimeout refuses settings it could not honour, naming the field."""

import math

import pytest

from pipecat_tts_failover.latency import AdaptiveTimeout, LatencyWindow


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        (
            {"floor": 5, "ceiling": 1},
            ValueError,
            r"ceiling \(1 s\) must be at least .*floor \(5 s\)",
        ),
        ({"fallback": math.inf}, ValueError, "fallback must be a positive number of seconds"),
        ({"fallback": math.nan}, ValueError, "fallback must be a positive number of seconds"),
        ({"fallback": 0}, ValueError, "fallback"),
        ({"ceiling": math.inf}, ValueError, "ceiling must be a positive number of seconds"),
        ({"floor": -1}, ValueError, "floor"),
        ({"floor": "0.3"}, TypeError, "floor must be a number of seconds, not str"),
        ({"multiplier": math.inf}, ValueError, "multiplier must be a positive number"),
        ({"multiplier": 0}, ValueError, "multiplier"),
        ({"quantile": 1.0}, ValueError, "quantile must be between 0 and 1"),
        ({"quantile": "p99"}, TypeError, "quantile must be a number"),
        ({"quantile": math.nan}, ValueError, "quantile"),
        ({"min_samples": 0}, ValueError, "min_samples must be at least 1"),
        ({"min_samples": 2.5}, TypeError, "min_samples must be an int"),
        ({"min_samples": True}, TypeError, "min_samples"),
    ],
)
def test_adaptive_timeout_refuses_bad_settings_naming_the_field(kwargs, error, message):
    with pytest.raises(error, match=f"AdaptiveTimeout.{message}"):
        AdaptiveTimeout(**kwargs)


def test_adaptive_timeout_with_equal_floor_and_ceiling_is_a_fixed_deadline():
    adaptive = AdaptiveTimeout(floor=1, ceiling=1, min_samples=1, fallback=3)
    window = LatencyWindow()
    assert adaptive.deadline(window) == 3
    window.add(0.1)
    assert adaptive.deadline(window) == 1
