"""Drop-in fidelity: on a healthy call, FailoverTTSService's stream is the wrapped service's own.

Each scenario runs twice: once through a pipecat TTS service alone (bare),
once through ``FailoverTTSService(services={"primary": svc, "backup": <an
identical second instance>})`` with both providers healthy (wrapped). The
frames that reach either end of the pipeline must be the same, line for line
(see ``tests/support/conformance.py`` for what is normalized: pts as offsets
from the first word, context ids as c0, c1...). Each test first checks that
the bare run shows the behaviour it is about, so a scenario that stopped
exercising it fails rather than passing on two empty streams.

The scenarios follow pipecat's own TTS tests (``tests/test_tts_frame_ordering.py``,
``test_processor_usable_gating.py``) and the points of issue 12; those about
a provider run pipecat's real Cartesia and ElevenLabs services against the
emulators.
"""

import contextlib
import re
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass

import aiohttp
import pytest
from pipecat.frames.frames import (
    AggregatedTextFrame,
    AggregatedTextProgressFrame,
    DataFrame,
    Frame,
    LLMAssistantPushAggregationFrame,
    LLMFullResponseEndFrame,
    LLMFullResponseStartFrame,
    LLMTextFrame,
    TTSAudioRawFrame,
    TTSSpeakFrame,
    TTSStartedFrame,
    TTSStoppedFrame,
    TTSTextFrame,
)
from pipecat.pipeline.pipeline import Pipeline
from pipecat.processors.aggregators.llm_text_processor import LLMTextProcessor
from pipecat.processors.frame_processor import FrameProcessor
from pipecat.services.tts_service import TextAggregationMode, TTSService
from pipecat.utils.errors import ErrorCategory
from pipecat.utils.text.base_text_aggregator import TextType
from pipecat.utils.text.pattern_pair_aggregator import MatchAction, PatternPairAggregator

from pipecat_tts_failover.testing import CartesiaEmulator, ElevenLabsEmulator
from tests.support.conformance import (
    WORD_SECONDS,
    FakeTTSService,
    Recording,
    Step,
    assert_same_frames,
    count,
    frame_signature,
    requested,
    run,
    spoken_words,
    until,
    wrap,
)
from tests.support.integration import Providers
from tests.support.scripted import decode_audio

TRANSPORTS = ["http", "ws"]


@dataclass
class MarkerFrame(DataFrame):
    """An application's own frame, to see where it comes out among the TTS frames."""

    label: str = ""


def reply(*texts: str) -> list[Frame]:
    """An LLM reply streaming ``texts``."""
    return [
        LLMFullResponseStartFrame(),
        *(LLMTextFrame(t) for t in texts),
        LLMFullResponseEndFrame(),
    ]


@dataclass
class Runs:
    """The same scenario bare and wrapped, and the services that spoke it."""

    bare: Recording
    wrapped: Recording
    service: TTSService
    primary: TTSService
    backup: TTSService


async def bare_and_wrapped(
    make: Callable[[], TTSService],
    steps: Callable[[TTSService], Sequence[Step]],
    *,
    front: Callable[[], FrameProcessor] | None = None,
    sample_rate: int = 16000,
) -> Runs:
    """Run ``steps`` through ``make()`` alone, then through two ``make()`` inside FailoverTTSService.

    Args:
        make: Builds a fresh, identical service.
        steps: The scenario, given the service that speaks it (for waits on its requests).
        front: Builds a processor to put before the TTS in both runs.
        sample_rate: The pipeline's output sample rate.
    """

    def chain(tts: FrameProcessor) -> FrameProcessor:
        return Pipeline([front(), tts]) if front else tts

    service = make()
    bare = await run(chain(service), steps(service), sample_rate=sample_rate)
    primary, backup = make(), make()
    wrapped = await run(chain(wrap(primary, backup)), steps(primary), sample_rate=sample_rate)
    return Runs(bare, wrapped, service, primary, backup)


def index_of(frames: Sequence[Frame], frame: Frame) -> int:
    return next(i for i, f in enumerate(frames) if f is frame)


#
# Frame types and order
#


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_speak_frames_and_app_frames_keep_their_order(transport):
    runs = await bare_and_wrapped(
        lambda: FakeTTSService(transport=transport),
        lambda svc: [
            TTSSpeakFrame("one two", append_to_context=False),
            MarkerFrame("1"),
            TTSSpeakFrame("three four", append_to_context=False),
            MarkerFrame("2"),
            until(count(MarkerFrame, at_least=2)),
        ],
    )
    down = runs.bare.down
    kinds = [
        type(f) for f in down if isinstance(f, (TTSStartedFrame, TTSStoppedFrame, MarkerFrame))
    ]
    assert kinds == [TTSStartedFrame, TTSStoppedFrame, MarkerFrame] * 2
    assert_same_frames(runs.bare, runs.wrapped)


#
# 1. Skipped text types, with a pattern aggregator in front
#


def code_aggregator() -> LLMTextProcessor:
    aggregator = PatternPairAggregator().add_pattern(
        "code", "<code>", "</code>", action=MatchAction.AGGREGATE
    )
    return LLMTextProcessor(text_aggregator=aggregator)


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_skipped_code_passes_through_unspoken_after_the_words_before_it(transport):
    runs = await bare_and_wrapped(
        lambda: FakeTTSService(transport=transport, skip_text_types=["code"]),
        lambda svc: [
            *reply("Here it is. ", "<code>print(1)</code>", " Run it now."),
            until(count(LLMFullResponseEndFrame)),
        ],
        front=code_aggregator,
    )
    down = runs.bare.down
    code = [f for f in runs.bare.of(AggregatedTextFrame) if f.text_type == "code"]
    assert len(code) == 1 and "print(1)" in code[0].text
    assert code[0].skip_tts and code[0].append_to_context
    assert "print(1)" not in " ".join(runs.service.requests)
    it_is = next(f for f in runs.bare.of(TTSTextFrame) if f.text == "is.")
    assert index_of(down, code[0]) > index_of(down, it_is)
    assert_same_frames(runs.bare, runs.wrapped)
    assert "print(1)" not in " ".join(runs.primary.requests + runs.backup.requests)


#
# 2. One word timestamp covering two sentences
#


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_word_timestamp_spanning_two_sentences_gives_each_its_word_once(transport):
    runs = await bare_and_wrapped(
        lambda: FakeTTSService(transport=transport, word_times=[[("abcdef", 0.0)], []]),
        lambda svc: [
            LLMFullResponseStartFrame(),
            AggregatedTextFrame("abc", TextType.SENTENCE),
            AggregatedTextFrame("def", TextType.SENTENCE),
            LLMFullResponseEndFrame(),
            until(count(LLMFullResponseEndFrame)),
        ],
    )
    assert runs.bare.words == ["abc", "def"]
    assert_same_frames(runs.bare, runs.wrapped)


#
# 3. pts of the push-aggregation, stop and reply-end frames
#


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_push_aggregation_frame_keeps_its_pts_and_place(transport):
    runs = await bare_and_wrapped(
        lambda: FakeTTSService(transport=transport),
        lambda svc: [
            TTSSpeakFrame("hello there world", append_to_context=True),
            until(count(LLMAssistantPushAggregationFrame)),
        ],
    )
    (push,) = runs.bare.of(LLMAssistantPushAggregationFrame)
    last_word = max(f.pts for f in runs.bare.of(TTSTextFrame))
    assert push.pts is not None and push.pts > last_word
    assert_same_frames(runs.bare, runs.wrapped)


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_stop_and_reply_end_frames_carry_the_last_words_pts(transport):
    runs = await bare_and_wrapped(
        lambda: FakeTTSService(transport=transport),
        lambda svc: [
            *reply("One two three. ", "Four five six."),
            until(count(LLMFullResponseEndFrame)),
        ],
    )
    last_word = runs.bare.of(TTSTextFrame)[-1].pts
    assert last_word
    assert [f.pts for f in runs.bare.of(TTSStoppedFrame)] == [last_word]
    assert [f.pts for f in runs.bare.of(LLMFullResponseEndFrame)] == [last_word]
    assert_same_frames(runs.bare, runs.wrapped)


#
# 4. raw_text
#


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_raw_text_reaches_the_word_frames(transport):
    runs = await bare_and_wrapped(
        lambda: FakeTTSService(transport=transport),
        lambda svc: [
            LLMFullResponseStartFrame(),
            AggregatedTextFrame("4111 1111", TextType.SENTENCE, raw_text="<card>4111 1111</card>"),
            LLMFullResponseEndFrame(),
            until(count(LLMFullResponseEndFrame)),
        ],
    )
    words = runs.bare.of(TTSTextFrame)
    assert [(f.text, f.raw_text) for f in words] == [
        ("4111", "<card>4111"),
        ("1111", "1111</card>"),
    ]
    assert_same_frames(runs.bare, runs.wrapped)


#
# 5. Token streaming
#


async def test_token_mode_sends_each_token_as_it_streams():
    runs = await bare_and_wrapped(
        lambda: FakeTTSService(transport="ws", text_aggregation_mode=TextAggregationMode.TOKEN),
        lambda svc: [
            LLMFullResponseStartFrame(),
            LLMTextFrame("Hi"),
            # The provider has the first token, and has spoken it, before the second is sent.
            requested(svc, 1, timeout=2.0),
            until(count(TTSAudioRawFrame), timeout=2.0),
            LLMTextFrame(" there."),
            requested(svc, 2, timeout=2.0),
            LLMFullResponseEndFrame(),
            until(count(LLMFullResponseEndFrame)),
        ],
    )
    assert runs.service.requests == ["Hi", " there."]
    assert runs.bare.words == ["Hi", "there."]
    assert runs.primary.requests == runs.service.requests
    assert_same_frames(runs.bare, runs.wrapped)


async def test_token_mode_inline_markup_tracks_progress_word_by_word():
    runs = await bare_and_wrapped(
        lambda: FakeTTSService(
            transport="ws",
            text_aggregation_mode=TextAggregationMode.TOKEN,
            tags=[("<spell>", "</spell>")],
        ),
        lambda svc: [
            *reply("I", " love", " to count <spell>", "1234</spell>."),
            until(count(LLMFullResponseEndFrame)),
        ],
    )
    progress = [f.accumulated_text for f in runs.bare.of(AggregatedTextProgressFrame)]
    assert progress[:4] == ["I", "I love", "I love to", "I love to count"]
    assert_same_frames(runs.bare, runs.wrapped)


#
# 6. No word timestamps: each text after its audio
#


async def test_text_without_word_timestamps_comes_after_its_audio():
    runs = await bare_and_wrapped(
        lambda: FakeTTSService(transport="http", word_timestamps=False),
        lambda svc: [
            *reply("Hello there. ", "How are you?"),
            until(count(LLMFullResponseEndFrame)),
        ],
    )
    down = runs.bare.down
    texts = runs.bare.of(TTSTextFrame)
    assert [f.text for f in texts] == ["Hello there.", "How are you?"]
    for text in texts:
        assert isinstance(down[index_of(down, text) - 1], TTSAudioRawFrame)
    assert_same_frames(runs.bare, runs.wrapped)


#
# 7. Errors
#


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_failing_text_transform_stays_the_applications_error(transport):
    async def failing_transform(text: str, text_type: str) -> str:
        raise ValueError("the glossary service is down")

    runs = await bare_and_wrapped(
        lambda: FakeTTSService(transport=transport, text_transforms=[("*", failing_transform)]),
        lambda svc: [
            TTSSpeakFrame("hello world"),
            until(lambda r: bool(r.errors)),
            TTSSpeakFrame("hello again"),
            until(lambda r: len(r.errors) >= 2),
        ],
    )
    assert [e.category for e in runs.bare.errors] == [ErrorCategory.APPLICATION] * 2
    assert runs.bare.of(TTSAudioRawFrame) == []
    assert_same_frames(runs.bare, runs.wrapped)


#
# 8. Audio and text passed through untouched
#


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_audio_keeps_the_providers_rate_and_bytes(transport):
    runs = await bare_and_wrapped(
        lambda: FakeTTSService(transport=transport, sample_rate=24000),
        lambda svc: [
            *reply("One two three. ", "Four five six."),
            until(count(LLMFullResponseEndFrame)),
        ],
        sample_rate=16000,
    )
    assert {f.sample_rate for f in runs.bare.of(TTSAudioRawFrame)} == {24000}
    assert_same_frames(runs.bare, runs.wrapped)


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_leading_space_of_an_aggregated_sentence_is_kept(transport):
    runs = await bare_and_wrapped(
        lambda: FakeTTSService(transport=transport),
        lambda svc: [
            LLMFullResponseStartFrame(),
            AggregatedTextFrame("Hello there.", TextType.SENTENCE),
            AggregatedTextFrame(" How are you?", TextType.SENTENCE),
            LLMFullResponseEndFrame(),
            until(count(LLMFullResponseEndFrame)),
        ],
    )
    announced = [f.text for f in runs.bare.down if type(f) is AggregatedTextFrame]
    assert announced == ["Hello there.", " How are you?"]
    assert_same_frames(runs.bare, runs.wrapped)


#
# pipecat's real services against the emulators
#

Kind = str
KINDS = ["cartesia_ws", "cartesia_http", "elevenlabs_ws", "elevenlabs_http"]


# Both emulators and an HTTP session; ``service(kind, ...)`` builds pipecat's real service.
Emulators = Providers


@contextlib.asynccontextmanager
async def emulators(**kwargs) -> AsyncIterator[Emulators]:
    """Both emulators on free ports, fast, and an HTTP session."""
    kwargs.setdefault("speed", 20.0)
    async with (
        CartesiaEmulator(**kwargs) as cartesia,
        ElevenLabsEmulator(**kwargs) as elevenlabs,
        aiohttp.ClientSession() as session,
    ):
        yield Emulators(cartesia, elevenlabs, session)


@pytest.mark.parametrize("kind", KINDS)
async def test_real_service_reply_and_speak_frame_are_the_bare_services(kind):
    async with emulators() as emu:
        runs = await bare_and_wrapped(
            lambda: emu.service(kind),
            lambda svc: [
                *reply("Thanks for calling. ", "Your order shipped today."),
                until(count(LLMFullResponseEndFrame)),
                TTSSpeakFrame("Anything else?"),
                until(count(TTSStoppedFrame, at_least=2)),
            ],
        )
    assert runs.bare.words and runs.bare.of(TTSAudioRawFrame)
    # An HTTP body's chunks follow the network; a WebSocket's messages do not.
    assert_same_frames(runs.bare, runs.wrapped, merge_audio=kind.endswith("_http"))


@pytest.mark.parametrize("kind", ["cartesia_ws", "elevenlabs_http"])
async def test_cold_standby_with_a_factory_is_the_bare_service_and_builds_no_backup(kind):
    # The lightest wrapping: the backup given as a factory on cold standby. A
    # healthy call's stream is still the bare service's, and no backup is built.
    def scenario(svc):
        return [
            *reply("Thanks for calling. ", "Your order shipped today."),
            until(count(LLMFullResponseEndFrame)),
        ]

    built: list[TTSService] = []
    async with emulators() as emu:

        def backup() -> TTSService:
            built.append(emu.service(kind))
            return built[-1]

        service = emu.service(kind)
        bare = await run(service, scenario(service))
        primary = emu.service(kind)
        wrapped = await run(wrap(primary, backup, standby="cold"), scenario(primary))
    assert bare.words and not built
    assert_same_frames(bare, wrapped, merge_audio=kind.endswith("_http"))


async def test_real_http_service_without_word_timestamps_speaks_text_after_audio():
    async with emulators() as emu:
        runs = await bare_and_wrapped(
            lambda: emu.service("cartesia_http"),
            lambda svc: [
                *reply("Hello there. ", "How are you?"),
                until(count(LLMFullResponseEndFrame)),
            ],
        )
    down = runs.bare.down
    texts = runs.bare.of(TTSTextFrame)
    assert [f.text for f in texts] == ["Hello there.", "How are you?"]
    for text in texts:
        assert isinstance(down[index_of(down, text) - 1], TTSAudioRawFrame)
    assert_same_frames(runs.bare, runs.wrapped, merge_audio=True)


@pytest.mark.parametrize("kind", ["cartesia_ws", "elevenlabs_ws"])
async def test_real_service_audio_keeps_its_own_sample_rate(kind):
    async with emulators() as emu:
        runs = await bare_and_wrapped(
            lambda: emu.service(kind, sample_rate=24000),
            lambda svc: [*reply("Thanks for calling."), until(count(LLMFullResponseEndFrame))],
            sample_rate=16000,
        )
    assert {f.sample_rate for f in runs.bare.of(TTSAudioRawFrame)} == {24000}
    assert_same_frames(runs.bare, runs.wrapped)


async def test_provider_startup_error_reaches_the_pipeline_as_the_bare_services():
    """A service that cannot connect reports it at the start of the call, nothing owed yet.

    Both providers are misconfigured alike, so the wrapped run may report the
    error once per provider: the errors that reach the pipeline are compared
    as a set, and the frames downstream line for line.
    """
    async with emulators(voices=["emulated-voice"]) as emu:
        runs = await bare_and_wrapped(
            lambda: emu.service("elevenlabs_ws", voice="no-such-voice"),
            lambda svc: [until(lambda r: bool(r.errors), timeout=3.0)],
        )
    bare_down, bare_up = frame_signature(runs.bare.down, runs.bare.up)
    wrapped_down, wrapped_up = frame_signature(runs.wrapped.down, runs.wrapped.up)
    assert runs.bare.errors and runs.bare.errors[0].category == ErrorCategory.CONNECTIVITY
    assert set(wrapped_up) == set(bare_up)
    assert wrapped_down == bare_down


async def test_all_providers_failing_report_their_own_errors():
    """When no provider can speak, the providers' own error messages reach the pipeline."""
    async with emulators(voices=["emulated-voice"]) as emu:
        runs = await bare_and_wrapped(
            lambda: emu.service("cartesia_http", voice="no-such-voice"),
            lambda svc: [TTSSpeakFrame("Hello there."), until(count(TTSStoppedFrame))],
        )
    own = [e.error for e in runs.bare.errors if "voice_not_found" in e.error]
    assert own, runs.bare.errors
    own_message = re.sub(r'"request_id": "[^"]*"', "", own[0])
    wrapped = [re.sub(r'"request_id": "[^"]*"', "", e.error) for e in runs.wrapped.errors]
    assert any(own_message in message for message in wrapped), wrapped


#
# A failover mid-reply
#

FAILOVER_REPLY = ("One two three. ", "Four five six. ", "Seven eight nine.")
FAILOVER_WORDS = [w for s in FAILOVER_REPLY for w in s.split()]


async def test_failover_mid_reply_keeps_the_stream_before_it_and_says_every_word_once():
    steps = [*reply(*FAILOVER_REPLY), until(count(LLMFullResponseEndFrame))]
    service = FakeTTSService(transport="ws")
    bare = await run(service, steps)
    # The primary reports an error in the second sentence, after its first word.
    primary = FakeTTSService(transport="ws", fail_request=(1, 1))
    backup = FakeTTSService(transport="ws", provider_index=1)
    steps = [*reply(*FAILOVER_REPLY), until(count(LLMFullResponseEndFrame))]
    wrapped = await run(wrap(primary, backup), steps)

    assert bare.words == FAILOVER_WORDS
    # Everything pipecat pushed before the error (up to the audio of "Four") is the bare stream.
    four = next(
        f for f in bare.of(TTSAudioRawFrame) if decode_audio([f], FAILOVER_WORDS) == [("Four", 0)]
    )
    cut = index_of(bare.down, four) + 1
    assert frame_signature(wrapped.down[:cut])[0] == frame_signature(bare.down[:cut])[0]
    # Afterwards the caller hears, and the context records, every word once, in order.
    heard = decode_audio(wrapped.of(TTSAudioRawFrame), FAILOVER_WORDS)
    assert heard == [(w, 0 if i < 4 else 1) for i, w in enumerate(FAILOVER_WORDS)]
    assert wrapped.words == FAILOVER_WORDS
    assert backup.requests and primary.requests[:1] == [FAILOVER_REPLY[0].strip()]
    # The failure was recovered from: nothing for the app to treat as the end of the call.
    assert wrapped.errors == []
    assert len(wrapped.of(LLMFullResponseEndFrame)) == 1


#
# Text with nothing to say (issue 13)
#

# Ordinary LLM output with no letters or digits (pipecat's rule, ``has_alnum``):
# providers answer it with silence, or with no audio at all.
NOTHING_TO_SAY = ["...", "*", ":)", '"', "\N{SLIGHTLY SMILING FACE}", "   "]
NOTHING_IDS = ["ellipsis", "asterisk", "smiley", "quote", "emoji", "whitespace"]


class QuietFakeTTSService(FakeTTSService):
    """A fake provider that answers words with nothing to say as real ones do.

    Args:
        answer: ``"silence"``: digital silence as long as a word (with no word
            timestamp); ``"nothing"``: no audio at all.
    """

    def __init__(self, *, answer: str = "silence", **kwargs):
        # An HTTP context ends after this long without audio (pipecat's default is 3 s).
        kwargs.setdefault("stop_frame_timeout_s", 0.5)
        super().__init__(**kwargs)
        self.answer = answer

    def _speech(self, index: int, text: str, context_id: str) -> list:
        if any(c.isalnum() for c in text):
            words = spoken_words(text)
            if all(any(c.isalnum() for c in w) for w in words):
                return super()._speech(index, text, context_id)
            # Mixed: speak only the words with something in them.
            kept = " ".join(w for w in words if any(c.isalnum() for c in w))
            return super()._speech(index, kept, context_id)
        if self.answer == "nothing":
            return []
        silence = b"\x00\x00" * round(self.sample_rate * WORD_SECONDS)
        return [TTSAudioRawFrame(silence, self.sample_rate, 1, context_id=context_id)]


@dataclass
class Verdicts:
    """What FailoverTTSService decided about a call: its events and event handlers."""

    events: list
    sentence_failed: list
    all_failed: list

    def on_event(self, event):
        self.events.append(event)

    @property
    def failures(self) -> list:
        return [e for e in self.events if getattr(e, "reason", None) is not None]


def watched_wrap(verdicts: Verdicts):
    """``wrap``, with the verdicts recorded."""

    def make(primary: TTSService, backup: TTSService) -> FrameProcessor:
        tts = wrap(primary, backup, metrics=verdicts)

        @tts.event_handler("on_sentence_failed")
        async def on_sentence_failed(processor, provider_id, reason):
            verdicts.sentence_failed.append((provider_id, reason))

        @tts.event_handler("on_all_providers_failed")
        async def on_all_providers_failed(processor, text):
            verdicts.all_failed.append(text)

        return tts

    return make


async def nothing_to_say_runs(
    make: Callable[[], TTSService], steps: Callable[[TTSService], Sequence[Step]]
) -> tuple[Runs, Verdicts]:
    """Bare and wrapped, as ``bare_and_wrapped``, with the wrapped call's verdicts."""
    verdicts = Verdicts([], [], [])
    service = make()
    bare = await run(service, steps(service))
    primary, backup = make(), make()
    wrapped = await run(watched_wrap(verdicts)(primary, backup), steps(primary))
    return Runs(bare, wrapped, service, primary, backup), verdicts


def assert_no_failure(runs: Runs, verdicts: Verdicts):
    """Nothing was held against a provider: no failure, no failover, no all-failed error.

    A failover (``FailedOver``) and a failed attempt (``SentenceAttempted``) both carry a reason.
    """
    assert verdicts.failures == []
    assert verdicts.sentence_failed == [] and verdicts.all_failed == []
    assert getattr(runs.backup, "requests", []) == []
    assert not [e for e in runs.wrapped.errors if "All providers failed" in e.error]


@pytest.mark.parametrize("answer", ["silence", "nothing"])
@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize("text", NOTHING_TO_SAY, ids=NOTHING_IDS)
async def test_reply_with_nothing_to_say_is_the_bare_services_and_fails_no_provider(
    text, transport, answer
):
    runs, verdicts = await nothing_to_say_runs(
        lambda: QuietFakeTTSService(transport=transport, answer=answer),
        lambda svc: [*reply(text), until(count(LLMFullResponseEndFrame))],
    )
    # pipecat sends such text to the provider (whitespace it drops itself).
    assert runs.service.requests == ([] if text.isspace() else [text])
    assert not [f for f in runs.bare.of(TTSAudioRawFrame) if any(f.audio)]
    if answer == "nothing" and not text.isspace():
        # pipecat reports a context that ended with no audio, upstream.
        assert any("completed with no audio" in e.error for e in runs.bare.errors)
    assert_same_frames(runs.bare, runs.wrapped)
    assert_no_failure(runs, verdicts)


@pytest.mark.parametrize("text", NOTHING_TO_SAY, ids=NOTHING_IDS)
async def test_speak_frame_with_nothing_to_say_is_the_bare_services_and_fails_no_provider(text):
    runs, verdicts = await nothing_to_say_runs(
        lambda: QuietFakeTTSService(transport="ws"),
        lambda svc: [
            TTSSpeakFrame(text),
            TTSSpeakFrame("Still here."),
            until(count(TTSTextFrame, at_least=2)),
            until(count(TTSStoppedFrame, at_least=1 if text.isspace() else 2)),
        ],
    )
    assert runs.service.requests[-1] == "Still here." and runs.bare.words
    assert_same_frames(runs.bare, runs.wrapped)
    assert_no_failure(runs, verdicts)


@pytest.mark.parametrize("answer", ["silence", "nothing"])
@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize("text", NOTHING_TO_SAY, ids=NOTHING_IDS)
async def test_nothing_to_say_between_two_sentences_fails_no_provider(text, transport, answer):
    runs, verdicts = await nothing_to_say_runs(
        lambda: QuietFakeTTSService(transport=transport, answer=answer),
        lambda svc: [
            *reply("Hello there. ", f"{text} ", "How are you?"),
            until(count(LLMFullResponseEndFrame)),
        ],
    )
    if not text.isspace():
        assert text in " ".join(runs.service.requests)
    assert runs.bare.words and [f for f in runs.bare.of(TTSAudioRawFrame) if any(f.audio)]
    assert_same_frames(runs.bare, runs.wrapped)
    assert_no_failure(runs, verdicts)
    # The next reply is the call's provider's too: nothing was moved.
    assert verdicts.events and {e.provider_id for e in verdicts.events} == {"primary"}


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("text", ["...", ":)"], ids=["ellipsis", "smiley"])
async def test_real_service_given_nothing_to_say_is_the_bare_services_and_fails_no_provider(
    kind, text
):
    # The emulators answer punctuation with digital silence, as providers do.
    async with emulators() as emu:
        runs, verdicts = await nothing_to_say_runs(
            lambda: emu.service(kind),
            lambda svc: [
                *reply("Thanks for calling. ", f"{text} ", "Anything else?"),
                until(count(LLMFullResponseEndFrame)),
                TTSSpeakFrame(text),
                until(count(TTSStoppedFrame, at_least=2)),
            ],
        )
    assert any(text in r for r in emu.requests(kind))
    assert_same_frames(runs.bare, runs.wrapped, merge_audio=kind.endswith("_http"))
    assert_no_failure(runs, verdicts)
