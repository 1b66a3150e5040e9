"""One call through a real FailoverTTSService with scripted providers, as a fleet worker makes it.

Used by the fleet tests (in the test process and in worker processes) and by
the propagation benchmark. A call has two providers, ``primary`` and
``secondary``; the primary follows a fault plan. Sentences are sent one at a
time, each once the previous one has been spoken, as an LLM's reply arrives
over time.
"""

import asyncio
import inspect
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from pipecat.frames.frames import TTSSpeakFrame, TTSStoppedFrame

from pipecat_tts_failover import FailoverTTSService
from pipecat_tts_failover.events import FailoverEvent, ProviderDown
from pipecat_tts_failover.health import HealthPolicy
from pipecat_tts_failover.store import HealthStore
from tests.support.pipeline import PipelineHarness
from tests.support.scripted import FaultPlan, ScriptedTTSService, decode_audio

SENTENCES = [
    "Thanks for calling Acme support.",
    "Your order shipped yesterday morning.",
    "It should arrive within three days.",
]
PROVIDERS = ["primary", "secondary"]
# How long one sentence may take before the call sends the next one anyway.
SENTENCE_WAIT = 5.0


class EventRecorder:
    """An alerter that keeps every event it is told of."""

    def __init__(self):
        self.events: list[FailoverEvent] = []

    def on_event(self, event: FailoverEvent):
        self.events.append(event)

    def of(self, kind: type) -> list[FailoverEvent]:
        return [e for e in self.events if isinstance(e, kind)]


@dataclass
class CallResult:
    """What happened in one call.

    Parameters:
        requests: Requests each provider received.
        heard: The words the caller heard, decoded from the audio, in order.
        speakers: Which provider spoke each heard word.
        first_provider: The provider the call started on.
        started_in: Seconds the pipeline took to start (the health read included).
        provider_downs: ProviderDown events this call reported.
        marked_down: The providers of those events.
    """

    requests: dict[str, int]
    heard: list[str]
    speakers: list[str]
    first_provider: str
    started_in: float
    provider_downs: int = 0
    marked_down: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def words_of(sentences: Sequence[str]) -> list[str]:
    return [w for s in sentences for w in s.split()]


async def speak_call(
    store: HealthStore,
    *,
    primary: FaultPlan | None = None,
    sentences: Sequence[str] = SENTENCES,
    cooldown: float = 30.0,
    first_audio_timeout: float = 0.3,
    pace: float = 0.0,
    ms_per_char: int = 60,
    on_sentence: Mapping[int, Callable[[], Any]] | None = None,
    alerters: Sequence[Any] = (),
    barrier: asyncio.Barrier | None = None,
    gap: float = 0.0,
) -> CallResult:
    """Make one call and report what the caller heard.

    Args:
        store: The health store of this "worker".
        primary: The primary's fault plan (``scripted.plan(...)``); None: healthy.
        sentences: What the bot says, one TTSSpeakFrame each.
        cooldown: How long an ejection lasts (the first failure ejects).
        first_audio_timeout: The processor's ``first_audio_timeout`` (and stall timeout).
        pace: Seconds between audio chunks of each provider (0: as fast as possible).
        ms_per_char: Length of the scripted speech, per character of a word.
        on_sentence: Actions (sync or async) run once the given sentence's
            first audio has reached the caller: faults injected mid-call.
        alerters: More alerters; a recorder of ProviderDown events is always added.
        barrier: Wait on it once the call has started, before the first
            sentence: calls sharing it start together, then speak together.
        gap: Seconds between the end of one sentence and the next (the
            caller's turn, in a real call).
    """
    services = {
        pid: ScriptedTTSService(
            provider_index=i,
            faults=primary if pid == "primary" else None,
            name=pid,
            pace=pace,
            ms_per_char=ms_per_char,
            stall_after_words=0,
        )
        for i, pid in enumerate(PROVIDERS)
    }
    recorder = EventRecorder()
    tts = FailoverTTSService(
        services=services,
        store=store,
        # The fleet tests are about how one worker's ejection reaches the
        # others: version 0.1's rule (the first failure ejects) makes one.
        health=HealthPolicy.first_failure(cooldown),
        first_audio_timeout=first_audio_timeout,
        stall_timeout=first_audio_timeout,
        alerters=[recorder, *alerters],
    )
    actions = dict(on_sentence or {})
    started = time.monotonic()
    async with PipelineHarness(tts) as h:
        started_in = time.monotonic() - started
        first_provider = tts.active_provider
        if barrier is not None:
            await barrier.wait()
        for i, text in enumerate(sentences):
            if i and gap:
                await asyncio.sleep(gap)
            heard_before = len(h.audio)
            await h.send(TTSSpeakFrame(text))
            if i in actions:
                try:
                    await h.wait_for(lambda n=heard_before: len(h.audio) > n, timeout=SENTENCE_WAIT)
                except TimeoutError:
                    pass
                result = actions[i]()
                if inspect.isawaitable(result):
                    await result
            try:
                await h.wait_for(lambda i=i: len(h.of(TTSStoppedFrame)) > i, timeout=SENTENCE_WAIT)
            except TimeoutError:
                pass  # unspoken: the result shows it
    decoded = decode_audio(h.audio, words_of(sentences))
    return CallResult(
        requests={pid: len(service.requests) for pid, service in services.items()},
        heard=[word for word, _ in decoded],
        speakers=[PROVIDERS[index] for _, index in decoded],
        first_provider=first_provider,
        started_in=started_in,
        provider_downs=len(recorder.of(ProviderDown)),
        marked_down=[e.provider_id for e in recorder.of(ProviderDown)],
    )
