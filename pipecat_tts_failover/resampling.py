"""Audio of one sentence, brought to the pipeline's sample rate whichever provider speaks it."""

from pipecat.audio.resamplers.base_audio_resampler import BaseAudioResampler
from pipecat.audio.utils import create_stream_resampler
from pipecat.frames.frames import TTSAudioRawFrame


class SentenceResampler:
    """Resamples what each provider sends for one sentence to the pipeline's rate.

    pipecat's stream resampler keeps the last few milliseconds of a stream in
    its filter and cannot change rates, so there is one per source rate, and
    the one in use is flushed when another provider takes over and when the
    sentence ends: the end of a word is never left in a filter.

    Args:
        out_rate: The pipeline's output sample rate (0: leave audio as it is).
    """

    def __init__(self, out_rate: int):
        self._out_rate = out_rate
        self._resamplers: dict[int, BaseAudioResampler] = {}
        # The source rate of the last audio resampled, while its filter holds some.
        self._in_use: int | None = None

    async def resample(self, frame: TTSAudioRawFrame) -> TTSAudioRawFrame:
        """The frame at the pipeline's rate (the same frame if nothing had to change)."""
        tail = b""
        if self._in_use not in (None, frame.sample_rate):
            tail = await self._resamplers[self._in_use].flush()
        if not self._out_rate or frame.sample_rate == self._out_rate:
            self._in_use = None
            if not tail:
                return frame
            audio = frame.audio
        else:
            resampler = self._resamplers.get(frame.sample_rate)
            if resampler is None:
                resampler = self._resamplers[frame.sample_rate] = create_stream_resampler()
            audio = await resampler.resample(frame.audio, frame.sample_rate, self._out_rate)
            self._in_use = frame.sample_rate
        return TTSAudioRawFrame(tail + audio, self._out_rate, frame.num_channels)

    async def flush(self) -> TTSAudioRawFrame | None:
        """What the filter in use still holds, as a frame at the pipeline's rate, if anything."""
        in_use, self._in_use = self._in_use, None
        if in_use is None:
            return None
        tail = await self._resamplers[in_use].flush()
        return TTSAudioRawFrame(tail, self._out_rate, 1) if tail else None
