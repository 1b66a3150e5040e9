"""Validation of FailoverTTSService's keyword arguments."""

import math

DEFAULT_FIRST_AUDIO_TIMEOUT = 1.5
DEFAULT_STALL_TIMEOUT = 1.0
DEFAULT_SILENCE_FLOOR = 16.0


def positive_seconds(name: str, value: object) -> float:
    """Check a duration argument: a finite number of seconds above zero.

    Args:
        name: The argument's name, for the error message.
        value: The value given.

    Returns:
        The value as a float.

    Raises:
        TypeError: If the value is not a number.
        ValueError: If it is zero, negative, or not finite.
    """
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number of seconds, not {type(value).__name__}")
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a positive number of seconds, got {value!r}")
    return float(value)


def positive_number(name: str, value: object) -> float:
    """Check a factor argument: a finite number above zero.

    Raises:
        TypeError: If the value is not a number.
        ValueError: If it is zero, negative, or not finite.
    """
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number, not {type(value).__name__}")
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a positive number, got {value!r}")
    return float(value)


def check_probe_backoff(base: object, maximum: object) -> tuple[float, float]:
    """Check ``probe_backoff`` and ``probe_backoff_max`` together.

    Args:
        base: ``probe_backoff``, seconds before the probe after a first failed one.
        maximum: ``probe_backoff_max``, the longest wait between probes.

    Returns:
        Both, as floats.

    Raises:
        TypeError: If either is not a number.
        ValueError: If either is not a positive, finite number of seconds, or
            the longest wait is shorter than the first.
    """
    base = positive_seconds("probe_backoff", base)
    maximum = positive_seconds("probe_backoff_max", maximum)
    if maximum < base:
        raise ValueError(
            f"probe_backoff_max ({maximum:g} s) must be at least probe_backoff ({base:g} s)"
        )
    return base, maximum


def positive_int(name: str, value: object) -> int:
    """Check a count argument: a whole number of at least one.

    Raises:
        TypeError: If the value is not an int.
        ValueError: If it is below one.
    """
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, not {type(value).__name__}")
    if value < 1:
        raise ValueError(f"{name} must be at least 1, got {value!r}")
    return value


def non_negative(name: str, value: object) -> float:
    """Check a level argument: a finite number of at least zero.

    Raises:
        TypeError: If the value is not a number.
        ValueError: If it is negative or not finite.
    """
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number, not {type(value).__name__}")
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be zero or more, got {value!r}")
    return float(value)
