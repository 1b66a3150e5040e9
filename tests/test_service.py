"""FailoverTTSService in real pipecat pipelines, with scripted pipecat TTS services as providers."""

import pytest
from pipecat.frames.frames import (
    AggregatedTextFrame,
    EndFrame,
    ErrorFrame,
    Frame,
    InterruptionFrame,
    LLMAssistantPushAggregationFrame,
    LLMFullResponseEndFrame,
    LLMFullResponseStartFrame,
    LLMTextFrame,
    StartFrame,
    TTSAudioRawFrame,
    TTSSpeakFrame,
    TTSStartedFrame,
    TTSStoppedFrame,
    TTSTextFrame,
    TTSUpdateSettingsFrame,
)
from pipecat.observers.base_observer import BaseObserver, FramePushed, ProcessorSetUp
from pipecat.processors.frame_processor import FrameDirection
from pipecat.services.settings import TTSSettings

from pipecat_tts_failover import (
    AdaptiveTimeout,
    FailoverTTSService,
    FailureReason,
    HealthPolicy,
    InMemoryHealthStore,
)
from pipecat_tts_failover import service as service_module
from pipecat_tts_failover.recovery import PROBE_TEXT
from tests.support.pipeline import FirstPushObserver, PipelineHarness
from tests.support.scripted import ScriptedTTSService, decode_audio, plan

SENTENCES = [
    "Thanks for calling Acme support.",
    "Your order shipped yesterday morning.",
    "It should arrive within three days.",
    "Is there anything else I can help with?",
]
VOCABULARY = [w for s in SENTENCES for w in s.split()]
ALL_WORDS = VOCABULARY

FAULT_REASONS = {
    "error": FailureReason.ERROR,
    "raise": FailureReason.EXCEPTION,
    "hang": FailureReason.NO_FIRST_AUDIO,
    "stall": FailureReason.STALLED,
    "empty": FailureReason.NO_AUDIO,
    "zeros": FailureReason.SILENT_AUDIO,
    "auth": FailureReason.AUTHENTICATION,
}


def providers(*fault_plans, **kwargs) -> dict[str, ScriptedTTSService]:
    names = ["primary", "secondary", "tertiary"]
    return {
        names[i]: ScriptedTTSService(provider_index=i, faults=p, name=names[i], **kwargs)
        for i, p in enumerate(fault_plans)
    }


# The fleet's ejection rule of version 0.1 (the first failure ejects), without
# confirmation probes: a probe is one more request to a scripted service, whose
# faults are planned per request. The health rules have tests of their own
# (tests/test_health.py).
FIRST_FAILURE_EJECTS = HealthPolicy(consecutive=1, confirm_probes=0, jitter=0.0)


def failover(services, store, **kwargs) -> FailoverTTSService:
    kwargs.setdefault("first_audio_timeout", 0.3)
    kwargs.setdefault("stall_timeout", 0.3)
    if "cooldown" not in kwargs:
        kwargs.setdefault("health", FIRST_FAILURE_EJECTS)
    return FailoverTTSService(services=services, store=store, **kwargs)


def heard(h: PipelineHarness) -> list[str]:
    return [word for word, _ in decode_audio(h.audio, VOCABULARY)]


def speakers(h: PipelineHarness) -> list[int]:
    return [index for _, index in decode_audio(h.audio, VOCABULARY)]


async def speak_all(tts, sentences=SENTENCES, **harness_kwargs) -> PipelineHarness:
    """Queue every sentence at once, as a bot that says several things in a row."""
    async with PipelineHarness(tts, **harness_kwargs) as h:
        await h.send(*(TTSSpeakFrame(s) for s in sentences))
    return h


async def speak_turns(tts, sentences=SENTENCES, **harness_kwargs) -> PipelineHarness:
    """Say each sentence once the one before it was spoken, as turns of a conversation."""
    async with PipelineHarness(tts, **harness_kwargs) as h:
        for i, sentence in enumerate(sentences):
            await h.send(TTSSpeakFrame(sentence))
            await h.wait_for(lambda i=i: len(h.of(TTSStoppedFrame)) > i)
    return h


#
# Every fault, at the first sentence and in the middle of a call
#


@pytest.mark.parametrize("fault", sorted(FAULT_REASONS))
@pytest.mark.parametrize("at", [0, 2], ids=["first-sentence", "mid-call"])
@pytest.mark.parametrize("websocket", [True, False], ids=["ws", "http"])
async def test_every_sentence_is_heard_once_in_order_when_primary_fails(
    store, fault, at, websocket
):
    # A stall comes after the first word; every other fault before any audio.
    words_before_fault = 1 if fault == "stall" else 0
    services = providers(
        plan({at: fault}), None, websocket=websocket, stall_after_words=words_before_fault
    )
    tts = failover(services, store)
    reasons = []

    @tts.event_handler("on_sentence_failed")
    async def on_failed(processor, provider_id, reason):
        reasons.append((provider_id, reason))

    h = await speak_all(tts)

    assert heard(h) == ALL_WORDS
    assert h.words == ALL_WORDS
    assert reasons == [("primary", FAULT_REASONS[fault])]
    # The primary spoke until it failed; the backup was asked for exactly what
    # the caller had not heard, from the first word not heard. (A WebSocket
    # service sends its requests without waiting for audio, as it would bare,
    # so the primary may have been asked for later sentences too, and a fault
    # on a later request can cut sentences it had not finished.)
    assert services["primary"].requests[: at + 1] == SENTENCES[: at + 1]
    by_primary = speakers(h).count(0)
    assert speakers(h) == [0] * by_primary + [1] * (len(ALL_WORDS) - by_primary)
    assert " ".join(services["secondary"].requests).split() == ALL_WORDS[by_primary:]
    most_by_primary = sum(len(s.split()) for s in SENTENCES[:at]) + words_before_fault
    assert by_primary <= most_by_primary
    if fault == "stall":
        # Speech before the stall was heard in full, and the rest resumed from
        # the first word not heard.
        assert by_primary == most_by_primary


async def test_healthy_primary_speaks_everything_and_backup_gets_nothing(store):
    services = providers(None, None)
    h = await speak_all(failover(services, store))
    assert heard(h) == ALL_WORDS
    assert set(speakers(h)) == {0}
    assert services["secondary"].requests == []
    assert not [f for f in h.up if isinstance(f, ErrorFrame)]


async def test_mid_sentence_stall_resumes_on_backup_from_first_unheard_word(store):
    services = providers(plan({1: "stall"}), None, stall_after_words=2)
    h = await speak_all(failover(services, store))

    assert heard(h) == ALL_WORDS
    assert h.words == ALL_WORDS
    assert services["secondary"].requests[0] == " ".join(SENTENCES[1].split()[2:])
    # The first two words of sentence two came from the primary, the rest from the backup.
    n0 = len(SENTENCES[0].split())
    assert speakers(h)[n0 : n0 + 3] == [0, 0, 1]


@pytest.mark.parametrize("at", [0, 1], ids=["first-sentence", "mid-call"])
@pytest.mark.parametrize("cut_after", [0.5, 2.3], ids=["first-word", "third-word"])
async def test_word_cut_mid_way_is_said_again_from_its_start(store, at, cut_after):
    # The primary stops part way through a word: the backup says that word
    # again, whole, and the rest of the sentence; a word cut at its start is
    # judged at a typical speech rate, a later one at the rate of the words
    # before it.
    services = providers(plan({at: "stall"}), None, stall_after_words=cut_after)
    h = await speak_all(failover(services, store), SENTENCES[: at + 2])

    failed = SENTENCES[at].split()
    cut = int(cut_after)
    assert services["secondary"].requests[0] == " ".join(failed[cut:])
    before = [w for s in SENTENCES[:at] for w in s.split()]
    # What the caller heard: the primary up to the middle of the cut word,
    # then that word again, whole, from the backup, and everything after it.
    assert heard(h) == before + failed[: cut + 1] + failed[cut:] + SENTENCES[at + 1].split()
    assert speakers(h).count(1) == len(failed) - cut + len(SENTENCES[at + 1].split())


async def test_first_word_is_judged_at_the_rate_the_provider_was_measured_at(store):
    # A fast provider (30 ms a character) stops right after the first word of
    # the second sentence: "Your" was said whole, in less audio than a typical
    # speaker needs for it; the rate measured on the first sentence tells so,
    # and the word is not said twice.
    # (the default health rules keep the primary in for the next call)
    services = providers(plan({1: "stall"}), None, stall_after_words=1, ms_per_char=30)
    keep = HealthPolicy(confirm_probes=0)
    h = await speak_all(failover(services, store, failure_threshold=2, health=keep), SENTENCES[:2])

    assert services["secondary"].requests == [" ".join(SENTENCES[1].split()[1:])]
    assert heard(h) == SENTENCES[0].split() + SENTENCES[1].split()
    assert h.words == SENTENCES[0].split() + SENTENCES[1].split()

    # The process remembers it: the next call's very first sentence is judged the same way.
    services = providers(plan({0: "stall"}), None, stall_after_words=1, ms_per_char=30)
    h = await speak_all(failover(services, store, failure_threshold=2, health=keep), SENTENCES[:1])
    assert services["secondary"].requests == [" ".join(SENTENCES[0].split()[1:])]
    assert heard(h) == SENTENCES[0].split()


async def test_mid_sentence_error_without_word_timestamps_replays_whole_sentence(store):
    services = providers(plan({1: "error"}), None, word_timestamps=False, stall_after_words=2)
    h = await speak_all(failover(services, store))

    # Without word timestamps nothing tells which words were heard: whole
    # sentences are spoken again, and the context records them once.
    assert h.words == ALL_WORDS
    replay = " ".join(services["secondary"].requests).split()
    start = len(ALL_WORDS) - len(replay)
    s0 = SENTENCES[0].split()
    assert ALL_WORDS[start:] == replay and start in (0, len(s0))
    # What of the primary's speech got out before its error depends on how far
    # its playback had got (at most two words of the failed sentence); the
    # replay follows whole.
    words = heard(h)
    before = words[: len(words) - len(replay)]
    assert words[len(before) :] == replay
    assert before == ALL_WORDS[: len(before)] and len(before) - start <= 2


async def test_downstream_sees_one_coherent_stream_per_sentence(store):
    services = providers(plan({0: "stall", 1: "hang"}), None, failure_threshold=2)
    tts = failover(services, store, failure_threshold=2)
    h = await speak_turns(tts, SENTENCES[:2])

    kinds = [
        type(f)
        for f in h.of(AggregatedTextFrame, TTSStartedFrame, TTSStoppedFrame)
        if not isinstance(f, TTSTextFrame)
    ]
    # Per sentence: one announcement, one started, one stopped; nothing from abandoned attempts.
    assert kinds == [AggregatedTextFrame, TTSStartedFrame, TTSStoppedFrame] * 2
    assert len(h.of(LLMAssistantPushAggregationFrame)) == 2
    for started, stopped in zip(h.of(TTSStartedFrame), h.of(TTSStoppedFrame)):
        assert started.context_id == stopped.context_id
    contexts = {f.context_id for f in h.of(TTSAudioRawFrame, TTSTextFrame)}
    assert contexts == {f.context_id for f in h.of(TTSStartedFrame)}
    assert heard(h) == SENTENCES[0].split() + SENTENCES[1].split()


async def test_observers_see_what_the_caller_hears_and_nothing_of_abandoned_attempts(store):
    # The primary speaks two words, then stalls: its started frame, its two
    # words and their audio were pushed inside its pipeline, but only the
    # words the caller heard, one started and one stopped frame may reach the
    # pipeline's observers (RTVI would tell the client the bot started
    # speaking once per attempt).
    services = providers(plan({0: "stall"}), None, stall_after_words=2)
    observer = FirstPushObserver()
    h = await speak_all(failover(services, store), SENTENCES[:1], observers=[observer])

    assert heard(h) == SENTENCES[0].split()
    assert len(observer.of(TTSStartedFrame)) == 1 and len(observer.of(TTSStoppedFrame)) == 1
    assert [f.text for f in observer.of(TTSTextFrame)] == SENTENCES[0].split()
    assert [f.id for f in observer.of(TTSAudioRawFrame)] == [f.id for f in h.audio]


class SetupAndPushObserver(BaseObserver):
    """Records which processors were set up, and who pushed each frame."""

    def __init__(self):
        super().__init__()
        self.set_up: list[object] = []
        self.pushed_by: set[object] = set()

    async def on_processor_setup(self, data: ProcessorSetUp):
        self.set_up.append(data.processor)

    async def on_push_frame(self, data: FramePushed):
        self.pushed_by.add(data.source)


@pytest.mark.parametrize("standby", ["warm", "cold"])
async def test_observers_are_told_of_the_providers_set_up_and_see_none_of_their_pushes(
    store, standby
):
    services = providers(plan({0: "hang"}), None)
    observer = SetupAndPushObserver()
    tts = failover(services, store, standby=standby)
    await speak_all(tts, SENTENCES[:2], observers=[observer])
    # Both services were set up and reported (the backup on its failover, when cold)...
    assert all(s in observer.set_up for s in services.values())
    # ...but no frame pushed by a provider's service was observed.
    assert observer.pushed_by and not observer.pushed_by & set(services.values())


_LIFECYCLE = (StartFrame, EndFrame)


class PushObserver(BaseObserver):
    """Records each frame pushed downstream, with who pushed it to whom."""

    def __init__(self):
        super().__init__()
        self.pushes: list[FramePushed] = []

    async def on_push_frame(self, data: FramePushed):
        if data.direction == FrameDirection.DOWNSTREAM:
            self.pushes.append(data)


@pytest.mark.parametrize("push_handler", [False, True])
async def test_observers_and_push_handlers_see_every_frame_the_caller_gets(store, push_handler):
    # Speech goes downstream on a lean path (downstream_push.py): observers must
    # still be told of every frame, from the wrapper to the next processor, in
    # order; with an on_before_push_frame handler registered, pipecat's own push runs.
    observer = PushObserver()
    tts = failover(providers(None, None), store)
    before: list[Frame] = []
    if push_handler:

        @tts.event_handler("on_before_push_frame")
        async def on_before_push_frame(processor, frame):
            before.append(frame)

    h = await speak_all(tts, SENTENCES[:2], observers=[observer])
    # The harness records what reaches downstream between the StartFrame and the EndFrame.
    by_wrapper = [
        d for d in observer.pushes if d.source is tts and not isinstance(d.frame, _LIFECYCLE)
    ]
    assert [d.frame for d in by_wrapper] == h.down
    assert h.audio and h.of(TTSTextFrame) and h.of(TTSStoppedFrame)
    assert all(d.destination is tts.next for d in by_wrapper)
    before = [f for f in before if not isinstance(f, _LIFECYCLE)]
    assert before == (h.down if push_handler else [])


async def test_the_end_of_a_call_waits_for_speech_that_keeps_coming_however_long(
    store, monkeypatch
):
    # An overloaded worker plays what is owed slower than real time: the end of
    # the call must wait while it comes out, not for a fixed time. Here speech
    # takes some 3 s to come out against 0.5 s the end waits with nothing coming.
    monkeypatch.setattr(service_module, "_END_OF_CALL_QUIET", 0.5)
    services = providers(None, None, pace=0.05)
    h = await speak_all(failover(services, store), SENTENCES[:2])
    assert heard(h) == " ".join(SENTENCES[:2]).split()
    assert set(speakers(h)) == {0}


async def test_late_audio_from_an_abandoned_attempt_never_reaches_the_caller(store):
    # The primary answers, but after the deadline: its audio arrives once the
    # sentence has moved, and must not be heard.
    services = providers(None, None)
    services["primary"].ttfb = 0.6
    h = await speak_all(failover(services, store, first_audio_timeout=0.2), SENTENCES[:1])
    assert set(speakers(h)) == {1}
    assert heard(h) == SENTENCES[0].split()


#
# Threshold, stickiness, the store
#


async def test_below_threshold_next_sentence_tries_primary_again(store):
    services = providers(plan({0: "hang"}), None)
    tts = failover(services, store, failure_threshold=2, health=HealthPolicy(confirm_probes=0))
    h = await speak_turns(tts)
    assert heard(h) == ALL_WORDS
    assert services["primary"].requests == SENTENCES
    assert services["secondary"].requests == SENTENCES[:1]
    assert (await store.get(["primary"]))["primary"].down_until is None


async def test_after_threshold_call_stays_on_backup_and_store_marks_primary_down(store):
    services = providers(plan({0: "hang", 1: "error"}), None, stall_after_words=0)
    tts = failover(
        services,
        store,
        failure_threshold=2,
        health=HealthPolicy(consecutive=2, confirm_probes=0, jitter=0.0),
    )
    moves = []

    @tts.event_handler("on_failover")
    async def on_failover(processor, from_id, to_id, reason):
        moves.append((from_id, to_id, reason))

    h = await speak_turns(tts)
    assert heard(h) == ALL_WORDS
    assert services["primary"].requests == SENTENCES[:2]
    assert services["secondary"].requests == SENTENCES
    assert moves == [
        ("primary", "secondary", FailureReason.NO_FIRST_AUDIO),
        ("primary", "secondary", FailureReason.ERROR),
    ]
    assert tts.active_provider == "secondary"
    health = await store.get(["primary", "secondary"])
    assert health["primary"].down_until is not None
    assert health["primary"].reason is FailureReason.ERROR
    assert health["secondary"].down_until is None


async def test_permanent_error_moves_the_call_at_once_whatever_the_threshold(store):
    services = providers(plan({0: "auth"}), None)
    tts = failover(services, store, failure_threshold=5)
    h = await speak_all(tts)
    assert heard(h) == ALL_WORDS
    assert services["primary"].requests == SENTENCES[:1]
    assert (await store.get(["primary"]))["primary"].reason is FailureReason.AUTHENTICATION


async def test_next_call_starts_on_healthy_provider_until_cooldown_ends():
    now = [1000.0]
    store = InMemoryHealthStore(clock=lambda: now[0])
    policy = HealthPolicy(consecutive=1, confirm_probes=0, jitter=0.0, ejection=60)
    first = providers(plan(every="hang"), None)
    await speak_all(failover(first, store, health=policy), SENTENCES[:1])

    second = providers(None, None)
    tts = failover(second, store, health=policy)
    h = await speak_all(tts, SENTENCES[:2])
    assert tts.active_provider == "secondary"
    # No caller's words went to the primary while it was down (recovery may
    # have probed it through this call's idle service).
    assert [r for r in second["primary"].requests if r != PROBE_TEXT] == []
    assert heard(h) == SENTENCES[0].split() + SENTENCES[1].split()

    now[0] += 61
    third = providers(None, None)
    await speak_all(failover(third, store), SENTENCES[:1])
    assert third["primary"].requests == SENTENCES[:1]
    assert third["secondary"].requests == []


async def test_default_store_is_shared_by_the_process():
    from pipecat_tts_failover.store.memory import default_store

    default_store().reset()
    try:
        first = providers(plan(every="auth"), None)
        await speak_all(FailoverTTSService(services=first, first_audio_timeout=0.3), SENTENCES[:1])
        second = providers(None, None)
        await speak_all(FailoverTTSService(services=second), SENTENCES[:1])
        assert second["primary"].requests == []
    finally:
        default_store().reset()


#
# Three providers, both directions
#


async def test_three_providers_cascade_to_the_first_that_speaks(store):
    services = providers(plan(every="hang"), plan(every="error"), None, stall_after_words=0)
    tts = failover(services, store)
    moves = []

    @tts.event_handler("on_failover")
    async def on_failover(processor, from_id, to_id, reason):
        moves.append((from_id, to_id))

    h = await speak_turns(tts)
    assert heard(h) == ALL_WORDS
    assert set(speakers(h)) == {2}
    assert moves == [("primary", "secondary"), ("secondary", "tertiary")]
    assert services["primary"].requests == SENTENCES[:1]
    assert services["secondary"].requests == SENTENCES[:1]
    assert tts.active_provider == "tertiary"


async def test_failover_runs_back_the_other_way_in_preference_order(store):
    # The same three services, preferred the other way round.
    services = providers(None, None, plan(every="hang"))
    reordered = {k: services[k] for k in ("tertiary", "secondary", "primary")}
    tts = failover(reordered, store)
    h = await speak_all(tts)
    assert heard(h) == ALL_WORDS
    assert set(speakers(h)) == {1}
    assert services["primary"].requests == []
    assert tts.active_provider == "secondary"


#
# Every provider down
#


async def test_all_providers_failing_a_sentence_reports_and_the_call_goes_on(store):
    services = providers(plan({0: "hang"}), plan({0: "error"}), stall_after_words=0)
    tts = failover(services, store, failure_threshold=3)
    unspoken = []

    @tts.event_handler("on_all_providers_failed")
    async def on_all_failed(processor, text):
        unspoken.append(text)

    h = await speak_turns(tts)
    assert unspoken == [SENTENCES[0]]
    errors = [f for f in h.up if isinstance(f, ErrorFrame)]
    assert len(errors) == 1 and not errors[0].fatal
    assert errors[0].processor is tts and tts.is_usable
    # Each provider's own error is in the message.
    assert "primary (no_first_audio)" in errors[0].error
    assert "secondary (error: scripted provider error message)" in errors[0].error
    # The next sentence tried the primary again and the call went on.
    assert heard(h) == [w for s in SENTENCES[1:] for w in s.split()]
    assert h.words == heard(h)


#
# Interruptions
#


async def test_interruption_during_failover_cancels_the_replay(store):
    services = providers(plan({0: "hang"}), None, pace=0.02)
    tts = failover(services, store, first_audio_timeout=0.2)
    async with PipelineHarness(tts) as h:
        await h.send(TTSSpeakFrame(SENTENCES[1]))
        # The replay on the backup has started playing...
        await h.wait_for(lambda: len(h.audio) >= 2)
        await h.send(InterruptionFrame())
        await h.wait_for(lambda: h.of(InterruptionFrame))
        cut = len(h.down)
        # ...and after the interruption a new sentence plays normally.
        await h.send(TTSSpeakFrame(SENTENCES[2]))
    before, after = h.down[:cut], h.down[cut:]
    heard_before = decode_audio([f for f in before if isinstance(f, TTSAudioRawFrame)], VOCABULARY)
    heard_after = decode_audio([f for f in after if isinstance(f, TTSAudioRawFrame)], VOCABULARY)
    # The replay was cut short by the interruption, and nothing of it came after.
    assert 0 < len(heard_before) < len(SENTENCES[1].split())
    assert {index for _, index in heard_before} == {1}
    assert [w for w, _ in heard_after] == SENTENCES[2].split()
    assert [w for f in after if isinstance(f, TTSTextFrame) for w in f.text.split()] == SENTENCES[
        2
    ].split()


#
# Streamed LLM output
#


async def test_streamed_llm_reply_fails_over_sentence_by_sentence(store):
    services = providers(plan({1: "stall"}), None, stall_after_words=1)
    tts = failover(services, store)
    reply = " ".join(SENTENCES)
    tokens = [reply[i : i + 7] for i in range(0, len(reply), 7)]
    async with PipelineHarness(tts) as h:
        await h.send(LLMFullResponseStartFrame(), *(LLMTextFrame(t) for t in tokens))
        await h.send(LLMFullResponseEndFrame())

    assert heard(h) == ALL_WORDS
    assert h.words == ALL_WORDS
    # One reply: one started and one stopped frame, around everything, and no
    # push-aggregation frame (the reply's end frame does that job).
    assert len(h.of(TTSStartedFrame)) == 1 and len(h.of(TTSStoppedFrame)) == 1
    assert not h.of(LLMAssistantPushAggregationFrame)
    order = [
        type(f) for f in h.of(LLMFullResponseStartFrame, TTSStoppedFrame, LLMFullResponseEndFrame)
    ]
    assert order == [LLMFullResponseStartFrame, TTSStoppedFrame, LLMFullResponseEndFrame]
    assert all(f.append_to_context for f in h.of(TTSTextFrame))
    assert services["secondary"].requests[0] == SENTENCES[1].split(maxsplit=1)[1]


#
# Sample rates
#


async def test_each_provider_s_audio_passes_at_its_own_rate_as_it_would_bare(store):
    # The primary (24 kHz) is cut after two words; the backup (22.05 kHz) says
    # the rest. As with the bare services, each frame keeps its provider's
    # rate (the output transport resamples), its bytes untouched, none lost.
    services = {
        "primary": ScriptedTTSService(
            provider_index=0, faults=plan({0: "stall"}), stall_after_words=2, sample_rate=24000
        ),
        "secondary": ScriptedTTSService(provider_index=1, sample_rate=22050),
    }
    # The primary must speak its two words however loaded the machine: only its
    # stall is under test, so its first audio gets a generous deadline.
    tts = failover(services, store, first_audio_timeout=2.0)
    h = await speak_all(tts, SENTENCES[:1], audio_out_sample_rate=16000)
    assert heard(h) == SENTENCES[0].split()
    rates = [f.sample_rate for f in h.audio]
    assert set(rates) == {24000, 22050} and rates == sorted(rates, reverse=True)
    for rate, index in ((24000, 0), (22050, 1)):
        seconds = sum(len(f.audio) for f in h.audio if f.sample_rate == rate) / 2 / rate
        words = [w for w, i in decode_audio(h.audio, VOCABULARY) if i == index]
        assert abs(seconds - sum(len(w) for w in words) * 0.06) < 0.002


def test_bad_configuration_fails_at_construction():
    a, b = ScriptedTTSService(), ScriptedTTSService()
    pair = {"a": a, "b": b}
    with pytest.raises(ValueError, match="at least two"):
        FailoverTTSService(services=[])
    with pytest.raises(ValueError, match="at least two"):
        FailoverTTSService(services=[a])
    with pytest.raises(ValueError, match="twice"):
        FailoverTTSService(services={"Cartesia": a, "cartesia ": b})
    with pytest.raises(ValueError, match="twice"):
        FailoverTTSService(services=[a, a])
    with pytest.raises(TypeError, match="not a pipecat TTSService"):
        FailoverTTSService(services=[a, object()])
    with pytest.raises(TypeError, match="dict of id to TTSService"):
        FailoverTTSService(services="cartesia")
    for kwarg in ("first_audio_timeout", "stall_timeout", "cooldown"):
        with pytest.raises(ValueError, match=kwarg):
            FailoverTTSService(services=pair, **{kwarg: -1})
        wrong_type = ValueError if kwarg == "first_audio_timeout" else TypeError  # or "adaptive"
        with pytest.raises(wrong_type, match=kwarg):
            FailoverTTSService(services=pair, **{kwarg: "1s"})
    with pytest.raises(ValueError, match="failure_threshold"):
        FailoverTTSService(services=pair, failure_threshold=0)
    with pytest.raises(TypeError, match="store"):
        FailoverTTSService(services=pair, store={})
    with pytest.raises(ValueError, match="silence_floor"):
        FailoverTTSService(services=pair, silence_floor=-1)
    with pytest.raises(TypeError, match="prefer_faster"):
        FailoverTTSService(services=pair, prefer_faster="no")
    with pytest.raises(ValueError, match="adaptive_timeout"):
        FailoverTTSService(services=pair, adaptive_timeout=AdaptiveTimeout())
    with pytest.raises(TypeError, match=r"probes\['a'\]"):
        FailoverTTSService(services=pair, probes={"a": "notaprobe"})
    with pytest.raises(ValueError, match="probe_backoff_max"):
        FailoverTTSService(services=pair, probe_backoff=10, probe_backoff_max=1)


def test_provider_ids_are_normalized_and_derived_from_service_classes():
    from pipecat.services.cartesia.tts import CartesiaHttpTTSService, CartesiaTTSService
    from pipecat.services.elevenlabs.tts import ElevenLabsTTSService

    tts = FailoverTTSService(
        services={" Eleven_Labs ": ScriptedTTSService(), "backup-ONE": ScriptedTTSService()}
    )
    assert tts.provider_ids == ["eleven-labs", "backup-one"]

    cartesia = CartesiaTTSService(api_key="k", settings=CartesiaTTSService.Settings(voice="v"))
    eleven = ElevenLabsTTSService(api_key="k", settings=ElevenLabsTTSService.Settings(voice="v"))
    assert FailoverTTSService(services=[cartesia, eleven]).provider_ids == [
        "cartesia",
        "elevenlabs",
    ]
    http = CartesiaHttpTTSService(api_key="k", settings=CartesiaHttpTTSService.Settings(voice="v"))
    eleven = ElevenLabsTTSService(api_key="k", settings=ElevenLabsTTSService.Settings(voice="v"))
    assert FailoverTTSService(services=[eleven, http]).provider_ids == ["elevenlabs", "cartesia"]
    # An unknown class keeps its own name, never another provider's.
    http = CartesiaHttpTTSService(api_key="k", settings=CartesiaHttpTTSService.Settings(voice="v"))
    assert FailoverTTSService(services=[ScriptedTTSService(), http]).provider_ids == [
        "scripted",
        "cartesia",
    ]


def test_one_service_cannot_serve_two_failover_services():
    shared = ScriptedTTSService()
    FailoverTTSService(services={"a": shared, "b": ScriptedTTSService()})
    with pytest.raises(ValueError, match="already held by"):
        FailoverTTSService(services={"a": shared, "c": ScriptedTTSService()})


#
# Listeners (alerters, metrics)
#


class Recorder:
    def __init__(self):
        self.events = []

    def on_event(self, event):
        self.events.append(event)


async def test_listeners_hear_attempts_failovers_and_one_mark_down(store):
    from pipecat_tts_failover.events import FailedOver, ProviderDown, SentenceAttempted

    services = providers(plan({0: "error"}), None, stall_after_words=0)
    recorder = Recorder()
    tts = failover(services, store, alerters=[recorder])
    await speak_all(tts, SENTENCES[:2])
    attempts = [
        (e.provider_id, e.outcome) for e in recorder.events if isinstance(e, SentenceAttempted)
    ]
    assert attempts == [("primary", "error"), ("secondary", "spoken"), ("secondary", "spoken")]
    [hop] = [e for e in recorder.events if isinstance(e, FailedOver)]
    assert (hop.from_id, hop.to_id, hop.reason) == ("primary", "secondary", FailureReason.ERROR)
    assert 0 < hop.gap_seconds < 0.3
    [down] = [e for e in recorder.events if isinstance(e, ProviderDown)]
    assert (down.provider_id, down.reason, down.failed_sentences) == (
        "primary",
        FailureReason.ERROR,
        1,
    )
    assert down.error == "scripted provider error message"

    # The next call starts on the backup: nothing new to report.
    again = providers(plan({0: "error"}), None, stall_after_words=0)
    recorder2 = Recorder()
    await speak_all(failover(again, store, alerters=[recorder2]), SENTENCES[:1])
    assert not [e for e in recorder2.events if isinstance(e, ProviderDown)]


def test_listeners_must_have_on_event():
    with pytest.raises(TypeError, match="on_event"):
        FailoverTTSService(services=providers(None, None), alerters=[object()])


async def test_the_last_provider_left_is_given_longer_before_the_sentence_is_lost(store):
    # The backup answers after 1.5 x first_audio_timeout: a first provider that
    # slow would be abandoned, but nothing comes after the backup.
    services = providers(plan(every="hang"), None)
    services["secondary"].ttfb = 0.45
    h = await speak_all(failover(services, store, first_audio_timeout=0.3), SENTENCES[:1])
    assert heard(h) == SENTENCES[0].split()
    assert not [f for f in h.up if isinstance(f, ErrorFrame)]


#
# Standby
#


class _CountingStarts(ScriptedTTSService):
    """A scripted service that counts how often pipecat set it up and started it.

    pipecat's WebSocket services connect when they are set up: a session each.
    """

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.starts = 0

    async def setup(self, setup):
        self.starts += 1
        await super().setup(setup)

    async def start(self, frame):
        assert self.starts, "started before it was set up"
        await super().start(frame)


@pytest.mark.parametrize("standby", ["warm", "cold"])
async def test_cold_standby_starts_the_backup_only_when_it_is_needed(store, standby):
    healthy = {
        "primary": _CountingStarts(provider_index=0, name="primary"),
        "secondary": _CountingStarts(provider_index=1, name="secondary"),
    }
    h = await speak_all(failover(healthy, store, standby=standby), SENTENCES[:2])
    assert heard(h) == SENTENCES[0].split() + SENTENCES[1].split()
    assert healthy["primary"].starts == 1
    # Warm: every call holds a session with the idle backup; cold: none.
    assert healthy["secondary"].starts == (1 if standby == "warm" else 0)

    failing = {
        "primary": _CountingStarts(provider_index=0, name="primary", faults=plan({1: "hang"})),
        "secondary": _CountingStarts(provider_index=1, name="secondary"),
    }
    h = await speak_turns(failover(failing, InMemoryHealthStore(), standby=standby))
    # Cold, the backup is started at the failover, and the caller still hears everything once.
    assert heard(h) == ALL_WORDS
    assert failing["secondary"].starts == 1


class _Events:
    """A listener that keeps every failover event."""

    def __init__(self):
        self.events: list = []

    def on_event(self, event):
        self.events.append(event)


def _factory(built: list, **kwargs):
    """A factory of a scripted service that keeps what it built."""

    def make() -> ScriptedTTSService:
        built.append(_CountingStarts(**kwargs))
        return built[-1]

    return make


@pytest.mark.parametrize("standby", ["warm", "cold"])
async def test_a_provider_given_as_a_factory_is_built_when_the_call_first_needs_it(store, standby):
    built: list[_CountingStarts] = []
    services = {
        "primary": ScriptedTTSService(provider_index=0, name="primary"),
        "secondary": _factory(built, provider_index=1, name="secondary"),
    }
    tts = failover(services, store, standby=standby)
    # Warm: built with the processor, as a service given as such would be.
    assert len(built) == (1 if standby == "warm" else 0)
    h = await speak_all(tts, SENTENCES[:2])
    assert heard(h) == SENTENCES[0].split() + SENTENCES[1].split()
    # Cold, a healthy call never builds its backup.
    assert len(built) == (1 if standby == "warm" else 0)
    assert list(tts.services) == (["primary", "secondary"] if standby == "warm" else ["primary"])
    assert tts.processors == list(tts.services.values())

    built.clear()
    services = {
        "primary": ScriptedTTSService(provider_index=0, name="primary", faults=plan({1: "hang"})),
        "secondary": _factory(built, provider_index=1, name="secondary"),
    }
    tts = failover(services, InMemoryHealthStore(), standby=standby)
    h = await speak_turns(tts)
    # Built once, at the failover when cold; the caller hears everything once.
    assert heard(h) == ALL_WORDS
    assert len(built) == 1 and built[0].starts == 1
    assert tts.services["secondary"] is built[0]


@pytest.mark.parametrize("made", ["raises", "not-a-service"])
async def test_a_factory_that_gives_no_service_leaves_its_provider_out_of_the_call(store, made):
    # The primary fails the second sentence; the secondary's factory fails; the
    # tertiary speaks what is owed at once (no first-audio deadline spent on a
    # provider with no service), and the secondary's health is not touched.
    def secondary():
        if made == "raises":
            raise RuntimeError("CARTESIA_API_KEY is not set")
        return object()

    events = _Events()
    services = {
        "primary": ScriptedTTSService(provider_index=0, name="primary", faults=plan({1: "error"})),
        "secondary": secondary,
        "tertiary": ScriptedTTSService(provider_index=2, name="tertiary"),
    }
    # A first-audio deadline longer than speak_turns waits for a sentence.
    tts = failover(services, store, standby="cold", alerters=[events], first_audio_timeout=10)
    h = await speak_turns(tts, SENTENCES[:3])
    assert heard(h) == [w for s in SENTENCES[:3] for w in s.split()]
    assert [who for _, who in decode_audio(h.audio, VOCABULARY)][-1] == 2
    assert "secondary" not in tts.services
    assert not [f for f in h.up if isinstance(f, ErrorFrame)]
    health = await store.get(["secondary"])
    assert health["secondary"].down_until is None
    excused = [e for e in events.events if type(e).__name__ == "FailureExcused"]
    assert [(e.provider_id, e.cause) for e in excused] == [("secondary", "no_service")]


async def test_all_providers_failing_name_a_factory_that_gave_no_service(store):
    def secondary():
        raise RuntimeError("CARTESIA_API_KEY is not set")

    services = {
        "primary": ScriptedTTSService(provider_index=0, name="primary", faults=plan({0: "error"})),
        "secondary": secondary,
    }
    async with PipelineHarness(failover(services, store, standby="cold")) as h:
        await h.send(TTSSpeakFrame(SENTENCES[0]))
        await h.wait_for(lambda: any(isinstance(f, ErrorFrame) for f in h.up))
    errors = [f for f in h.up if isinstance(f, ErrorFrame)]
    assert len(errors) == 1
    assert "secondary (unusable: CARTESIA_API_KEY is not set)" in errors[0].error


async def test_settings_sent_before_a_factory_is_called_reach_the_service_it_builds(store):
    built: list[_CountingStarts] = []
    services = {
        "primary": ScriptedTTSService(provider_index=0, name="primary", faults=plan({1: "hang"})),
        "secondary": _factory(built, provider_index=1, name="secondary"),
    }
    tts = failover(services, store, standby="cold")
    async with PipelineHarness(tts) as h:
        await h.send(
            TTSUpdateSettingsFrame(delta=TTSSettings(voice="calm"), reach_inactive_services=True)
        )
        for i, sentence in enumerate(SENTENCES[:2]):
            await h.send(TTSSpeakFrame(sentence))
            await h.wait_for(lambda i=i: len(h.of(TTSStoppedFrame)) > i)
    assert len(built) == 1
    assert tts.services["primary"]._settings.voice == "calm"
    assert built[0]._settings.voice == "calm"


def test_a_factory_needs_a_provider_id_and_warm_standby_calls_it_at_once():
    with pytest.raises(TypeError, match="factory needs a provider id"):
        FailoverTTSService(services=[ScriptedTTSService(), lambda: ScriptedTTSService()])
    with pytest.raises(TypeError, match="not a pipecat TTSService"):
        FailoverTTSService(services={"a": ScriptedTTSService(), "b": ScriptedTTSService})

    def broken():
        raise RuntimeError("no key")

    # Warm standby builds every service with the processor: a broken factory fails here.
    with pytest.raises(RuntimeError, match="no key"):
        FailoverTTSService(services={"a": ScriptedTTSService(), "b": broken})
    with pytest.raises(TypeError, match="returned int"):
        FailoverTTSService(services={"a": ScriptedTTSService(), "b": lambda: 3})
    a = ScriptedTTSService()
    with pytest.raises(ValueError, match="returned another provider's service"):
        FailoverTTSService(services={"a": a, "b": lambda: a})


def test_standby_must_be_warm_or_cold():
    with pytest.raises(ValueError, match="standby"):
        FailoverTTSService(services=providers(None, None), standby="hot")
