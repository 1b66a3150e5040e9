"""A probe through a provider's own service, in a live call, while the call does not use it.

After a provider fails a caller's sentence the call speaks elsewhere, and the
provider's service sits idle in the call. A short synthesis through it, whose
audio goes nowhere, tells whether the failure was an isolated hiccup (it
speaks) or the provider is broken (it fails again): evidence for the fleet
before a second caller meets the provider. The same probe brings a provider
back after an ejection, so no caller is the first to try it again.
"""

import asyncio

from pipecat.frames.frames import (
    ErrorFrame,
    Frame,
    TTSAudioRawFrame,
    TTSSpeakFrame,
    TTSStoppedFrame,
)
from pipecat.processors.frame_processor import FrameDirection

from pipecat_tts_failover.detection import FailureReason, is_audible, reason_for_error_frame
from pipecat_tts_failover.provider_link import ProviderLink
from pipecat_tts_failover.recovery import PROBE_TEXT, ProbeVerdict

# How long a probe waits for the link's previous speech to drain before it speaks.
_DRAIN_WAIT = 1.0


class _ProbeTap:
    """Stands in for the relay as the link's listener while a probe speaks."""

    def __init__(self, silence_floor: float):
        self._silence_floor = silence_floor
        self.got_audio = False
        self.audible = False
        self.error: ErrorFrame | None = None
        self.over = asyncio.Event()

    def request(self, link: ProviderLink, context_id: str | None) -> None:
        pass

    async def output(self, link: ProviderLink, frame: Frame) -> None:
        if isinstance(frame, TTSAudioRawFrame):
            self.got_audio = True
            if is_audible(frame.audio, self._silence_floor):
                self.audible = True
                self.over.set()
        elif isinstance(frame, TTSStoppedFrame):
            self.over.set()

    async def upstream(self, link: ProviderLink, frame: Frame, direction: FrameDirection) -> None:
        if isinstance(frame, ErrorFrame) and self.error is None:
            self.error = frame
            self.over.set()


async def probe_link(
    link: ProviderLink,
    *,
    first_audio_timeout: float,
    silence_floor: float,
    text: str = PROBE_TEXT,
) -> ProbeVerdict:
    """Speak a short text through an idle provider link and judge it; its audio goes nowhere.

    The caller makes sure the call is not using the link. While the probe
    runs, what the service pushes goes to the probe instead of the call; after
    it, whatever the service still has of the probe is dropped.

    Args:
        link: The provider's link, started and idle.
        first_audio_timeout: Seconds until audible audio.
        silence_floor: RMS level at or below which audio is silence.
        text: What to say.

    Returns:
        The verdict. Never raises (except on cancellation).
    """
    loop = asyncio.get_running_loop()
    started = loop.time()
    tap = _ProbeTap(silence_floor)
    listener = link.listener
    try:
        async with asyncio.timeout(_DRAIN_WAIT):
            while link.draining:
                await asyncio.sleep(0.01)
        link.listener = tap
        await link.send(TTSSpeakFrame(text))
        async with asyncio.timeout(first_audio_timeout):
            await tap.over.wait()
    except TimeoutError:
        pass
    finally:
        # Drop the rest of the probe's speech before the relay listens again.
        await link.abandon()
        link.listener = listener
    seconds = loop.time() - started
    if tap.audible:
        return ProbeVerdict(True, None, seconds)
    if tap.error is not None:
        return ProbeVerdict(False, reason_for_error_frame(tap.error), seconds, tap.error.error)
    if not tap.over.is_set():
        reason = FailureReason.SILENT_AUDIO if tap.got_audio else FailureReason.NO_FIRST_AUDIO
    else:
        reason = FailureReason.SILENT_AUDIO if tap.got_audio else FailureReason.NO_AUDIO
    return ProbeVerdict(False, reason, seconds)
