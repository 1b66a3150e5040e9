"""First-audio latency per provider: a bounded rolling window, its quantiles, and the deadlines drawn from them."""

import bisect
import weakref
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field

from pipecat_tts_failover.config import positive_int, positive_number, positive_seconds


class LatencyWindow:
    """The last ``size`` first-audio latencies of one provider, kept sorted for quantiles.

    Adding a sample is O(size) in C (``bisect.insort`` and one removal), and a
    quantile is a lookup, so it is cheap enough to update on every sentence.

    Args:
        size: How many recent samples to keep.
    """

    def __init__(self, size: int = 200):
        self._size = size
        self._order: deque[float] = deque()
        self._sorted: list[float] = []

    def __len__(self) -> int:
        return len(self._order)

    def add(self, seconds: float):
        """Add one sample, forgetting the oldest once the window is full."""
        if len(self._order) == self._size:
            oldest = self._order.popleft()
            del self._sorted[bisect.bisect_left(self._sorted, oldest)]
        self._order.append(seconds)
        bisect.insort(self._sorted, seconds)

    def extend(self, samples: Iterable[float]):
        """Add several samples, oldest first."""
        for sample in samples:
            self.add(sample)

    def quantile(self, q: float) -> float | None:
        """The ``q`` quantile (0..1) of the window, or None while it is empty."""
        if not self._sorted:
            return None
        return self._sorted[min(len(self._sorted) - 1, int(q * len(self._sorted)))]

    @property
    def samples(self) -> list[float]:
        """The samples, oldest first."""
        return list(self._order)


@dataclass(frozen=True, slots=True)
class AdaptiveTimeout:
    """How ``first_audio_timeout="adaptive"`` sets each provider's deadline.

    The deadline is ``multiplier`` times the provider's observed ``quantile``
    of first-audio latency, clamped to ``[floor, ceiling]``. Until
    ``min_samples`` latencies have been seen, ``fallback`` applies.

    Parameters:
        quantile: The tail quantile to follow (0..1).
        multiplier: How far past that quantile the deadline sits.
        floor: The shortest deadline, seconds.
        ceiling: The longest deadline, seconds.
        min_samples: Samples needed before the deadline adapts.
        fallback: The deadline until then, seconds.
    """

    quantile: float = 0.99
    multiplier: float = 1.5
    floor: float = 0.3
    ceiling: float = 2.0
    min_samples: int = 20
    fallback: float = 1.5

    def __post_init__(self):
        quantile = _number("AdaptiveTimeout.quantile", self.quantile)
        if not 0 < quantile < 1:
            raise ValueError(f"AdaptiveTimeout.quantile must be between 0 and 1, got {quantile!r}")
        positive_number("AdaptiveTimeout.multiplier", self.multiplier)
        floor = positive_seconds("AdaptiveTimeout.floor", self.floor)
        ceiling = positive_seconds("AdaptiveTimeout.ceiling", self.ceiling)
        if ceiling < floor:
            raise ValueError(
                f"AdaptiveTimeout.ceiling ({ceiling:g} s) must be at least "
                f"AdaptiveTimeout.floor ({floor:g} s)"
            )
        positive_int("AdaptiveTimeout.min_samples", self.min_samples)
        positive_seconds("AdaptiveTimeout.fallback", self.fallback)

    def deadline(self, window: LatencyWindow) -> float:
        """The first-audio deadline for a provider with this latency window."""
        if len(window) < self.min_samples:
            return self.fallback
        tail = window.quantile(self.quantile)
        assert tail is not None
        return min(self.ceiling, max(self.floor, self.multiplier * tail))


def parse_quantile(value: str) -> float:
    """Parse a quantile written like ``"p95"`` or ``"p99.9"``.

    Raises:
        ValueError: If the text is not ``p`` followed by a number between 0 and 100.
    """
    text = value.strip().lower()
    try:
        q = float(text[1:]) / 100 if text.startswith("p") else float("nan")
    except ValueError:
        q = float("nan")
    if not 0 < q < 1:
        raise ValueError(f'a quantile is written like "p95", got {value!r}')
    return q


def _number(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number, not {type(value).__name__}")
    return float(value)


class HedgeBudget:
    """Caps hedges to a fraction of a provider's recent sentences.

    Args:
        fraction: Most hedged sentences per sentence (0..1).
        window: How many recent sentences the fraction is taken over.
    """

    def __init__(self, fraction: float, window: int = 100):
        self._fraction = fraction
        self._recent: deque[bool] = deque(maxlen=window)
        self._hedged = 0

    def allows(self) -> bool:
        """Whether one more hedge stays within the budget."""
        return self._hedged + 1 <= self._fraction * self._recent.maxlen

    def record(self, hedged: bool):
        """Note one sentence of the provider, hedged or not."""
        if len(self._recent) == self._recent.maxlen and self._recent[0]:
            self._hedged -= 1
        self._recent.append(hedged)
        self._hedged += hedged


@dataclass
class ProviderStats:
    """What a process has learned of one provider's speed.

    Parameters:
        latency: First-audio latencies of its recent sentences.
        hedges: Its hedge budget, when hedging is on.
        reported_slow: Whether it was reported slow and has not recovered.
        speech_rate: Seconds per character it last spoke at (see ``WordTimeline``).
    """

    latency: LatencyWindow = field(default_factory=LatencyWindow)
    hedges: HedgeBudget | None = None
    reported_slow: bool = False
    speech_rate: float | None = None


_stats: "weakref.WeakKeyDictionary[object, dict[str, ProviderStats]]" = weakref.WeakKeyDictionary()


def stats_for(store: object) -> dict[str, ProviderStats]:
    """The provider stats of this process for one health store (shared by its calls)."""
    stats = _stats.get(store)
    if stats is None:
        stats = _stats[store] = {}
    return stats
