"""FailoverTTSService processes a frame in the push that brings it, unless one ahead of it waits.

It runs in pipecat's direct mode: the provider's service queues what it is
given, as the bare service would, and the wrapper adds no queue or task of its
own on a healthy call. A frame that must wait, and those behind it, go to its
backlog in order (``frame_backlog.py``), so the processor before it is never
held up; interruptions, cancellation and pipecat's pause frames treat the
backlog as pipecat treats a processor's own queues.
"""

import asyncio
from dataclasses import dataclass, field

from pipecat.frames.frames import (
    CancelFrame,
    DataFrame,
    FrameProcessorPauseUrgentFrame,
    FrameProcessorResumeUrgentFrame,
    InterruptionFrame,
    TTSSpeakFrame,
    TTSStoppedFrame,
    UserStartedSpeakingFrame,
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
        # A system frame: paused when the push returns.
        await tts.queue_frame(FrameProcessorPauseUrgentFrame(processor=tts))
        first, second = TTSSpeakFrame(FIRST), TTSSpeakFrame(SECOND)
        try:
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
        self.reading = asyncio.Event()
        self.reads_ended = 0

    async def get(self, provider_ids):
        try:
            if self.hang:
                self.reading.set()
                await self.release.wait()
            return await super().get(provider_ids)
        finally:
            self.reads_ended += 1


async def test_a_reply_that_must_read_the_store_first_does_not_hold_up_the_processor_before():
    # return_to_primary="immediately" reads the store before each reply: the
    # frame is queued, so the push that brought it returns at once.
    store, _, tts = _reading_the_store_before_each_reply()
    async with PipelineHarness(tts) as h:
        store.hang = True
        reads = store.reads_ended
        await tts.queue_frame(TTSSpeakFrame(FIRST))
        assert store.reads_ended == reads  # the read neither answered nor timed out yet
        store.release.set()
        await h.wait_for(lambda: len(h.of(TTSStoppedFrame)) == 1)
    assert _heard(h) == FIRST.split()


@dataclass
class _KeptFrame(DataFrame):
    """A frame an interruption must not drop."""

    interruptible: bool = field(default=False, init=False)


def _arrived(service: _ArrivalsService, *types: type) -> list:
    return [f for f in service.arrived if isinstance(f, types)]


def _reading_the_store_before_each_reply():
    """A wrapper with return_to_primary="immediately" on a store whose reads can be held."""
    store, services = _SlowReadStore(), _services()
    tts = FailoverTTSService(services=services, store=store, return_to_primary="immediately")
    return store, services, tts


def _own_tasks(tts: FailoverTTSService) -> list[asyncio.Task]:
    return [t for t in asyncio.all_tasks() if t.get_name().startswith(f"{tts}::")]


async def _start_a_reply_held_on_the_store(tts: FailoverTTSService, store: _SlowReadStore):
    """Queue a reply whose start (return_to_primary="immediately") holds the relay on a store read."""
    store.hang = True
    await tts.queue_frame(TTSSpeakFrame(FIRST))
    async with asyncio.timeout(5):
        await store.reading.wait()


async def test_an_interruption_drops_the_frames_waiting_but_not_those_that_are_not_interruptible():
    services = _services()
    tts = FailoverTTSService(services=services, store=InMemoryHealthStore())
    async with PipelineHarness(tts) as h:
        await tts.queue_frame(FrameProcessorPauseUrgentFrame(processor=tts))
        dropped, kept = TTSSpeakFrame(FIRST), _KeptFrame()
        await tts.queue_frame(dropped)
        await tts.queue_frame(kept)
        await tts.queue_frame(InterruptionFrame())
        await tts.queue_frame(FrameProcessorResumeUrgentFrame(processor=tts))
        spoken = TTSSpeakFrame(SECOND)
        await tts.queue_frame(spoken)
        await h.wait_for(lambda: len(h.of(TTSStoppedFrame)) == 1)
    primary = services["primary"]
    assert _arrived(primary, TTSSpeakFrame, _KeptFrame) == [kept, spoken]
    assert _heard(h) == SECOND.split()


async def test_a_cancelled_call_stops_the_frame_in_hand_and_drops_those_waiting():
    store, services, tts = _reading_the_store_before_each_reply()
    async with PipelineHarness(tts) as h:
        reads = store.reads_ended
        await _start_a_reply_held_on_the_store(tts, store)  # in the backlog's task
        await tts.queue_frame(TTSSpeakFrame(SECOND))  # waits behind it
        await tts.queue_frame(CancelFrame())
        # The read was cancelled under the backlog's task, which is gone.
        assert store.reads_ended == reads + 1
        assert not _own_tasks(tts)
        store.release.set()
        await h.wait_for(lambda: h.of(CancelFrame))
    assert _arrived(services["primary"], TTSSpeakFrame) == []


async def test_a_healthy_call_runs_no_task_of_the_wrapper_s_own():
    services = _services()
    tts = FailoverTTSService(services=services, store=InMemoryHealthStore())
    async with PipelineHarness(tts) as h:
        await h.send(TTSSpeakFrame(FIRST))
        await h.wait_for(lambda: len(h.of(TTSStoppedFrame)) == 1)
        # The providers' services run their own tasks, as bare; the wrapper none.
        assert not _own_tasks(tts)
    assert _heard(h) == FIRST.split()


async def test_a_system_frame_waits_on_a_held_relay_in_its_own_backlog_not_in_the_push():
    # The reply's start holds the relay while it reads the store: a system frame
    # that comes meanwhile must not hold up the processor before this one.
    store, services, tts = _reading_the_store_before_each_reply()
    async with PipelineHarness(tts) as h:
        await _start_a_reply_held_on_the_store(tts, store)
        system = UserStartedSpeakingFrame()
        async with asyncio.timeout(5):  # returns at once; a push held on the relay would hang
            await tts.queue_frame(system)
        assert system not in services["primary"].arrived
        store.release.set()
        await h.wait_for(lambda: len(h.of(TTSStoppedFrame)) == 1)
        assert system in services["primary"].arrived
        assert system in h.down
    assert _heard(h) == FIRST.split()
