"""How late this process's event loop runs: blame yourself before blaming a provider.

A first-audio deadline that expires while the loop is hundreds of
milliseconds behind says more about this process than about the provider. One
small task per event loop wakes every ``interval`` seconds and notes how late
it woke. A call's deadlines give the provider back the time the loop lost
(:meth:`LoopLagMonitor.stolen_since`), and ``FailoverTTSService`` does not hold
a failure against the provider when the worst lag while it was judged passed
the health policy's ``max_loop_lag``; a Redis call's timeout does too
(:class:`LagGrace`), so a lagging worker does not take Redis for gone.
"""

import asyncio
from collections import deque

_INTERVAL = 0.05
# Lags kept: a minute at the interval, more than any attempt lasts.
_KEPT = 1200


class LoopLagMonitor:
    """Measures the running event loop's lag while at least one call uses it.

    Calls take it with :meth:`acquire` and give it back with :meth:`release`;
    the monitoring task runs while one holds it, and is cancelled and awaited
    when the last one lets go.

    Args:
        interval: Seconds between wake-ups.
    """

    def __init__(self, interval: float = _INTERVAL):
        self._interval = interval
        self._lags: deque[tuple[float, float]] = deque(maxlen=_KEPT)
        self._users = 0
        self._task: asyncio.Task | None = None

    def acquire(self):
        """Start monitoring (if nobody else has) for one more user."""
        self._users += 1
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="tts-failover::loop-lag")

    async def release(self):
        """One user is done; the last one stops the task and waits for it."""
        self._users = max(0, self._users - 1)
        if self._users or self._task is None:
            return
        task, self._task = self._task, None
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            pass

    def worst_since(self, since: float) -> float:
        """The longest lag, in seconds, measured at or after loop time ``since``."""
        return max(self._lags_since(since), default=0.0)

    def stolen_since(self, since: float) -> float:
        """Seconds the loop was late, in all, since loop time ``since``: time a timer lost to this process."""
        return sum(self._lags_since(since))

    def _lags_since(self, since: float) -> list[float]:
        """The lags measured at or after ``since``, and how late the monitor is right now.

        The last counts a loop blocked at this very moment, which has not
        woken the monitor to say so.
        """
        lags = []
        for at, lag in reversed(self._lags):
            if at < since:
                break
            lags.append(lag)
        if self._lags and self._task is not None:
            overdue = asyncio.get_running_loop().time() - self._lags[-1][0] - self._interval
            lags.append(max(0.0, overdue))
        return lags

    async def _run(self):
        loop = asyncio.get_running_loop()
        expected = loop.time() + self._interval
        while True:
            await asyncio.sleep(self._interval)
            now = loop.time()
            self._lags.append((now, max(0.0, now - expected)))
            expected = now + self._interval


_monitors: dict[int, LoopLagMonitor] = {}


def loop_lag_monitor() -> LoopLagMonitor:
    """The LoopLagMonitor of the running event loop, created on first use."""
    loop = asyncio.get_running_loop()
    monitor = _monitors.get(id(loop))
    if monitor is None or (monitor._task is not None and monitor._task.get_loop() is not loop):
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
        self._start = self._loop.time()
        self._seconds = seconds
        self._cap = cap
        self._given = 0.0
        self._handle: asyncio.TimerHandle | None = None
        monitor = _monitors.get(id(self._loop))
        self._monitor = monitor if monitor is not None and monitor._task is not None else None
        if self._monitor is not None and cap > 0:
            self._arm()

    def _arm(self):
        when = self._start + self._seconds + self._given - _EARLY
        self._handle = self._loop.call_at(when, self._check)

    def _check(self):
        assert self._monitor is not None
        stolen = min(self._cap, self._monitor.stolen_since(self._start))
        if stolen > self._given:
            self._given = stolen
            self._timeout.reschedule(self._start + self._seconds + stolen)
            self._arm()

    def cancel(self):
        """The timed work is over: no more checks."""
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
