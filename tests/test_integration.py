"""FailoverTTSService with pipecat's real Cartesia and ElevenLabs services against the emulators.

Each test starts both emulators on free 127.0.0.1 ports, builds pipecat's real
services pointed at them, runs a call through a real pipeline and stops
everything before it ends. What the caller heard is read back from the audio
that reached the end of the pipeline (see ``tests/support/integration.py``).
"""

import asyncio

import pytest

from pipecat_tts_failover import FailureReason
from pipecat_tts_failover.latency import AdaptiveTimeout
from pipecat_tts_failover.recovery import PROBE_TEXT, close_recovery
from pipecat_tts_failover.testing import FaultKind
from tests.support.integration import (
    SENTENCES,
    Call,
    Kind,
    failover,
    provider_of,
    providers,
    reference,
    speak_call,
)

# Every fault that breaks a sentence (the slow ones only delay it: see below).
FAULTS = [
    kind.value for kind in FaultKind if kind not in (FaultKind.SLOW_TTFB, FaultKind.SLOW_DRIP)
]
# Faults that may cut a sentence short after 120 ms of audio: the word being
# spoken then (the sentence's first) is heard only in part. See
# test_word_cut_short_by_a_failing_provider_is_said_again.
CUT_FAULTS = {"error", "close-1011", "stall"}
# Sentence index a mid-call fault is switched on before.
MID = 2
# Each service as the primary, the other provider's WebSocket service as the backup.
PAIRS = [
    ("cartesia_ws", "elevenlabs_ws"),
    ("elevenlabs_ws", "cartesia_ws"),
    ("cartesia_http", "elevenlabs_ws"),
    ("elevenlabs_http", "cartesia_ws"),
]
PAIR_IDS = ["cartesia-ws", "elevenlabs-ws", "cartesia-http", "elevenlabs-http"]
# HTTP services as the backup, for the faults that need a replay from the first unheard word.
HTTP_BACKUP_PAIRS = [("cartesia_ws", "elevenlabs_http"), ("elevenlabs_ws", "cartesia_http")]


@pytest.fixture(autouse=True)
async def no_leftovers():
    """Each test leaves no task running behind it (recovery's, like an app's, closed at shutdown)."""
    yield
    await close_recovery()
    await asyncio.sleep(0)
    leftover = [t for t in asyncio.all_tasks() if t is not asyncio.current_task() and not t.done()]
    assert leftover == []


def first_sentence_switched(fault: str, at: str) -> int:
    """The sentence the call moves to the backup at."""
    start = 0 if at == "first" else MID
    # flap: the first request after the fault is set is healthy, the second refused.
    return start + 1 if fault == "flap" else start


async def call_with_fault(
    store, primary: Kind, backup: Kind, fault: str, at: str, sentences=SENTENCES, **kwargs
) -> tuple[Call, list[str], list[str]]:
    """One call with ``fault`` on the primary from the start (``first``) or from sentence MID on."""
    async with providers() as p:
        emulator = p.emulator(primary)
        if at == "first":
            emulator.set_fault(fault)
        before = {MID: lambda: emulator.set_fault(fault)} if at == "mid" else {}
        tts = failover(
            {provider_of(primary): p.service(primary), provider_of(backup): p.service(backup)},
            store=store,
            **kwargs,
        )
        call = Call(sentences)
        call.watch(tts)
        await speak_call(tts, sentences, before=before, call=call)
        # No service was left stuck on the fault: the call ended on its EndFrame.
        assert call.ended_gracefully
        return call, callers_requests(p, primary), callers_requests(p, backup)


def callers_requests(p, kind: Kind) -> list[str]:
    """What a provider was asked for the caller (the probes confirming a failure left out)."""
    return [text for text in p.requests(kind) if text != PROBE_TEXT]


def assert_heard_once_in_order(call: Call, cut_short: str | None = None):
    """Every sentence reached the caller exactly once, in order, and nothing else did.

    Args:
        call: The call.
        cut_short: A word the failing provider may have cut mid-way: its
            beginning may be heard once, before the word is said again whole.
    """
    assert call.all_failed == []
    # The context records every word once, in order.
    assert call.words == call.expected_words
    heard = call.heard
    # Every word's audio, whole, in order...
    assert heard.missing == [], heard
    # ...and nothing else: no word twice, nothing of an abandoned attempt.
    assert all(cut_short in f.begins for f in heard.fragments), heard
    assert len(heard.fragments) <= (1 if cut_short else 0), heard


def assert_backup_took_over_at(
    switch: int, primary_requests: list[str], backup_requests: list[str]
):
    """The primary spoke until sentence ``switch``; the backup spoke the rest of it, then the others."""
    assert primary_requests in (list(SENTENCES[:switch]), list(SENTENCES[: switch + 1]))
    assert backup_requests[1:] == list(SENTENCES[switch + 1 :])
    failed = SENTENCES[switch].split()
    rest = backup_requests[0].split()
    assert rest and failed[len(failed) - len(rest) :] == rest


#
# Every fault, at the first sentence and in the middle of a call
#


@pytest.mark.parametrize("fault", FAULTS)
@pytest.mark.parametrize("at", ["first", "mid"])
@pytest.mark.parametrize("primary,backup", PAIRS, ids=PAIR_IDS)
async def test_every_sentence_is_heard_once_in_order_when_the_primary_fails(
    store, primary, backup, fault, at
):
    call, primary_requests, backup_requests = await call_with_fault(
        store, primary, backup, fault, at
    )

    switch = first_sentence_switched(fault, at)
    cut = SENTENCES[switch].split()[0] if fault in CUT_FAULTS else None
    assert_heard_once_in_order(call, cut_short=cut)
    assert_backup_took_over_at(switch, primary_requests, backup_requests)
    if fault == "reject-401" and at == "first" and primary.endswith("_ws"):
        # A 401 on the handshake leaves pipecat's service unusable before any
        # sentence: it is passed over, and reported as what it is.
        assert call.failures == [(provider_of(primary), FailureReason.AUTHENTICATION)]
    else:
        assert [pid for pid, _ in call.failures] == [provider_of(primary)]


@pytest.mark.parametrize("fault", ["error", "stall", "hang"])
@pytest.mark.parametrize(
    "primary,backup", HTTP_BACKUP_PAIRS, ids=["to-elevenlabs-http", "to-cartesia-http"]
)
async def test_an_http_backup_speaks_the_rest_of_the_sentence_once(store, primary, backup, fault):
    call, primary_requests, backup_requests = await call_with_fault(
        store, primary, backup, fault, "first"
    )

    cut = SENTENCES[0].split()[0] if fault in CUT_FAULTS else None
    assert_heard_once_in_order(call, cut_short=cut)
    assert_backup_took_over_at(0, primary_requests, backup_requests)


#
# Slow providers: hedging, adaptive deadlines, slower than real time
#


async def test_slow_first_audio_is_hedged_and_only_one_stream_is_heard(store):
    async with providers() as p:
        p.cartesia.set_fault("slow-ttfb:1500")
        tts = failover(
            {"cartesia": p.service("cartesia_ws"), "elevenlabs": p.service("elevenlabs_ws")},
            store=store,
            first_audio_timeout="adaptive",
            adaptive_timeout=AdaptiveTimeout(fallback=3.0),
            hedge_after=0.3,
        )
        call = Call(SENTENCES[:2])
        call.watch(tts)
        await speak_call(tts, SENTENCES[:2], call=call)
        cartesia, elevenlabs = p.requests("cartesia_ws"), p.requests("elevenlabs_ws")

    assert call.heard.whole
    assert call.words == call.expected_words
    # Both sentences went to both providers; the hedge spoke first both times.
    assert cartesia == elevenlabs == list(SENTENCES[:2])
    # Slow is not failed: the primary is not marked down.
    assert call.failures == []
    assert (await store.get(["cartesia"]))["cartesia"].down_until is None


async def test_adaptive_deadline_and_learned_hedge_move_a_primary_that_turns_slow(store):
    # Three healthy sentences teach the first-audio tail; then the primary
    # takes 1.5 s to start: the hedge (after its p95, a few ms) or the
    # adaptive deadline (its floor, 0.3 s) hands the sentence to the backup.
    sentences = [*SENTENCES, "Farewell and goodnight."]
    async with providers() as p:
        tts = failover(
            {"elevenlabs": p.service("elevenlabs_ws"), "cartesia": p.service("cartesia_ws")},
            store=store,
            first_audio_timeout="adaptive",
            adaptive_timeout=AdaptiveTimeout(min_samples=3, floor=0.3),
            hedge_after="p95",
        )
        call = Call(sentences)
        call.watch(tts)
        before = {3: lambda: p.elevenlabs.set_fault("slow-ttfb:1500")}
        await speak_call(tts, sentences, before=before, call=call)
        cartesia = p.requests("cartesia_ws")

    assert call.heard.whole
    assert call.words == call.expected_words
    # Only the slow sentences went to the backup, and it spoke them.
    assert cartesia == sentences[3:]
    assert call.failures == []


@pytest.mark.parametrize("factor,caught", [(3, False), (20, True)], ids=["3x-slower", "20x-slower"])
async def test_slower_than_real_time_audio_is_a_stall_only_when_a_gap_passes_the_stall_deadline(
    store, factor, caught
):
    # slow-drip:3 sends a 40 ms chunk every 120 ms: a real-time transport would
    # play it with gaps, but audio keeps coming well within stall_timeout, so
    # the failover does not step in (it watches gaps, not the real-time
    # factor). slow-drip:20 leaves 800 ms between chunks: a stall.
    sentence = "Just checking."
    async with providers() as p:
        p.cartesia.set_fault(f"slow-drip:{factor}")
        tts = failover(
            {"cartesia": p.service("cartesia_ws"), "elevenlabs": p.service("elevenlabs_ws")},
            store=store,
            first_audio_timeout="adaptive",
            hedge_after=0.3,
        )
        call = Call([sentence])
        call.watch(tts)
        await speak_call(tts, [sentence], call=call, sentence_timeout=10)
        elevenlabs = p.requests("elevenlabs_ws")

    assert call.words == call.expected_words
    if caught:
        assert call.failures == [("cartesia", FailureReason.STALLED)]
        # The first word was under way: it is heard in part, then whole.
        assert call.heard.missing == []
        assert [f.begins for f in call.heard.fragments] == [{"Just"}]
        assert elevenlabs == [sentence]
    else:
        assert call.failures == [] and elevenlabs == []
        assert call.heard.whole


#
# Regressions: real pipecat services the detector used to let through
#


@pytest.mark.parametrize(
    "primary,fault", [("cartesia_ws", "close-1011"), ("elevenlabs_ws", "error")]
)
async def test_socket_closed_mid_sentence_does_not_pass_the_rest_off_as_spoken(
    store, primary, fault
):
    # When the socket drops, pipecat reconnects and pushes the words it never
    # spoke as text, with no audio behind them. They used to count as heard:
    # the backup replayed the whole sentence and the context got it twice.
    # The break comes 120 ms into "Thanks": the backup says it again.
    backup: Kind = "elevenlabs_ws" if primary == "cartesia_ws" else "cartesia_ws"
    call, _, backup_requests = await call_with_fault(store, primary, backup, f"{fault}@1", "first")

    assert call.words == call.expected_words
    assert backup_requests[0] == SENTENCES[0]
    assert_heard_once_in_order(call, cut_short="Thanks")


@pytest.mark.parametrize("fault", ["stall:5000", "error:5000"])
async def test_provider_failing_after_the_last_word_is_not_heard_twice(store, fault):
    # The whole sentence came, then no end message (or an error): the caller
    # heard it all. It used to be failed and spoken again in full. After an
    # error pipecat's Cartesia service leaves the context open, so the next
    # sentence's context plays only once that one times out, and the next
    # error's stop frame comes out ahead of that sentence's audio: it used to
    # be taken for a context that ended with no audio.
    sentences = SENTENCES[:2]
    call, primary_requests, backup_requests = await call_with_fault(
        store, "cartesia_ws", "elevenlabs_ws", fault, "first", sentences
    )

    assert_heard_once_in_order(call)
    assert primary_requests == list(sentences)
    assert backup_requests == []
    assert call.failures == []


async def test_stall_outlasting_pipecats_own_stop_timer_is_still_a_stall(store):
    # pipecat's HTTP services end a sentence by themselves after
    # stop_frame_timeout_s (0.6 s here) without audio: stop frame, and the
    # unspoken words as text, as at a real end. A stall_timeout longer than
    # that used to let a stalled sentence pass as spoken, 120 ms of it heard.
    call, _, backup_requests = await call_with_fault(
        store, "elevenlabs_http", "cartesia_ws", "stall@1", "first", stall_timeout=2.0
    )

    assert call.failures == [("elevenlabs", FailureReason.STALLED)]
    assert backup_requests[0] == SENTENCES[0]
    assert_heard_once_in_order(call, cut_short="Thanks")


#
# Words around the break
#


async def test_word_cut_short_by_a_failing_provider_is_said_again(store):
    # The Cartesia emulator stops 120 ms into "Thanks" (360 ms long): the
    # caller hears its beginning, then the whole word from the backup.
    call, _, backup_requests = await call_with_fault(
        store, "cartesia_ws", "elevenlabs_ws", "stall@1", "first"
    )
    assert backup_requests[0] == SENTENCES[0]
    assert call.heard.missing == []
    assert [f.begins for f in call.heard.fragments] == [{"Thanks"}]
    assert call.words == call.expected_words


async def test_elevenlabs_failing_after_the_last_word_is_not_heard_twice(store):
    # pipecat's ElevenLabs service holds a sentence's last word until its
    # context ends; the emulator sends all the audio, then nothing: the audio
    # shows the last word was said, so it is not said again, and its text is
    # passed on for the context. With the alignment split across messages, as
    # the real API sends it, a word's text arrives near its end: where it
    # starts in the audio is read from its pts, not from when its text came.
    call, _, backup_requests = await call_with_fault(
        store, "elevenlabs_ws", "cartesia_ws", "stall:5000@1", "first"
    )
    assert call.heard.whole
    assert call.words == call.expected_words
    assert SENTENCES[0] not in backup_requests


def test_the_audio_oracle_tells_every_word_apart():
    # The emulators pick a word's pitch from a hash of it: two words of one
    # length and pitch sound alike, and the tests above could not tell them
    # apart. No two words used here share their first 25 ms.
    words = {
        w for s in [*SENTENCES, "Farewell and goodnight.", "Just checking."] for w in s.split()
    }
    starts = {reference(w)[:800] for w in words}
    assert len(starts) == len(words)
