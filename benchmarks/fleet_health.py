"""Fleet health (issue 13): version 0.1's rule, the HealthPolicy defaults and pipecat's switcher.

Run from the repo root::

    .venv/bin/python benchmarks/fleet_health.py [--quick] [--stores memory,redis]
        [--only isolated,outage,brownout,flapping,burst,burst_end,recovery]
        [--configs bare,first_failure,defaults,switcher] [--burst-calls 500] [--repeats 1]
        [--docs]

Every row is many concurrent calls in one process, each a real pipecat
pipeline (``tests/support/pipeline.py``) around one of:

- ``first_failure``: ``FailoverTTSService(health=HealthPolicy.first_failure(60))``,
  version 0.1's rule (the first failed sentence ejects the provider for the
  fleet for 60 s), on today's code otherwise (recovery included);
- ``defaults``: ``FailoverTTSService()`` with the new ``HealthPolicy()``;
- ``switcher``: pipecat's ``ServiceSwitcher`` with ``ServiceSwitcherStrategyFailover``
  (no fleet state: each call finds out for itself; it switches once the service
  is unusable, which pipecat decides after 3 contexts in a row without audio);
- ``bare`` (burst rows only): pipecat's healthy service alone, no wrapper and no
  fault: what this process does with the same calls and speech, the reference
  for how much the overload alone slows speech.

Each repeat of each row runs in a fresh process (``--child``): a call given up
on leaves pipecat tasks behind (thousands after a burst) whose cancellation
does not complete, and they would weigh on the rows after it.

The two FailoverTTSService configurations run once per store: one
``InMemoryHealthStore``, and one ``RedisHealthStore`` on a redis-server this
script starts on a free port (and kills at the end). Each row gets a fresh store.

Providers are ``ScriptedTTSService`` (``tests/support/scripted.py``): a
``primary`` that follows the scenario's faults (by time, at random from a seeded
generator, or by request), and a healthy ``backup``. A fault strikes a request
before any audio (an error frame, or a hang). Confirmation and recovery probes
go through the same services and meet the same faults. The speech is 6x
shorter than real (10 ms of audio per letter instead of 60, about 0.4 s a
sentence), streamed in real time in 40 ms chunks, each sentence sent once the
last one ended: deadlines and health rules keep their real seconds, so a call
speaks about six times as many sentences a second as a real one (the fleet's
evidence comes six times as fast per call). The 500-call burst speaks
real-length speech in real time (60 ms per letter, 60 ms chunks), as
``benchmarks/propagation.py`` does.

What the caller heard is decoded from the audio that reached the end of each
pipeline (every word's samples encode the word and its speaker): a sentence is
lost if a word of it was never heard whole, repeated if a word was heard whole
twice. A word cut by a failure and said again whole by the next provider (as
the relay does) is counted apart, as "words cut".

A call's waits last while it speaks: it gives up on a sentence (and sends the
next anyway) or on its end (and cancels its pipeline) only once nothing has
come out of it for 8 s (13 s for the end). An overloaded process plays speech
slower than real time (the burst's bare row measures by how much); a fixed wait
would count speech still on its way as lost. The burst's second row sends each
call's three sentences and its EndFrame at once, as a bot that ends the call
after its last reply does: the end then waits for all of the call's speech.

Prints one markdown table and the goals; asserts nothing. ``--docs`` writes the
output as the "Fleet health" section of docs/benchmarks.md (only that section).
"""

import argparse
import asyncio
import datetime
import gc
import os
import pickle
import random
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np
from loguru import logger
from pipecat.frames.frames import (
    EndFrame,
    TTSAudioRawFrame,
    TTSSpeakFrame,
    TTSStoppedFrame,
)
from pipecat.pipeline.service_switcher import (
    ServiceSwitcher,
    ServiceSwitcherStrategyFailover,
)

from pipecat_tts_failover import FailoverTTSService, HealthPolicy
from pipecat_tts_failover.events import (
    FailureExcused,
    ProbeFinished,
    ProviderDown,
    ProviderUp,
)
from pipecat_tts_failover.recovery import PROBE_TEXT, close_recovery
from pipecat_tts_failover.store import InMemoryHealthStore
from pipecat_tts_failover.store.redis import RedisHealthStore
from tests.support.pipeline import PipelineHarness
from tests.support.redis_server import RedisServer
from tests.support.scripted import ScriptedTTSService

PROVIDERS = ("primary", "backup")
SAMPLE_RATE = 16000  # the pipeline's, and so the scripted services'

CONFIGS = ("first_failure", "defaults", "switcher")
# Configurations without a health store: pipecat's own (``bare`` is the burst's reference).
_STORELESS = ("bare", "switcher")
SCENARIOS = ("isolated", "outage", "brownout", "flapping", "burst", "burst_end", "recovery")
# How long a call waits for a sentence to end, with nothing coming out, before it
# sends the next one anyway; its end waits this long and 5 s more.
SENTENCE_WAIT = 8.0
# A new call starting this long after an outage began must not ask the dead provider.
LATE_CALLER = 1.5

# Words of the calls' sentences: all different, and no two share an audio code.
_WORDS = (  # noqa: SIM905 - a paragraph reads better than 80 quoted words
    "thanks calling acme support today your order shipped yesterday morning from warehouse "
    "should arrive within three days tracking number sent email earlier please keep handy "
    "refund takes five business weeks account shows balance zero dollars credit card ending "
    "seven expires next march would like change delivery address street city postal code "
    "confirmed agent will call back tomorrow between nine eleven anything else help with "
    "have wonderful evening goodbye meanwhile check status online portal anytime"
).split()


def _sentences() -> list[str]:
    words, seen = [], set()
    for word in _WORDS:
        code = zlib.crc32(word.encode()) % 7000
        if code not in seen:
            seen.add(code)
            words.append(word)
    # As the scripted providers split them: the last word keeps its full stop.
    return [" ".join(words[i : i + 6]) + "." for i in range(0, 72, 6)]


SENTENCES = _sentences()


@dataclass(frozen=True)
class Speech:
    """How the scripted providers speak."""

    ms_per_char: int
    chunk_ms: int

    @property
    def pace(self) -> float:
        return self.chunk_ms / 1000


FAST = Speech(ms_per_char=10, chunk_ms=40)  # 6x shorter than real speech, streamed in real time
REAL = Speech(ms_per_char=60, chunk_ms=60)


@dataclass
class Scenario:
    """One row's traffic and faults.

    Parameters:
        key: Scenario family (for ``--only``).
        name: Shown in the table.
        calls: How many calls.
        spacing: Seconds between call arrivals (0: all at once).
        sentences: Sentences per call.
        fault: ``(t, request index in the call's service, rng) -> fault``: what
            the primary does to a request made ``t`` seconds into the row.
        speech: How the providers speak.
        outage: ``(start, end)`` of a hard outage, for its figures.
        seed: Seed of the random faults.
    """

    key: str
    name: str
    calls: int
    spacing: float
    sentences: int
    fault: Callable[[float, int, random.Random], str | None]
    speech: Speech = FAST
    outage: tuple[float, float] | None = None
    seed: int = 13
    configs: tuple[str, ...] = CONFIGS
    # Send every sentence and the EndFrame at once, as a bot ending the call
    # after its last reply does, instead of each sentence once the last ended.
    queued: bool = False


@dataclass
class Request:
    t: float
    call: int
    provider: str
    probe: bool
    fault: str | None


@dataclass
class Call:
    index: int
    started: float
    first: str = "primary"
    lost: int = 0
    repeated: int = 0
    on_backup: int = 0
    leaked: int = 0
    cut: int = 0
    heard: list[tuple[str, int, int]] = field(default_factory=list, repr=False)
    error: str | None = None
    # Seconds of speech the call's sentences hold, in real time.
    speech: float = 0.0
    # Seconds of it not yet heard when the call's EndFrame was sent.
    owed_at_end: float = 0.0
    # Seconds from the first sentence sent to the pipeline finished.
    played: float | None = None


@dataclass
class Fleet:
    """What one row's calls did: every request the providers got, every event, every call."""

    scenario: Scenario
    t0: float = field(default_factory=time.monotonic)
    requests: list[Request] = field(default_factory=list)
    events: list[tuple[float, object]] = field(default_factory=list)
    calls: list[Call] = field(default_factory=list)
    lags: list[float] = field(default_factory=list)
    logged: dict[str, int] = field(default_factory=dict)
    rng: random.Random = field(default_factory=random.Random)

    def now(self) -> float:
        return time.monotonic() - self.t0

    def on_event(self, event):
        self.events.append((self.now(), event))

    def of(self, kind: type, provider: str | None = None) -> list[tuple[float, object]]:
        return [
            (t, e)
            for t, e in self.events
            if isinstance(e, kind) and (provider is None or e.provider_id == provider)
        ]

    def faults_for(self, call: int, provider: str):
        def faults(index: int, text: str) -> str | None:
            t = self.now()
            fault = self.scenario.fault(t, index, self.rng) if provider == "primary" else None
            self.requests.append(Request(t, call, provider, text == PROBE_TEXT, fault))
            return fault

        return faults


def words_heard(
    frames: list[TTSAudioRawFrame], codes: dict[int, str]
) -> list[tuple[str, int, int]]:
    """``tests.support.scripted.decode_audio``, vectorized, with lengths.

    Returns:
        ``(word, speaker, samples)`` for each run of one word's samples.
    """
    if not frames:
        return []
    samples = np.concatenate([np.frombuffer(f.audio, dtype="<i2") for f in frames])
    starts = np.concatenate(([0], np.flatnonzero(np.diff(samples)) + 1))
    lengths = np.diff(np.concatenate((starts, [len(samples)])))
    heard = []
    for value, length in zip(samples[starts].tolist(), lengths.tolist(), strict=True):
        if value:
            offset = value - 1000
            heard.append((codes.get(offset - offset % 4, "?"), offset % 4, length))
    return heard


def audio_seconds(frames: list[TTSAudioRawFrame]) -> float:
    return sum(len(f.audio) for f in frames) / 2 / SAMPLE_RATE


CODES = {(zlib.crc32(w.encode()) % 7000) * 4: w for s in SENTENCES for w in s.split()}


class Harness(PipelineHarness):
    """PipelineHarness for a burst: a longer start, and waits that last while the call speaks.

    An overloaded process plays each call's audio slower than real time, so a
    fixed wait would give up on speech that is still coming out. The waits
    here give up only when nothing has come out of the call for ``quiet``
    seconds: their budget is the speech owed, at whatever pace the process
    plays it. A call stuck on a hung service (pipecat's switcher never leaves
    it) is still given up on after ``quiet`` seconds of silence, and its
    pipeline cancelled.
    """

    def __init__(self, processor):
        super().__init__(processor, on_down=self._came_out)
        self.last_out = time.monotonic()

    def _came_out(self, frame):
        self.last_out = time.monotonic()

    async def start(self, timeout: float = 60.0):
        started = asyncio.Event()

        @self._worker.event_handler("on_pipeline_started")
        async def _started(worker, frame):
            started.set()

        await self._runner.add_workers(self._worker)
        self._run = asyncio.create_task(self._runner.run())
        async with asyncio.timeout(timeout):
            await started.wait()

    def _quiet_for(self, since: float, quiet: float) -> float:
        """Seconds left before ``quiet`` seconds pass with nothing out (0: they have)."""
        return max(self.last_out, since) + quiet - time.monotonic()

    async def wait_speaking(self, predicate: Callable[[], bool], quiet: float) -> bool:
        """Wait until ``predicate()`` holds; False if nothing came out for ``quiet`` s first."""
        since = time.monotonic()
        while not predicate():
            left = self._quiet_for(since, quiet)
            if left <= 0:
                return False
            self._changed.clear()
            try:
                async with asyncio.timeout(left):
                    await self._changed.wait()
            except TimeoutError:
                pass
        return True

    async def finish(self, quiet: float) -> bool:
        """Send an EndFrame and wait for the pipeline to finish.

        Returns:
            False if nothing came out for ``quiet`` seconds before it finished
            (the pipeline is then cancelled, and awaited a little).
        """
        self._ended = True
        since = time.monotonic()
        await self._worker.queue_frame(EndFrame())
        while not self._run.done():
            left = self._quiet_for(since, quiet)
            if left <= 0:
                break
            await asyncio.wait({self._run}, timeout=min(left, 1.0))
        if self._run.done():
            return True
        await self._worker.cancel()
        await asyncio.wait({self._run}, timeout=5.0)
        if not self._run.done():
            self._run.cancel()
        return False


async def one_call(fleet: Fleet, index: int, config: str, store) -> None:
    scenario = fleet.scenario
    call = Call(index, fleet.now())
    fleet.calls.append(call)
    services = [
        ScriptedTTSService(
            provider_index=i,
            faults=fleet.faults_for(index, pid),
            name=f"{pid}#{index}",
            ms_per_char=scenario.speech.ms_per_char,
            chunk_ms=scenario.speech.chunk_ms,
            pace=scenario.speech.pace,
            stall_after_words=0,
        )
        for i, pid in enumerate(PROVIDERS if config != "bare" else ())
    ]
    if config == "bare":
        # pipecat's own service alone, and healthy: what this process does
        # with the same calls and speech when nothing fails and nothing wraps.
        processor = ScriptedTTSService(
            name=f"bare#{index}",
            ms_per_char=scenario.speech.ms_per_char,
            chunk_ms=scenario.speech.chunk_ms,
            pace=scenario.speech.pace,
        )
    elif config == "switcher":
        processor = ServiceSwitcher(
            services=services, strategy_type=ServiceSwitcherStrategyFailover
        )
    else:
        processor = FailoverTTSService(
            services=dict(zip(PROVIDERS, services, strict=True)),
            store=store,
            health=HealthPolicy.first_failure(60) if config == "first_failure" else None,
            alerters=[fleet],
        )
    texts = SENTENCES[: scenario.sentences]
    speech = scenario.speech
    call.speech = sum(len(w) for t in texts for w in t.split()) * speech.ms_per_char / 1000
    h = Harness(processor)
    try:
        await h.start()
        if isinstance(processor, FailoverTTSService):
            call.first = processor.active_provider
        began = time.monotonic()
        for i, text in enumerate(texts):
            await h.send(TTSSpeakFrame(text))
            if not scenario.queued:
                # Past the wait, the next sentence goes anyway (queued behind this one).
                await h.wait_speaking(lambda i=i: len(h.of(TTSStoppedFrame)) > i, SENTENCE_WAIT)
        call.owed_at_end = max(0.0, call.speech - audio_seconds(h.audio))
        if not await h.finish(SENTENCE_WAIT + 5):
            call.error = "end timed out"
        call.played = time.monotonic() - began
    except Exception as e:  # noqa: BLE001 - a call that breaks is counted, not fatal
        call.error = repr(e)
    heard = call.heard = words_heard(h.audio, CODES)
    counts: dict[str, int] = {}
    speakers: dict[str, set[int]] = {}
    for word, speaker, samples in heard:
        # A word cut by a failure is said again whole by the next provider: the
        # caller heard part of it, then all of it. Only whole words count.
        whole = round(SAMPLE_RATE * len(word) * speech.ms_per_char / 1000)
        if samples < 0.95 * whole:
            call.cut += 1
            continue
        counts[word] = counts.get(word, 0) + 1
        speakers.setdefault(word, set()).add(speaker)
    call.leaked = counts.get("?", 0)
    for text in texts:
        words = text.split()
        if any(counts.get(w, 0) == 0 for w in words):
            call.lost += 1
        if any(counts.get(w, 0) > 1 for w in words):
            call.repeated += 1
        if any(1 in speakers.get(w, ()) for w in words):
            call.on_backup += 1


async def lag_monitor(fleet: Fleet):
    loop = asyncio.get_running_loop()
    while True:
        before = loop.time()
        await asyncio.sleep(0.01)
        fleet.lags.append(loop.time() - before - 0.01)


async def run_row(scenario: Scenario, config: str, store_kind: str, redis_url: str | None):
    store = None
    if config not in _STORELESS:
        if store_kind == "redis":
            store = RedisHealthStore(redis_url, key_prefix=f"fleet-{uuid.uuid4().hex[:8]}")
            await store.connect()
        else:
            store = InMemoryHealthStore()
    gc.collect()
    fleet = Fleet(scenario, rng=random.Random(scenario.seed))
    LOGGED.clear()
    monitor = asyncio.create_task(lag_monitor(fleet))
    started = time.monotonic()
    tasks = []
    for i in range(scenario.calls):
        if scenario.spacing:
            await asyncio.sleep(max(0.0, i * scenario.spacing - fleet.now()))
        tasks.append(asyncio.create_task(one_call(fleet, i, config, store)))
    await asyncio.gather(*tasks)
    wall = time.monotonic() - started
    monitor.cancel()
    fleet.logged = dict(LOGGED)
    await close_recovery()
    if store is not None:
        await store.close()
    return fleet, wall


#
# Figures
#


def p(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))] if ordered else 0.0


@dataclass
class Row:
    scenario: Scenario
    config: str
    store: str
    fleets: list[Fleet]
    walls: list[float]
    # The 1-minute load average after each repeat (the machine is shared).
    loads: list[float] = field(default_factory=list)

    def per_repeat(self, figure: Callable[[Fleet], float]) -> list[float]:
        return [figure(f) for f in self.fleets]


def med(values: list[float], fmt: str = "{:.0f}") -> str:
    """Median, with the range when repeated."""
    if not values:
        return "-"
    m = fmt.format(statistics.median(values))
    if len(values) > 1 and min(values) != max(values):
        return f"{m} ({fmt.format(min(values))}-{fmt.format(max(values))})"
    return m


def sentences(f: Fleet) -> int:
    return sum(min(f.scenario.sentences, len(SENTENCES)) for _ in f.calls)


def lost(f: Fleet) -> int:
    return sum(c.lost for c in f.calls)


def repeated(f: Fleet) -> int:
    return sum(c.repeated for c in f.calls)


def backup_share(f: Fleet) -> float:
    return 100.0 * sum(c.on_backup for c in f.calls) / max(1, sentences(f))


def started_on_backup(f: Fleet) -> int:
    return sum(c.first == "backup" for c in f.calls)


def callers_failed(f: Fleet) -> int:
    """Callers' sentences the primary failed (probes apart)."""
    return sum(1 for r in f.requests if r.provider == "primary" and not r.probe and r.fault)


def ejections(f: Fleet, provider: str) -> int:
    return len(f.of(ProviderDown, provider))


def cut(f: Fleet) -> int:
    return sum(c.cut for c in f.calls)


def excused(f: Fleet) -> int:
    return sum(1 for _, e in f.of(FailureExcused) if e.cause == "loop_lag")


def outage_figures(f: Fleet) -> str:
    start, end = f.scenario.outage
    downs = [t for t, _ in f.of(ProviderDown, "primary") if t >= start]
    ejected = downs[0] if downs else None
    failed_before = sum(
        1
        for r in f.requests
        if r.provider == "primary"
        and not r.probe
        and r.fault
        and (ejected is None or r.t < ejected)
    )
    late = [c for c in f.calls if c.started >= start + LATE_CALLER]
    asked = {
        r.call
        for r in f.requests
        if r.provider == "primary" and not r.probe and r.fault and start <= r.t < end
    }
    paid = sum(1 for c in late if c.index in asked)
    first = next(
        (r.t for r in f.requests if r.provider == "primary" and not r.probe and r.fault), None
    )
    when = f"{ejected - start:.2f} s" if ejected is not None else "never"
    if ejected is not None and first is not None:
        when += f" ({ejected - first:.2f} s after the first failed request)"
    return (
        f"ejected after {when}, {failed_before} failed sentences before; "
        f"late callers who asked the dead primary {paid}/{len(late)}"
    )


def recovery_figures(f: Fleet) -> str:
    downs = f.of(ProviderDown, "primary")
    if not downs:
        return "never ejected"
    t_down, down = downs[0]
    ups = [t for t, _ in f.of(ProviderUp, "primary") if t > t_down]
    t_up = ups[0] if ups else None
    probes = [(t, e) for t, e in f.of(ProbeFinished, "primary") if e.purpose == "recovery"]
    failed_probes = sum(1 for _, e in probes if not e.ok)
    # Requests in flight when the ejection was written are the incident's, not recovery's.
    settle = 0.5
    window_end = t_up if t_up is not None else float("inf")
    after = [r for r in f.requests if r.provider == "primary" and t_down + settle < r.t]
    first = after[0] if after else None
    paid = [r for r in after if not r.probe and r.t < window_end]
    paid_calls = {r.call for r in paid}
    paid_failed = {r.call for r in paid if r.fault}
    back = f"back at {t_up:.1f} s" if t_up is not None else "not back by the end"
    first_by = "-" if first is None else ("a probe" if first.probe else "a caller")
    return (
        f"ejected at {t_down:.1f} s ({down.rule}, {down.seconds:.0f} s), {len(probes)} "
        f"recovery probes ({failed_probes} failed), {back}; first to ask it after: {first_by}; "
        f"callers who paid: {len(paid_calls)} ({len(paid_failed)} met the failure)"
    )


def figures(row: Row) -> str:
    s = row.scenario
    if s.key == "outage":
        return "; ".join(outage_figures(f) for f in row.fleets)
    if s.key == "recovery":
        return "; ".join(recovery_figures(f) for f in row.fleets)
    if s.key.startswith("burst"):
        return burst_figures(row)
    return ""


def ends_timed_out(f: Fleet) -> int:
    return sum(1 for c in f.calls if c.error)


def stretch(f: Fleet, q: float) -> float:
    """How many times its real-time length a call took to play its speech (quantile over calls)."""
    return p([c.played / c.speech for c in f.calls if c.played is not None and c.speech], q)


def owed_at_end(f: Fleet) -> float:
    """Median seconds of speech a call had not yet heard when it sent its EndFrame."""
    return p([c.owed_at_end for c in f.calls], 0.5)


def burst_figures(row: Row) -> str:
    r = row.per_repeat
    return (
        f"ends timed out {med(r(ends_timed_out))}; "
        f"loop lag p50 {med(r(lambda f: p(f.lags, 0.5) * 1000))} ms "
        f"p99 {med(r(lambda f: p(f.lags, 0.99) * 1000))} ms; "
        f"speech took x{med(r(lambda f: stretch(f, 0.5)), '{:.1f}')} its length "
        f"(slowest call x{med(r(lambda f: stretch(f, 1.0)), '{:.1f}')}), "
        f"{med(r(owed_at_end), '{:.1f}')} s still owed when the end was sent; "
        f"failures excused for loop lag {med(r(excused))}; "
        f"words cut and said again whole {med(r(cut))}; "
        f"sentences all providers failed {med(r(lambda f: f.logged.get('all_failed', 0)))}; "
        f"ends the wrapper cut short {med(r(lambda f: f.logged.get('end_cut', 0)))}; "
        f"Redis fell back to the local view "
        f"{med(r(lambda f: f.logged.get('redis_fallbacks', 0)))}; "
        f"load average {med(row.loads, '{:.1f}')}"
    )


def table(rows: list[Row]) -> list[str]:
    lines = [
        (
            "| scenario | config | store | calls | sentences | on backup % "
            "| calls started on backup | callers' failed sentences | primary ejections "
            "| backup ejections | lost | repeated | wall s | scenario figures |"
        ),
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for row in rows:
        r = row.per_repeat
        lines.append(
            f"| {row.scenario.name} | {row.config} | {row.store} | {row.scenario.calls} "
            f"| {med(r(sentences))} | {med(r(backup_share), '{:.1f}')} "
            f"| {med(r(started_on_backup))} | {med(r(callers_failed))} "
            f"| {med(r(lambda f: ejections(f, 'primary')))} "
            f"| {med(r(lambda f: ejections(f, 'backup')))} | {med(r(lost))} | {med(r(repeated))} "
            f"| {med(row.walls, '{:.0f}')} | {figures(row)} |"
        )
    return lines


#
# Scenarios
#


def isolated(rate: float, calls: int, spacing: float, sentences: int) -> Scenario:
    return Scenario(
        "isolated",
        f"isolated errors {rate * 100:g} %",
        calls,
        spacing,
        sentences,
        lambda t, i, rng: "error" if rng.random() < rate else None,
    )


def scenarios(quick: bool, burst_calls: int | None = None) -> list[Scenario]:
    calls, spacing = (30, 0.2) if quick else (60, 0.1)
    burst = burst_calls or (300 if quick else 500)
    rows = [isolated(rate, calls, spacing, 12) for rate in (0.005, 0.01, 0.02, 0.05)]
    start = 3.0
    for fault in ("error", "hang"):
        rows.append(
            Scenario(
                "outage",
                f"hard outage ({fault}) from {start:g} s",
                calls if quick else 50,
                0.2,
                12,
                lambda t, i, rng, fault=fault: fault if t >= start else None,
                outage=(start, float("inf")),
            )
        )
    rows.append(
        Scenario(
            "brownout",
            "brownout 30 % errors",
            calls,
            spacing,
            12,
            lambda t, i, rng: "error" if rng.random() < 0.3 else None,
        )
    )
    rows.append(
        Scenario(
            "flapping",
            "flapping 5 s up / 5 s down",
            60 if quick else 100,
            0.2,
            12,
            lambda t, i, rng: "error" if int(t // 5) % 2 else None,
        )
    )
    rows.append(
        Scenario(
            "burst",
            f"{burst} calls at once, hang from each call's 2nd request",
            burst,
            0.0,
            3,
            lambda t, i, rng: "hang" if i >= 1 else None,
            speech=REAL,
            configs=("bare", *CONFIGS),
        )
    )
    rows.append(
        Scenario(
            "burst_end",
            f"{burst} calls at once, hang from each call's 2nd request, "
            "sentences and end sent at once",
            burst,
            0.0,
            3,
            lambda t, i, rng: "hang" if i >= 1 else None,
            speech=REAL,
            configs=("bare", "defaults"),
            queued=True,
        )
    )
    rows.append(
        Scenario(
            "recovery",
            "recovery: errors until 35 s, then fixed",
            90,
            0.5,
            8,
            lambda t, i, rng: "error" if t < 35.0 else None,
            configs=("defaults",),
        )
    )
    return rows


GOALS = (
    "isolated failures up to 2 %: no new call starts on the backup",
    "hard outage: new calls starting 1.5 s after it began never ask the dead provider",
    "burst of 300-500 calls: nothing lost, healthy backup never ejected",
    "recovery with defaults: 0 callers pay",
    "every case: every sentence heard exactly once",
)


def goals(rows: list[Row]) -> list[str]:
    lines = []
    for config in ("first_failure", "defaults", "switcher"):
        mine = [r for r in rows if r.config == config]
        if not mine:
            continue
        verdicts = []
        iso = [r for r in mine if r.scenario.key == "isolated" and "5 %" not in r.scenario.name]
        if iso:
            ok = all(started_on_backup(f) == 0 for r in iso for f in r.fleets)
            verdicts.append(f"isolated <= 2 %: {'met' if ok else 'MISSED'}")
        out = [r for r in mine if r.scenario.key == "outage"]
        if out:
            ok = all(
                "asked the dead primary 0/" in outage_figures(f) for r in out for f in r.fleets
            )
            verdicts.append(f"hard outage: {'met' if ok else 'MISSED'}")
        burst = [r for r in mine if r.scenario.key.startswith("burst")]
        if burst:
            ok = all(lost(f) == 0 and ejections(f, "backup") == 0 for r in burst for f in r.fleets)
            verdicts.append(f"burst: {'met' if ok else 'MISSED'}")
        rec = [r for r in mine if r.scenario.key == "recovery"]
        if rec:
            ok = all("callers who paid: 0 " in recovery_figures(f) for r in rec for f in r.fleets)
            verdicts.append(f"recovery: {'met' if ok else 'MISSED'}")
        ok = all(lost(f) == 0 and repeated(f) == 0 for r in mine for f in r.fleets)
        verdicts.append(f"heard exactly once: {'met' if ok else 'MISSED'}")
        lines.append(f"- {config}: " + "; ".join(verdicts))
    return lines


#
# Main
#


LOGGED: dict[str, int] = {}
# Log lines counted per row (loguru messages containing these).
_COUNTED = {
    "Redis unavailable": "redis_fallbacks",
    "every TTS provider failed": "all_failed",
    # Relay.finish gave up waiting for what was owed (its end-of-call timeout).
    "the end of the call came before all was spoken": "end_cut",
}


def _count(message):
    text = message.record["message"]
    for needle, key in _COUNTED.items():
        if needle in text and message.record["name"].startswith("pipecat_tts_failover"):
            LOGGED[key] = LOGGED.get(key, 0) + 1


def write_docs(text: str, about: str):
    """Replace (or add, before the pages' sections) docs/benchmarks.md's "Fleet health" section."""
    path = ROOT / "docs" / "benchmarks.md"
    report = path.read_text()
    section = f"## Fleet health\n\n{about}\n\n{text}\n"
    marker = "\n## Fleet health\n"
    if marker in report:
        before, rest = report.split(marker, 1)
        after = rest.split("\n## ", 1)
        tail = "\n## " + after[1] if len(after) > 1 else ""
        report = before + "\n" + section + tail
    elif "\n## Fault matrix\n" in report:
        before, after = report.split("\n## Fault matrix\n", 1)
        report = before + "\n" + section + "\n## Fault matrix\n" + after
    else:
        report = report.rstrip("\n") + "\n\n" + section
    path.write_text(report)


def code_version() -> str:
    """The commit measured, and the package files that differed from it (others edit the tree)."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            check=False,
            cwd=ROOT,
            capture_output=True,
            text=True,
        ).stdout.strip()
        changed = subprocess.run(
            ["git", "diff", "--name-only", "HEAD", "--", "pipecat_tts_failover"],
            check=False,
            cwd=ROOT,
            capture_output=True,
            text=True,
        ).stdout.split()
    except OSError:
        return "unknown"
    return commit + (f" with uncommitted changes to {', '.join(changed)}" if changed else "")


def run_in_child(args, index: int, config: str, store_kind: str, seed: int, url: str | None):
    """One repeat of one row in a fresh process: nothing left by an earlier row (tasks, monitors,
    recovery, garbage) weighs on it.

    Returns:
        ``(fleet, wall)``, the fleet without its scenario, or None if the child failed.
    """
    with tempfile.NamedTemporaryFile(suffix=".pickle", delete=False) as out:
        path = Path(out.name)
    command = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--child",
        f"{index}:{config}:{store_kind}:{seed}",
        "--child-out",
        str(path),
    ]
    if args.quick:
        command.append("--quick")
    if args.burst_calls:
        command += ["--burst-calls", str(args.burst_calls)]
    if url:
        command += ["--redis-url", url]
    if args.log:
        command += ["--log", args.log]
    try:
        done = subprocess.run(
            command, cwd=ROOT, capture_output=True, text=True, timeout=_CHILD_TIMEOUT, check=False
        )
        if done.returncode != 0 or not path.stat().st_size:
            print(f"row process failed ({done.returncode}): {done.stderr[-2000:]}", file=sys.stderr)
            return None
        return pickle.loads(path.read_bytes())
    except subprocess.TimeoutExpired:
        print(f"row process timed out after {_CHILD_TIMEOUT} s", file=sys.stderr)
        return None
    finally:
        path.unlink(missing_ok=True)


# A row's process that takes longer than this is stopped (and the repeat left out).
_CHILD_TIMEOUT = 1800


async def child_async(args):
    """The ``--child`` process: run one repeat of one row, write ``(fleet, wall)``, and exit."""
    index, config, store_kind, seed = args.child.split(":")
    scenario = scenarios(args.quick, args.burst_calls)[int(index)]
    scenario.seed = int(seed)
    fleet, wall = await run_row(scenario, config, store_kind, args.redis_url)
    fleet.scenario = None  # its fault is a lambda; the parent puts it back
    Path(args.child_out).write_bytes(pickle.dumps((fleet, wall)))
    sys.stdout.flush()
    sys.stderr.flush()
    # A call given up on leaves pipecat tasks behind whose cancellation never
    # completes, so asyncio.run() would wait for them for ever: leave at once.
    os._exit(0)


async def main_async(args) -> str:
    stores = [s for s in args.stores.split(",") if s]
    only = {s for s in args.only.split(",") if s}
    configs = {s for s in args.configs.split(",") if s}
    out: list[str] = []
    server = None
    url = None
    workdir = tempfile.TemporaryDirectory(prefix="fleet-health-")
    if "redis" in stores:
        server = RedisServer(Path(workdir.name)).start()
        url = server.url
    out.append(f"code: {code_version()}")
    out.append(f"load average before: {' '.join(f'{x:.1f}' for x in os.getloadavg())}")
    try:
        rows: list[Row] = []
        for index, scenario in enumerate(scenarios(args.quick, args.burst_calls)):
            if only and scenario.key not in only:
                continue
            for config in scenario.configs:
                if configs and config not in configs:
                    continue
                for store_kind in ["-"] if config in _STORELESS else stores:
                    fleets, walls, loads = [], [], []
                    for repeat in range(args.repeats):
                        seed = 13 + repeat
                        ran = run_in_child(args, index, config, store_kind, seed, url)
                        loads.append(os.getloadavg()[0])
                        if ran is None:
                            continue
                        fleet, wall = ran
                        scenario.seed = seed
                        fleet.scenario = scenario
                        fleets.append(fleet)
                        walls.append(wall)
                    if not fleets:
                        continue
                    row = Row(scenario, config, store_kind, fleets, walls, loads)
                    rows.append(row)
                    print(table([row])[-1], file=sys.stderr, flush=True)
        out.append(f"load average after: {' '.join(f'{x:.1f}' for x in os.getloadavg())}")
        out.append("")
        lines = table(rows)
        out += lines
        out.append("")
        out.append("Goals (issue 13), per configuration:")
        out += goals(rows)
    finally:
        if server is not None:
            server.stop()
        workdir.cleanup()
    return "\n".join(out)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer calls, for a fast look")
    parser.add_argument("--stores", default="memory,redis", help="memory, redis, or both")
    parser.add_argument("--only", default="", help="scenarios: " + ",".join(SCENARIOS))
    parser.add_argument("--configs", default="", help="configurations: bare," + ",".join(CONFIGS))
    parser.add_argument("--repeats", type=int, default=1, help="runs per row (median, range)")
    parser.add_argument(
        "--burst-calls", type=int, default=None, help="calls in the burst rows (300 quick, 500)"
    )
    parser.add_argument("--log", default=None, help="write WARNING+ logs to this file")
    parser.add_argument("--docs", action="store_true", help="write docs/benchmarks.md's section")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--child-out", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--redis-url", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    logger.remove()
    logger.add(_count, level="WARNING")
    if args.log:
        logger.add(args.log, level="INFO")
    if args.child:
        asyncio.run(child_async(args))
        return
    started = time.monotonic()
    text = asyncio.run(main_async(args))
    took = time.monotonic() - started
    print(text)
    if args.docs:
        shown_args = [a for a in sys.argv[1:] if a != "--docs"]
        if args.log:  # where the logs went is not part of the benchmark
            at = shown_args.index("--log") if "--log" in shown_args else None
            shown_args = shown_args[:at] + shown_args[at + 2 :] if at is not None else shown_args
            shown_args = [a for a in shown_args if not a.startswith("--log=")]
        shown = " ".join(["python", "benchmarks/fleet_health.py", *shown_args])
        today = datetime.date.today().isoformat()
        write_docs(f"`{shown}` ({took:.0f} s, {today})\n\n{text}", ABOUT)


ABOUT = (
    "Issue 13's scenarios, side by side: version 0.1's rule "
    "(`HealthPolicy.first_failure(60)`: the first failed sentence ejects the provider for the "
    "fleet for 60 s), the new `HealthPolicy()` defaults, and pipecat's `ServiceSwitcher` with "
    "`ServiceSwitcherStrategyFailover` (no fleet state). Many concurrent calls in one process "
    "share one store (in memory, and Redis on a redis-server the script starts); each repeat of "
    "each row runs in a fresh process. Each call is a real "
    "pipeline around scripted providers: a `primary` that fails by the scenario (an error frame "
    "or a hang before any audio; at random from a seeded generator, or by time), and a healthy "
    "`backup`. Probes meet the same faults. Speech is 6x shorter than real (10 ms of audio per "
    "letter, about 0.4 s a sentence) and streamed in real time, each sentence sent once the last "
    "ended; deadlines and health rules keep their real seconds, so each call gives the fleet "
    "evidence about six times as fast as a real one. The burst speaks real-length speech (60 ms "
    "per letter, 60 ms chunks, 6.7 s a call) as `propagation.py` does, with `bare` (pipecat's "
    "healthy service alone, no wrapper, no fault) as the reference for what the overload alone "
    "does to speech; its second row sends each call's sentences and EndFrame at once, as a bot "
    "ending the call after its last reply does. A call gives up waiting for a sentence (and sends "
    "the next anyway) or for its end (and cancels its pipeline) only once nothing has come out of "
    "it for 8 s (13 s for the end): an overloaded process plays speech slower than real time, "
    "and a fixed wait would count speech still on its way as lost. Lost and repeated sentences "
    "are decoded "
    "from the audio that reached the end of each pipeline: lost if a word was never heard whole, "
    "repeated if a word was heard whole twice (a word cut by a failure and said again whole by "
    "the next provider is counted apart). Columns: share of sentences with "
    "backup audio, calls whose first provider was the backup, callers' sentences the primary "
    "failed (probes apart), ejections (ProviderDown events); outage rows: time from the outage to "
    "the ejection and the callers' failed sentences before it, and new calls starting 1.5 s or "
    "more after the outage began that still asked the dead primary; recovery: callers whose "
    "sentence reached the primary after its ejection (more than 0.5 s after, so not in flight "
    "then) and before it was marked up; burst: how many times its real-time length a call took "
    "to play its speech (median call, and the slowest), the speech still owed when the end was "
    "sent, sentences the wrapper gave up on (every provider failed) and ends it cut short (its "
    "60 s end-of-call timeout). Median (range) over repeats; the machine is shared (2 cores, "
    "load average noted)."
)


if __name__ == "__main__":
    main()
