"""Faults an emulator injects: what goes wrong, and on which requests.

A fault is written ``KIND[:VALUE][@N | %K]``:

==================  =========================================================
``reject-401``      refuse with HTTP 401 and the provider's error body
``reject-429``      refuse with HTTP 429 (rate / concurrency limit)
``reject-503``      refuse with HTTP 503 (service unavailable)
``error[:MS]``      send MS ms of audio (default 120), then the provider's
                    error message (plain HTTP: 500 and its error body)
``close-1011[:MS]`` send MS ms of audio (default 120), then close the
                    WebSocket with 1011 (HTTP: abort the response body)
``hang``            accept the request and never answer it
``stall[:MS]``      send MS ms of audio (default 120), then go quiet forever
``zeros``           answer normally, but with digital silence
``empty``           finish normally without sending any audio
``slow-ttfb[:MS]``  hold the first audio back by MS ms (default 800)
``slow-drip[:X]``   stream X times slower than real time (default 3)
``flap``            alternate: odd requests healthy, even ones ``reject-503``
``quota-exceeded``  the account is out of credits: ElevenLabs answers HTTP 401
                    ``quota_exceeded`` (on a WebSocket: the error message and
                    a 1008 close); Cartesia answers 402
==================  =========================================================

``@N`` applies the fault to the N-th request only, ``%K`` to every K-th
(K, 2K, ...). Requests are counted from when the fault was set. A request is
one HTTP request, or one new WebSocket context (a Cartesia or ElevenLabs
``context_id``).

On a WebSocket, an unconditional ``reject-*`` refuses the handshake itself;
contexts that arrive on a socket opened earlier, or that a ``@N``/``%K``
selector picks, are refused in-band with the provider's error message carrying
that status.

Example::

    Fault.parse("slow-ttfb:800")   # every request, first audio 800 ms late
    Fault.parse("error@3")          # only the third request errors
    Fault("hang", every=2)          # every second request hangs
"""

import re
from dataclasses import dataclass
from enum import StrEnum

__all__ = ["Fault", "FaultKind"]


class FaultKind(StrEnum):
    """What goes wrong with a faulty request."""

    REJECT_401 = "reject-401"
    REJECT_429 = "reject-429"
    REJECT_503 = "reject-503"
    ERROR = "error"
    CLOSE_1011 = "close-1011"
    HANG = "hang"
    STALL = "stall"
    ZEROS = "zeros"
    EMPTY = "empty"
    SLOW_TTFB = "slow-ttfb"
    SLOW_DRIP = "slow-drip"
    FLAP = "flap"
    QUOTA_EXCEEDED = "quota-exceeded"

    @property
    def reject_status(self) -> int | None:
        """The HTTP status of a ``reject-*`` kind, None for the others."""
        if self.value.startswith("reject-"):
            return int(self.value.removeprefix("reject-"))
        return None


# Kinds whose VALUE is a number of milliseconds, and its default.
_MS_DEFAULTS: dict[FaultKind, int] = {
    FaultKind.ERROR: 120,
    FaultKind.CLOSE_1011: 120,
    FaultKind.STALL: 120,
    FaultKind.SLOW_TTFB: 800,
}
_DEFAULT_DRIP_FACTOR = 3.0
_SYNTAX = "KIND[:VALUE][@N|%K], e.g. 'slow-ttfb:800', 'error@3', 'hang%2'"
_PATTERN = re.compile(
    r"^(?P<kind>[a-z0-9-]+)(?::(?P<value>[^@%]*))?(?:(?P<sel>[@%])(?P<count>.*))?$"
)


@dataclass(frozen=True, slots=True)
class Fault:
    """One fault and the requests it applies to.

    Args:
        kind: What goes wrong (a :class:`FaultKind` or its string value).
        ms: Milliseconds for ``slow-ttfb`` (first-audio delay) and for
            ``error``, ``close-1011`` and ``stall`` (audio sent before the
            fault). None means the kind's default.
        factor: For ``slow-drip``: how many times slower than real time the
            audio streams (> 1). None means 3.
        nth: Apply only to the n-th request (1-based) after the fault is set.
        every: Apply to every k-th request (k, 2k, ...) after the fault is set.

    Raises:
        ValueError: If the kind is unknown, a value does not fit the kind, or
            both ``nth`` and ``every`` are given.
    """

    kind: FaultKind
    ms: int | None = None
    factor: float | None = None
    nth: int | None = None
    every: int | None = None

    def __post_init__(self):
        try:
            kind = FaultKind(self.kind)
        except ValueError:
            known = ", ".join(k.value for k in FaultKind)
            raise ValueError(f"unknown fault kind {self.kind!r}; known kinds: {known}") from None
        object.__setattr__(self, "kind", kind)
        if self.ms is not None:
            if kind not in _MS_DEFAULTS:
                raise ValueError(f"fault {kind.value!r} takes no milliseconds value")
            if isinstance(self.ms, bool) or not isinstance(self.ms, int) or self.ms < 0:
                raise ValueError(f"fault ms must be an int >= 0, got {self.ms!r}")
        if self.factor is not None:
            if kind is not FaultKind.SLOW_DRIP:
                raise ValueError(f"fault {kind.value!r} takes no factor value")
            if not isinstance(self.factor, int | float) or not self.factor > 1:
                raise ValueError(f"slow-drip factor must be a number > 1, got {self.factor!r}")
        for name in ("nth", "every"):
            count = getattr(self, name)
            if count is not None and (
                isinstance(count, bool) or not isinstance(count, int) or count < 1
            ):
                raise ValueError(f"fault {name} must be an int >= 1, got {count!r}")
        if self.nth is not None and self.every is not None:
            raise ValueError("fault takes nth or every, not both")
        if kind is FaultKind.FLAP and (self.nth is not None or self.every is not None):
            raise ValueError("flap chooses its own requests; it takes neither nth nor every")

    @classmethod
    def parse(cls, spec: str) -> "Fault":
        """Parse ``KIND[:VALUE][@N|%K]``, as given to ``--fault``.

        Args:
            spec: The fault string, e.g. ``"slow-ttfb:800"``, ``"error@3"``, ``"hang%2"``.

        Returns:
            The fault.

        Raises:
            TypeError: If ``spec`` is not a string.
            ValueError: If the string does not follow the syntax; the message
                says what was wrong and shows the syntax.
        """
        if not isinstance(spec, str):
            raise TypeError(f"fault spec must be a string, got {type(spec).__name__}")
        match = _PATTERN.match(spec.strip().lower())
        if match is None:
            raise ValueError(f"bad fault {spec!r}: expected {_SYNTAX}")
        kind_text, value, sel, count = match.group("kind", "value", "sel", "count")
        try:
            kind = FaultKind(kind_text)
        except ValueError:
            known = ", ".join(k.value for k in FaultKind)
            raise ValueError(
                f"bad fault {spec!r}: unknown kind {kind_text!r}; known: {known}"
            ) from None
        kwargs: dict[str, int | float] = {}
        try:
            if value is not None:
                if kind in _MS_DEFAULTS:
                    kwargs["ms"] = _whole(value, f"{kind.value} takes whole milliseconds")
                elif kind is FaultKind.SLOW_DRIP:
                    kwargs["factor"] = _number(value, "slow-drip takes a factor > 1")
                else:
                    raise ValueError(f"kind {kind.value!r} takes no ':VALUE'")
            if sel is not None:
                kwargs["nth" if sel == "@" else "every"] = _whole(
                    count, f"'{sel}' takes a whole number of requests"
                )
            return cls(kind, **kwargs)  # type: ignore[arg-type]
        except ValueError as e:
            raise ValueError(f"bad fault {spec!r}: {e} (syntax: {_SYNTAX})") from None

    @classmethod
    def coerce(cls, fault: "Fault | str | None") -> "Fault | None":
        """Accept a fault, a fault string, or None.

        Args:
            fault: The fault in any accepted form.

        Returns:
            The fault, or None.

        Raises:
            TypeError: If the value is of another type.
            ValueError: If a string does not parse.
        """
        if fault is None or isinstance(fault, Fault):
            return fault
        if isinstance(fault, str):
            return cls.parse(fault)
        raise TypeError(f"fault must be a Fault, a str or None, not {type(fault).__name__}")

    @property
    def delay_ms(self) -> int:
        """The ``ms`` value, or the kind's default (0 for kinds without one)."""
        if self.ms is not None:
            return self.ms
        return _MS_DEFAULTS.get(self.kind, 0)

    @property
    def slowdown(self) -> float:
        """For ``slow-drip``: how many times slower than real time audio streams."""
        return self.factor if self.factor is not None else _DEFAULT_DRIP_FACTOR

    @property
    def unconditional(self) -> bool:
        """Whether the fault applies to every request."""
        return self.nth is None and self.every is None and self.kind is not FaultKind.FLAP

    def effective_for(self, ordinal: int) -> "Fault | None":
        """The fault the ``ordinal``-th request (1-based) suffers, if any.

        ``flap`` resolves to ``reject-503`` on even requests.

        Args:
            ordinal: The request's position, counted from when the fault was set.

        Returns:
            The fault to apply to that request, or None if it is healthy.
        """
        if self.kind is FaultKind.FLAP:
            return Fault(FaultKind.REJECT_503) if ordinal % 2 == 0 else None
        if self.nth is not None and ordinal != self.nth:
            return None
        if self.every is not None and ordinal % self.every != 0:
            return None
        return self

    def __str__(self) -> str:
        text = self.kind.value
        if self.ms is not None:
            text += f":{self.ms}"
        if self.factor is not None:
            text += f":{self.factor:g}"
        if self.nth is not None:
            text += f"@{self.nth}"
        if self.every is not None:
            text += f"%{self.every}"
        return text


def _whole(text: str, what: str) -> int:
    if not text.isdigit():
        raise ValueError(f"{what}, got {text!r}")
    return int(text)


def _number(text: str, what: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise ValueError(f"{what}, got {text!r}") from None
