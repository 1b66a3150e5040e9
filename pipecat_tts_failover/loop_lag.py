"""How late this process's event loop runs: blame yourself before blaming a provider.

A first-audio deadline that expires while the loop is hundreds of
milliseconds behind says more about this process than about the provider. One
timer per event loop ticks and notes how late it fired: every ``interval``
seconds while the loop is late, every ``calm_interval`` seconds while it keeps
time, so a call on a quiet worker does not wake its loop 20 times a second to
measure nothing. A call's deadlines give the provider back the time the loop lost
(:meth:`LoopLagMonitor.stolen_since`), and ``FailoverTTSService`` does not hold
a failure against the provider when the worst lag while it was judged passed
the health policy's ``max_loop_lag``; a Redis call's timeout does too
(:class:`LagGrace`), so a lagging worker does not take Redis for gone.
"""

import asyncio
from collections import deque

_INTERVAL = 0.05
# Between ticks while the loop keeps time (its last tick was on time within _CALM_LAG).
_CALM_INTERVAL = 0.2
_CALM_LAG = 0.01
# Lags kept: a minute at the interval, more than any attempt lasts.
_KEPT = 1200


class LoopLagMonitor:
    """Measures the running event loop's lag while at least one call uses it.

    Calls take it with :meth:`acquire` and give it back with :meth:`release`;
    it ticks while one holds it, and stops when the last one lets go. A tick
    is a plain timer callback (no task, no coroutine, no future), as cheap as
    the loop can wake. A tick that fires late by more than ``calm_lag``
    brings the next one ``interval`` seconds later; an on-time one,
    ``calm_interval`` seconds later. A loaded loop is measured finely; a quiet
    one costs a few wake-ups a second, and a block that comes after quiet is
    measured from when the tick then due was due (up to ``calm_interval``
    shorter than it lasted).

    Args:
        interval: Seconds between ticks while the loop is late.
        calm_interval: Seconds between ticks while it keeps time.
        calm_lag: The most lateness, in seconds, a tick that keeps time has.
    """

    def __init__(
        self,
        interval: float = _INTERVAL,
        calm_interval: float = _CALM_INTERVAL,
        calm_lag: float = _CALM_LAG,
    ):
        self._interval = interval
        self._calm_interval = calm_interval
        self._calm_lag = calm_lag
        self._lags: deque[tuple[float, float]] = deque(maxlen=_KEPT)
        self._users = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._handle: asyncio.TimerHandle | None = None
        self._expected = 0.0

    @property
    def running(self) -> bool:
        """Whether it is measuring (someone holds it)."""
        return self._handle is not None

    def acquire(self):
        """Start measuring (if nobody else has) for one more user."""
        self._users += 1
        if self._handle is None:
            self._loop = asyncio.get_running_loop()
            self._expected = self._loop.time() + self._interval
            self._handle = self._loop.call_at(self._expected, self._tick)

    async def release(self):
        """One user is done; the last one stops the ticks."""
        self._users = max(0, self._users - 1)
        if self._users or self._handle is None:
            return
        self._handle.cancel()
        self._handle = None

    def worst_since(self, since: float) -> float:
        """The longest lag, in seconds, measured at or after loop time ``since``."""
        return max(self._lags_since(since), default=0.0)

    def stolen_since(self, since: float) -> float:
        """Seconds the loop was late, in all, since loop time ``since``: time a timer lost to this process."""
        return sum(self._lags_since(since))

    def _lags_since(self, since: float) -> list[float]:
        """The lags measured at or after ``since``, and how late the next tick is right now.

        The last counts a loop blocked at this very moment, which has not
        ticked to say so.
        """
        lags = []
        for at, lag in reversed(self._lags):
            if at < since:
                break
            lags.append(lag)
        if self._handle is not None:
            overdue = asyncio.get_running_loop().time() - self._expected
            lags.append(max(0.0, overdue))
        return lags

    def _tick(self):
        loop = self._loop
        assert loop is not None
        now = loop.time()
        lag = max(0.0, now - self._expected)
        self._lags.append((now, lag))
        self._expected = now + (self._interval if lag > self._calm_lag else self._calm_interval)
        self._handle = loop.call_at(self._expected, self._tick)


_monitors: dict[int, LoopLagMonitor] = {}


def loop_lag_monitor() -> LoopLagMonitor:
    """The LoopLagMonitor of the running event loop, created on first use."""
    loop = asyncio.get_running_loop()
    monitor = _monitors.get(id(loop))
    if monitor is None or (monitor.running and monitor._loop is not loop):
        monitor = _monitors[id(loop)] = LoopLagMonitor()
    return monitor


# How far ahead of a timeout its grace is checked: a check due in the same
# turn of a late loop runs first.
_EARLY = 1e-4


class LagGrace:
    """Gives an ``asyncio.timeout`` back the time its event loop lost while it ran.

    A reply that came in time but found the loop busy would otherwise be
    thrown away by a timer firing in the same late turn. Checks just before
    the deadline how long the loop has been late since the timeout began
    (as this loop's :class:`LoopLagMonitor` measured it, if one runs), and
    moves the deadline that much later, up to ``cap`` seconds in all. Does
    nothing while no monitor runs.

    Args:
        timeout: The running timeout (inside its ``async with``).
        seconds: Its length.
        cap: The most time given back.
    """

    def __init__(self, timeout: asyncio.Timeout, seconds: float, cap: float):
        self._loop = asyncio.get_running_loop()
        self._timeout = timeout
        # From the timeout's own deadline: it was set before this, and a check
        # armed from a later start could come after the timeout has fired.
        deadline = timeout.when()
        self._start = deadline - seconds if deadline is not None else self._loop.time()
        self._seconds = seconds
        self._cap = cap
        self._given = 0.0
        self._handle: asyncio.TimerHandle | None = None
        monitor = _monitors.get(id(self._loop))
        self._monitor = monitor if monitor is not None and monitor.running else None
        if self._monitor is not None and cap > 0:
            self._arm()

    def _arm(self):
        when = self._start + self._seconds + self._given - _EARLY
        self._handle = self._loop.call_at(when, self._check)

    def _check(self):
        assert self._monitor is not None
        stolen = min(self._cap, self._monitor.stolen_since(self._start))
        if stolen > self._given and not self._timeout.expired():
            self._given = stolen
            self._timeout.reschedule(self._start + self._seconds + stolen)
            self._arm()

    def cancel(self):
        """The timed work is over: no more checks."""
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
