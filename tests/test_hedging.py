"""Adaptive first-audio deadlines and hedged requests, in real pipelines with scripted latencies."""

import pytest
from pipecat.frames.frames import TTSSpeakFrame, TTSStoppedFrame

from pipecat_tts_failover import FailoverTTSService, FailureReason, InMemoryHealthStore
from pipecat_tts_failover.events import ProviderSlow, SentenceAttempted
from pipecat_tts_failover.latency import (
    AdaptiveTimeout,
    HedgeBudget,
    LatencyWindow,
    parse_quantile,
    stats_for,
)
from pipecat_tts_failover.recovery import PROBE_TEXT
from tests.support.pipeline import PipelineHarness
from tests.support.scripted import ScriptedTTSService, decode_audio, plan

SENTENCE = "Alpha bravo charlie delta"
WORDS = SENTENCE.split()


class Recorder:
    def __init__(self):
        self.events = []

    def on_event(self, event):
        self.events.append(event)


def services(primary_ttfb, backup_ttfb=0.0, primary_faults=None):
    return {
        "primary": ScriptedTTSService(provider_index=0, ttfb=primary_ttfb, faults=primary_faults),
        "backup": ScriptedTTSService(provider_index=1, ttfb=backup_ttfb),
    }


async def speak(tts, count: int):
    """Say the sentence ``count`` times, each once the one before was spoken (turns of a call)."""
    async with PipelineHarness(tts) as h:
        for i in range(count):
            await h.send(TTSSpeakFrame(SENTENCE))
            await h.wait_for(lambda i=i: len(h.of(TTSStoppedFrame)) > i, timeout=10)
    return h


def heard(h):
    return decode_audio(h.audio, WORDS)


#
# Hedging
#


async def test_slow_primary_is_hedged_and_only_the_first_audible_stream_is_heard():
    store = InMemoryHealthStore()
    svc = services(primary_ttfb=1.0)
    tts = FailoverTTSService(services=svc, store=store, first_audio_timeout=3.0, hedge_after=0.1)
    h = await speak(tts, 1)
    assert svc["primary"].requests == [SENTENCE] and svc["backup"].requests == [SENTENCE]
    assert heard(h) == [(w, 1) for w in WORDS]  # the hedge spoke, once; nothing of the primary
    assert h.words == WORDS
    # Slow is not failed: the primary is not marked down.
    assert (await store.get(["primary"]))["primary"].down_until is None


@pytest.mark.parametrize("order", ["primary-fails-first", "hedge-fails-first"])
async def test_attempt_left_alone_after_the_other_fails_is_waited_for_as_the_last_resort(order):
    # Whichever of the two fails first, the other is now the last provider left
    # for the sentence: it gets the last resort's first-audio deadline (twice
    # the fixed one) instead of its own, and the sentence is heard, not lost.
    if order == "primary-fails-first":
        # The primary times out at 0.3 s; the hedge, sent at 0.1 s, answers at 0.55 s.
        svc = services(primary_ttfb=2.0, backup_ttfb=0.45)
        speaker = 1
    else:
        # The hedge, sent at 0.1 s, fails at once; the primary answers at 0.45 s,
        # after its own 0.3 s deadline.
        svc = {
            "primary": ScriptedTTSService(provider_index=0, ttfb=0.45),
            "backup": ScriptedTTSService(
                provider_index=1, faults=plan(every="error"), stall_after_words=0
            ),
        }
        speaker = 0
    tts = FailoverTTSService(
        services=svc, store=InMemoryHealthStore(), first_audio_timeout=0.3, hedge_after=0.1
    )
    failed = []

    @tts.event_handler("on_all_providers_failed")
    async def on_all_failed(processor, text):
        failed.append(text)

    h = await speak(tts, 1)
    # (besides the probes that confirm a provider's failure through its idle service)
    assert [r for r in svc["backup"].requests if r != PROBE_TEXT] == [SENTENCE]
    assert failed == []
    assert heard(h) == [(w, speaker) for w in WORDS]


async def test_no_hedge_when_the_primary_speaks_before_the_hedge_delay():
    svc = services(primary_ttfb=0.0)
    tts = FailoverTTSService(services=svc, store=InMemoryHealthStore(), hedge_after=0.5)
    h = await speak(tts, 2)
    assert svc["backup"].requests == []
    assert [i for _, i in heard(h)] == [0] * 8


async def test_without_hedging_a_slow_primary_is_waited_for():
    svc = services(primary_ttfb=0.3)
    tts = FailoverTTSService(services=svc, store=InMemoryHealthStore(), first_audio_timeout=2.0)
    h = await speak(tts, 1)
    assert svc["backup"].requests == []
    assert heard(h) == [(w, 0) for w in WORDS]


async def test_primary_audible_first_wins_and_the_hedge_is_abandoned():
    svc = services(primary_ttfb=0.15, backup_ttfb=1.0)
    tts = FailoverTTSService(services=svc, store=InMemoryHealthStore(), hedge_after=0.05)
    h = await speak(tts, 1)
    assert svc["backup"].requests == [SENTENCE]  # the hedge was sent...
    assert heard(h) == [(w, 0) for w in WORDS]  # ...and abandoned when the primary spoke


async def test_hedge_carries_on_as_the_failover_when_the_primary_fails():
    svc = services(primary_ttfb=0.0, backup_ttfb=0.1, primary_faults=plan(every="hang"))
    recorder = Recorder()
    tts = FailoverTTSService(
        services=svc,
        store=InMemoryHealthStore(),
        first_audio_timeout=0.4,
        hedge_after=0.05,
        alerters=[recorder],
    )
    h = await speak(tts, 1)
    assert svc["backup"].requests == [SENTENCE]  # one request: the hedge, not a second one
    assert heard(h) == [(w, 1) for w in WORDS]


async def test_hedge_budget_caps_hedges_when_the_primary_is_uniformly_slow():
    # The primary is always slower than the hedge delay, and the backup slower
    # still, so every sentence would be hedged without a budget.
    svc = services(primary_ttfb=0.12, backup_ttfb=0.5)
    tts = FailoverTTSService(
        services=svc, store=InMemoryHealthStore(), hedge_after=0.02, hedge_budget=0.05
    )
    h = await speak(tts, 12)
    backup = tts.services["backup"]
    # 5 % of a 100-sentence window: at most 5 hedges, however many sentences were slow.
    assert len(backup.requests) == 5
    assert [w for w, _ in heard(h)] == WORDS * 12


def test_hedge_budget_counts_over_a_sliding_window():
    budget = HedgeBudget(0.05, window=20)  # one hedge per 20 sentences
    assert budget.allows()
    budget.record(True)
    assert not budget.allows()
    for _ in range(19):
        budget.record(False)
    assert not budget.allows()
    budget.record(False)  # the hedge has left the window
    assert budget.allows()


#
# Adaptive deadline
#


def test_latency_window_quantiles_and_bound():
    window = LatencyWindow(size=100)
    window.extend(i / 1000 for i in range(1, 201))  # 1..200 ms, only the last 100 kept
    assert len(window) == 100
    assert window.quantile(0.0) == 0.101
    assert window.quantile(0.99) == 0.2
    assert LatencyWindow().quantile(0.5) is None


def test_adaptive_deadline_is_a_clamped_multiple_of_the_tail():
    adaptive = AdaptiveTimeout(quantile=0.9, multiplier=2.0, floor=0.1, ceiling=1.0, min_samples=5)
    window = LatencyWindow()
    window.extend([0.2] * 4)
    assert adaptive.deadline(window) == adaptive.fallback
    window.add(0.2)
    assert adaptive.deadline(window) == pytest.approx(0.4)
    window.extend([0.9] * 10)
    assert adaptive.deadline(window) == 1.0  # ceiling
    fast = LatencyWindow()
    fast.extend([0.01] * 10)
    assert adaptive.deadline(fast) == 0.1  # floor
    with pytest.raises(ValueError):
        AdaptiveTimeout(floor=2.0, ceiling=1.0)
    assert parse_quantile("p95") == 0.95
    with pytest.raises(ValueError, match="p95"):
        parse_quantile("95th")


async def test_adaptive_deadline_follows_a_shift_within_a_few_sentences():
    store = InMemoryHealthStore()
    # Fast for 10 sentences, then uniformly seven times slower (enough that the
    # fast phase's deadline cannot cover it even on a loaded machine).
    shift_at = 10
    ttfb = lambda i: 0.02 if i < shift_at else 0.15
    svc = services(primary_ttfb=ttfb)
    adaptive = AdaptiveTimeout(quantile=0.9, multiplier=1.5, floor=0.04, ceiling=2.0, min_samples=5)
    tts = FailoverTTSService(
        services=svc,
        store=store,
        first_audio_timeout="adaptive",
        adaptive_timeout=adaptive,
        failure_threshold=100,  # keep trying the primary, to watch the deadline move
    )
    reasons = []

    @tts.event_handler("on_sentence_failed")
    async def on_failed(processor, pid, reason):
        reasons.append(reason)

    h = await speak(tts, 24)
    window = stats_for(store)["primary"].latency
    assert window.quantile(0.0) == pytest.approx(0.02, abs=0.02)
    # Right after the shift the tight deadline fails a few sentences over: each
    # miss counts as a sample at the deadline, raising the tail by the
    # multiplier once such samples reach the tail quantile...
    assert 1 <= len(reasons) <= 8 and set(reasons) == {FailureReason.NO_FIRST_AUDIO}
    # ...then the deadline has caught up and the primary speaks every sentence again.
    by_sentence = [i for _, i in heard(h)][:: len(WORDS)]
    assert by_sentence[:shift_at] == [0] * shift_at
    assert by_sentence[shift_at + len(reasons) :] == [0] * (24 - shift_at - len(reasons))
    assert [w for w, _ in heard(h)] == WORDS * 24


async def test_slow_provider_is_reported_once_and_new_calls_prefer_the_faster_one():
    store = InMemoryHealthStore()
    recorder = Recorder()
    slow = []
    svc = services(primary_ttfb=0.06)
    tts = FailoverTTSService(
        services=svc, store=store, slow_threshold=0.04, prefer_faster=True, alerters=[recorder]
    )

    @tts.event_handler("on_provider_slow")
    async def on_slow(processor, pid, p95):
        slow.append(pid)

    await speak(tts, 22)
    assert [e.provider_id for e in recorder.events if isinstance(e, ProviderSlow)] == ["primary"]
    assert slow == ["primary"]
    assert (await store.get(["primary"]))["primary"].down_until is None  # slow is not down

    fresh = services(primary_ttfb=0.06)
    await speak(FailoverTTSService(services=fresh, store=store, prefer_faster=True), 1)
    assert fresh["primary"].requests == [] and fresh["backup"].requests == [SENTENCE]
    # Without prefer_faster, the preferred provider keeps the call.
    plain = services(primary_ttfb=0.06)
    await speak(FailoverTTSService(services=plain, store=store), 1)
    assert plain["primary"].requests == [SENTENCE]


async def test_a_fresh_worker_starts_with_the_fleets_latency_view():
    from pipecat_tts_failover.latency import _stats

    store = InMemoryHealthStore()
    await speak(FailoverTTSService(services=services(primary_ttfb=0.03), store=store), 3)
    samples = (await store.get_latency_samples(["primary"]))["primary"]
    assert len(samples) == 3 and all(0.02 < s < 0.5 for s in samples)
    # A fresh worker: the process-level stats are gone, the store still has the samples.
    _stats.pop(store)
    tts = FailoverTTSService(services=services(primary_ttfb=0.03), store=store)
    async with PipelineHarness(tts):
        assert stats_for(store)["primary"].latency.samples == samples


async def test_a_hedge_on_a_factory_that_gives_no_service_fails_at_once_and_the_primary_speaks():
    # Cold standby, the backup a factory that raises: the hedge fails as soon as
    # it is tried (its provider has no service), and the slow primary, left as the
    # last resort, is waited for and heard; the backup's health is not touched.
    def backup():
        raise RuntimeError("ELEVENLABS_API_KEY is not set")

    store = InMemoryHealthStore()
    primary = ScriptedTTSService(provider_index=0, ttfb=0.5)
    recorder = Recorder()
    tts = FailoverTTSService(
        services={"primary": primary, "backup": backup},
        store=store,
        first_audio_timeout=3.0,
        hedge_after=0.1,
        standby="cold",
        alerters=[recorder],
    )
    h = await speak(tts, 2)
    assert heard(h) == [(w, 0) for w in WORDS] * 2
    assert primary.requests == [SENTENCE, SENTENCE]
    assert list(tts.services) == ["primary"]
    assert (await store.get(["backup"]))["backup"].down_until is None
    # The hedge's failure is the first sentence's, reported with it (not found
    # only when the next sentence asks which providers are usable).
    attempts = [e for e in recorder.events if isinstance(e, SentenceAttempted)]
    assert [(e.provider_id, e.reason) for e in attempts[:2]] == [
        ("backup", FailureReason.UNUSABLE),
        ("primary", None),
    ]
