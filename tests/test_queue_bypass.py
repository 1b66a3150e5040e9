"""A sentence skips FailoverTTSService's own queues when nothing waits ahead of it, and only then.

pipecat queues a frame twice in every processor; the provider's service
queues it as the bare service would, so the wrapper's own two queues are a
cost the bare service does not have (two loop turns per sentence, tens of
milliseconds each on a loaded worker).
"""

import asyncio

from pipecat.frames.frames import (
    FrameProcessorPauseUrgentFrame,
    FrameProcessorResumeUrgentFrame,
    TTSSpeakFrame,
    TTSStoppedFrame,
)

from pipecat_tts_failover import FailoverTTSService, InMemoryHealthStore
from tests.support.pipeline import PipelineHarness
from tests.support.scripted import ScriptedTTSService, decode_audio

FIRST, SECOND = "Thanks for calling.", "Your order shipped."
VOCABULARY = [*FIRST.split(), *SECOND.split()]


class _ArrivalsService(ScriptedTTSService):
    """Records each frame as it is queued to the service, before any task of its takes it."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.arrived: list = []

    async def queue_frame(self, frame, *args, **kwargs):
        self.arrived.append(frame)
        await super().queue_frame(frame, *args, **kwargs)


def _services():
    return {
        "primary": _ArrivalsService(provider_index=0, name="primary"),
        "backup": _ArrivalsService(provider_index=1, name="backup"),
    }


def _heard(h: PipelineHarness) -> list[str]:
    return [word for word, _ in decode_audio(h.audio, VOCABULARY)]


async def test_a_sentence_reaches_its_provider_s_service_as_it_is_queued():
    services = _services()
    tts = FailoverTTSService(services=services, store=InMemoryHealthStore())
    async with PipelineHarness(tts) as h:
        frame = TTSSpeakFrame(FIRST)
        # As the processor before it pushes: the service has it when the push returns.
        await tts.queue_frame(frame)
        assert frame in services["primary"].arrived
        await h.wait_for(lambda: len(h.of(TTSStoppedFrame)) == 1)
    assert _heard(h) == FIRST.split()
    assert not [f for f in services["backup"].arrived if isinstance(f, TTSSpeakFrame)]


async def test_frames_wait_their_turn_while_the_wrapper_is_paused_and_keep_their_order():
    services = _services()
    tts = FailoverTTSService(services=services, store=InMemoryHealthStore())
    async with PipelineHarness(tts) as h:
        await tts.queue_frame(FrameProcessorPauseUrgentFrame(processor=tts))
        first, second = TTSSpeakFrame(FIRST), TTSSpeakFrame(SECOND)
        try:
            await h.wait_for(lambda: tts._FrameProcessor__should_block_frames)
            await tts.queue_frame(first)
            await tts.queue_frame(second)
            # Queued behind the pause: nothing reached the provider yet.
            spoken = [f for f in services["primary"].arrived if isinstance(f, TTSSpeakFrame)]
            assert spoken == []
        finally:
            # Resumed whatever happened: a paused processor would hold the call's end.
            await tts.queue_frame(FrameProcessorResumeUrgentFrame(processor=tts))
        await h.wait_for(lambda: len(h.of(TTSStoppedFrame)) == 2)
    spoken = [f for f in services["primary"].arrived if isinstance(f, TTSSpeakFrame)]
    assert spoken == [first, second]
    assert _heard(h) == FIRST.split() + SECOND.split()


class _SlowReadStore(InMemoryHealthStore):
    """A store whose reads hang, once asked to, until released."""

    def __init__(self):
        super().__init__()
        self.hang = False
        self.release = asyncio.Event()
        self.reads_ended = 0

    async def get(self, provider_ids):
        try:
            if self.hang:
                await self.release.wait()
            return await super().get(provider_ids)
        finally:
            self.reads_ended += 1


async def test_a_reply_that_must_read_the_store_first_does_not_hold_up_the_processor_before():
    # return_to_primary="immediately" reads the store before each reply: the
    # frame is queued, so the push that brought it returns at once.
    store = _SlowReadStore()
    tts = FailoverTTSService(services=_services(), store=store, return_to_primary="immediately")
    async with PipelineHarness(tts) as h:
        store.hang = True
        reads = store.reads_ended
        await tts.queue_frame(TTSSpeakFrame(FIRST))
        assert store.reads_ended == reads  # the read neither answered nor timed out yet
        store.release.set()
        await h.wait_for(lambda: len(h.of(TTSStoppedFrame)) == 1)
    assert _heard(h) == FIRST.split()
