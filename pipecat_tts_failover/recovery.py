"""Recovery: probe providers marked down, off the call path, and mark them up when they speak again.

A provider marked down is probed shortly before its mark-down runs out, by one
worker of the fleet (a lock in the store; in memory, one task per process). A
probe is a short synthesis; it succeeds only with real, non-silent audio within
the first-audio deadline. Success marks the provider healthy; failure keeps it
down and backs off exponentially with jitter, capped. No caller's speech is
ever sent to a provider that is down.

A provider without a probe of its own is probed through its own service in a
live call that does not use it (see :mod:`link_probe`); while no call can, it
stays down, so the first caller after an ejection is never the probe.
"""

import asyncio
import contextlib
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass

from loguru import logger
from pipecat.utils.errors import classify_http_exception

from pipecat_tts_failover.detection import FailureReason, is_audible, reason_for_error
from pipecat_tts_failover.events import FailoverListener, ProbeFinished, ProviderUp
from pipecat_tts_failover.store.base import HealthStore

Probe = Callable[[], AsyncIterator[bytes]]
"""A short synthesis: an async iterator of 16-bit mono PCM chunks."""

ProbeSource = Callable[[str], Callable[[], Awaitable["ProbeVerdict | None"]] | None]
"""Offers a probe of a provider: a function running one and returning its verdict
(None if it was cut short, say by the end of the call), or None if it cannot now."""

PROBE_TEXT = "Hello."


@dataclass(frozen=True, slots=True)
class ProbeVerdict:
    """How a probe went.

    Parameters:
        ok: Whether it produced audible audio within the deadline.
        reason: Why it failed, when it did.
        seconds: How long it took.
        error: The error message, when there was one.
    """

    ok: bool
    reason: FailureReason | None
    seconds: float
    error: str | None = None


async def run_probe(
    probe: Probe, *, first_audio_timeout: float, silence_floor: float
) -> ProbeVerdict:
    """Run one probe and judge it: audible audio must arrive within ``first_audio_timeout``.

    Args:
        probe: The probe to run.
        first_audio_timeout: Seconds until the first audible chunk.
        silence_floor: RMS level at or below which audio is silence.

    Returns:
        The verdict. Never raises (except on cancellation).
    """
    loop = asyncio.get_running_loop()
    started = loop.time()
    got_audio = False
    chunks = probe()
    try:
        async with asyncio.timeout(first_audio_timeout):
            async for chunk in chunks:
                got_audio = got_audio or bool(chunk)
                if is_audible(chunk, silence_floor):
                    return ProbeVerdict(True, None, loop.time() - started)
    except TimeoutError:
        reason = FailureReason.SILENT_AUDIO if got_audio else FailureReason.NO_FIRST_AUDIO
        return ProbeVerdict(False, reason, loop.time() - started)
    except Exception as e:  # noqa: BLE001 - a probe's failure is a verdict, not a crash
        reason = reason_for_error(
            classify_http_exception(e), raised=False, usable=True, message=str(e)
        )
        return ProbeVerdict(False, reason, loop.time() - started, str(e))
    finally:
        aclose = getattr(chunks, "aclose", None)
        if aclose is not None:
            with contextlib.suppress(Exception):  # closing a failed stream may fail too
                await aclose()
    reason = FailureReason.SILENT_AUDIO if got_audio else FailureReason.NO_AUDIO
    return ProbeVerdict(False, reason, loop.time() - started)


class Recovery:
    """Watches providers marked down and probes them back to health.

    One instance per store and event loop (see :func:`recovery_for`); one task
    per watched provider, so two probes of one provider never race in a
    process, and a lock in the store keeps the fleet to one probe at a time.

    Args:
        store: The health store.
        first_audio_timeout: A probe's deadline for audible audio.
        silence_floor: RMS level at or below which audio is silence.
        backoff_base: Seconds before the probe after a first failed one; doubled
            on every further failure.
        backoff_max: The longest wait between probes.
        jitter: Fraction of randomness applied to every wait (0..1).
        rng: Random source in 0..1, injectable for tests.
    """

    def __init__(
        self,
        store: HealthStore,
        *,
        first_audio_timeout: float = 2.0,
        silence_floor: float = 16.0,
        backoff_base: float = 5.0,
        backoff_max: float = 300.0,
        jitter: float = 0.2,
        rng: Callable[[], float] = random.random,
    ):
        self._store = store
        self._first_audio_timeout = first_audio_timeout
        self._silence_floor = silence_floor
        self._backoff_base = backoff_base
        self._backoff_max = backoff_max
        self._jitter = jitter
        self._rng = rng
        self._probes: dict[str, Probe] = {}
        self._sources: dict[int, ProbeSource] = {}
        self._listeners: list[FailoverListener] = []
        self._tasks: dict[str, asyncio.Task] = {}
        self._closed = False

    @property
    def lead(self) -> float:
        """How long before a mark-down runs out its probe starts."""
        return self._first_audio_timeout + 1.0

    def add(self, probes: Mapping[str, Probe], listeners: Sequence[FailoverListener] = ()):
        """Register probes (the first one given for a provider wins) and listeners."""
        for pid, probe in probes.items():
            self._probes.setdefault(pid, probe)
        for listener in listeners:
            if all(listener is not known for known in self._listeners):
                self._listeners.append(listener)

    def offer(self, owner: object, source: ProbeSource):
        """Let recovery probe providers through ``source`` (a live call's idle links) until withdrawn."""
        self._sources[id(owner)] = source

    def withdraw(self, owner: object):
        """Stop probing through what ``owner`` offered."""
        self._sources.pop(id(owner), None)

    def _probe_for(self, provider_id: str) -> Callable[[], Awaitable[ProbeVerdict | None]] | None:
        """A way to probe the provider now: its own probe, else a live call's idle service."""
        if probe := self._probes.get(provider_id):
            return lambda: run_probe(
                probe,
                first_audio_timeout=self._first_audio_timeout,
                silence_floor=self._silence_floor,
            )
        for source in list(self._sources.values()):
            if run := source(provider_id):
                return run
        return None

    def watch(self, provider_id: str):
        """Start probing a provider that is marked down, unless already watching it."""
        if self._closed:
            return
        task = self._tasks.get(provider_id)
        if task is None or task.done():
            self._tasks[provider_id] = asyncio.create_task(
                self._watch(provider_id), name=f"tts-failover::probe::{provider_id}"
            )

    @property
    def watching(self) -> list[str]:
        """The providers being watched."""
        return [pid for pid, task in self._tasks.items() if not task.done()]

    async def aclose(self):
        """Stop every probe task and wait for them. Safe to call twice."""
        self._closed = True
        tasks, self._tasks = list(self._tasks.values()), {}
        for task in tasks:
            task.cancel()
        for task in tasks:
            try:
                await task
            except asyncio.CancelledError:
                pass

    async def _watch(self, provider_id: str):
        failures = 0
        while True:
            health = (await self._store.get([provider_id]))[provider_id]
            if health.down_until is None:
                return
            await asyncio.sleep(max(0.0, health.down_until - time.time() - self.lead))
            if self._probe_for(provider_id) is None:
                # Nothing here can probe it: keep it down rather than let a
                # caller find out; a worker with a live call will probe it.
                await self._keep_down(provider_id)
                continue
            lock = f"probe:{provider_id}"
            if not await self._store.try_lock(lock, ttl=self.lead + self._first_audio_timeout):
                # Another worker is probing, or the lock cannot be proven (Redis
                # away): keep the provider down until a probe has spoken, then
                # see what was found.
                await self._keep_down(provider_id)
                await asyncio.sleep(self.lead)
                continue
            try:
                probe = self._probe_for(provider_id)
                if probe is None:
                    continue
                verdict = await probe()
            finally:
                await self._store.release_lock(lock)
            if verdict is None:
                # No verdict (the probe was cut short, or failed while this
                # process lagged): no evidence either way.
                await self._keep_down(provider_id)
                continue
            self._notify(ProbeFinished(provider_id, verdict.ok, verdict.reason, verdict.seconds))
            if verdict.ok:
                if await self._store.mark_up(provider_id):
                    outage = time.time() - health.since if health.since else None
                    logger.info(f"{provider_id}: probe spoke, provider is back")
                    self._notify(ProviderUp(provider_id, outage))
                return
            failures += 1
            wait = min(self._backoff_max, self._backoff_base * 2 ** (failures - 1))
            wait *= 1 + self._jitter * (2 * self._rng() - 1)
            logger.info(
                f"{provider_id}: probe failed ({verdict.reason}{': ' + verdict.error if verdict.error else ''}); "
                f"next in {wait:.1f}s"
            )
            await self._store.extend_down(provider_id, wait + self.lead)

    async def _keep_down(self, provider_id: str):
        """Nothing has proved the provider healthy yet: only a probe that speaks brings it back."""
        await self._store.extend_down(provider_id, 2 * self.lead)

    def _notify(self, event):
        for listener in self._listeners:
            try:
                listener.on_event(event)
            except Exception as e:  # noqa: BLE001 - a listener must never stop recovery
                logger.warning(f"{type(listener).__name__} failed on {event}: {e}")


_registry: dict[tuple[int, int], tuple[HealthStore, Recovery]] = {}


def recovery_for(store: HealthStore, **kwargs) -> Recovery:
    """The Recovery of ``store`` in the running event loop, created on first use.

    Args:
        store: The health store.
        **kwargs: Passed to :class:`Recovery` when it is created.
    """
    loop = asyncio.get_running_loop()
    key = (id(store), id(loop))
    entry = _registry.get(key)
    if entry is None or entry[0] is not store:
        entry = (store, Recovery(store, **kwargs))
        _registry[key] = entry
    return entry[1]


async def close_recovery():
    """Stop every Recovery of the running event loop (for shutdown and tests)."""
    loop_id = id(asyncio.get_running_loop())
    for key in [k for k in _registry if k[1] == loop_id]:
        _, recovery = _registry.pop(key)
        await recovery.aclose()
