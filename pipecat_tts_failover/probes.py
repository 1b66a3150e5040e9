"""Probes: a short synthesis through a provider's official SDK, or through a pipecat service.

Each probe is a callable returning an async iterator of 16-bit mono PCM
chunks; :func:`pipecat_tts_failover.recovery.run_probe` judges it. API keys are
never part of a probe's repr.
"""

import asyncio
from collections.abc import AsyncIterator, Callable

from pipecat.frames.frames import Frame, TTSAudioRawFrame, TTSSpeakFrame, TTSStoppedFrame
from pipecat.pipeline.pipeline import Pipeline
from pipecat.pipeline.worker import PipelineWorker
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor
from pipecat.services.tts_service import TTSService
from pipecat.workers.runner import WorkerRunner

from pipecat_tts_failover.recovery import PROBE_TEXT


def _require(module: str, extra: str):
    """Import the SDK now, at construction, so a probe's deadline never pays for the import."""
    try:
        return __import__(module, fromlist=["_"])
    except ImportError as e:
        raise ImportError(
            f'this probe needs the {extra} package: pip install "pipecat-tts-failover[{extra}]"'
        ) from e


class _SdkProbe:
    """A probe through a provider's official SDK: the settings every such probe takes.

    Args:
        api_key: The provider's API key (never shown in the repr).
        voice_id: The voice to speak with.
        model_id: The model.
        base_url: API base URL (None for the provider's; an emulator's in tests).
        sample_rate: Output sample rate.
        text: What to say.
    """

    _package = ""
    _extra = ""
    _default_model = ""

    def __init__(
        self,
        api_key: str,
        *,
        voice_id: str,
        model_id: str | None = None,
        base_url: str | None = None,
        sample_rate: int = 16000,
        text: str = PROBE_TEXT,
    ):
        _require(self._package, self._extra)
        self._api_key = api_key
        self._voice_id = voice_id
        self._model_id = model_id or self._default_model
        self._base_url = base_url
        self._sample_rate = sample_rate
        self._text = text

    def __repr__(self) -> str:
        return f"{type(self).__name__}(voice_id={self._voice_id!r}, base_url={self._base_url!r})"

    def _client_kwargs(self) -> dict:
        return {"base_url": self._base_url} if self._base_url else {}


class CartesiaProbe(_SdkProbe):
    """Probe Cartesia with the official ``cartesia`` SDK (``/tts/bytes``, streamed raw PCM)."""

    _package = "cartesia"
    _extra = "cartesia"
    _default_model = "sonic-2"

    async def __call__(self) -> AsyncIterator[bytes]:
        from cartesia import AsyncCartesia

        client = AsyncCartesia(api_key=self._api_key, max_retries=0, **self._client_kwargs())
        try:
            # The streaming variant: ``tts.bytes`` reads the whole body before
            # it yields, which would make first audio wait for the last.
            async with client.tts.with_streaming_response.generate(
                model_id=self._model_id,
                transcript=self._text,
                voice={"mode": "id", "id": self._voice_id},
                output_format={
                    "container": "raw",
                    "encoding": "pcm_s16le",
                    "sample_rate": self._sample_rate,
                },
            ) as response:
                async for chunk in response.iter_bytes():
                    yield chunk
        finally:
            await client.close()


class ElevenLabsProbe(_SdkProbe):
    """Probe ElevenLabs with the official ``elevenlabs`` SDK (streaming HTTP, raw PCM).

    ``sample_rate`` is one of 16000, 22050, 24000 or 44100.
    """

    _package = "elevenlabs.client"
    _extra = "elevenlabs"
    _default_model = "eleven_flash_v2_5"

    async def __call__(self) -> AsyncIterator[bytes]:
        from elevenlabs.client import AsyncElevenLabs

        client = AsyncElevenLabs(api_key=self._api_key, **self._client_kwargs())
        async for chunk in client.text_to_speech.stream(
            self._voice_id,
            text=self._text,
            model_id=self._model_id,
            output_format=f"pcm_{self._sample_rate}",
        ):
            yield chunk


class _AudioTap(FrameProcessor):
    def __init__(self, queue: asyncio.Queue):
        super().__init__(enable_direct_mode=True)
        self._queue = queue

    async def process_frame(self, frame: Frame, direction: FrameDirection):
        await super().process_frame(frame, direction)
        if isinstance(frame, TTSAudioRawFrame):
            self._queue.put_nowait(frame.audio)
        elif isinstance(frame, TTSStoppedFrame):
            self._queue.put_nowait(None)
        await self.push_frame(frame, direction)


class ServiceProbe:
    """Probe any provider through a fresh pipecat TTS service, in a pipeline of its own.

    Args:
        factory: Builds a new service for each probe.
        text: What to say.
        sample_rate: The probe pipeline's output sample rate.
    """

    def __init__(
        self, factory: Callable[[], TTSService], *, text: str = PROBE_TEXT, sample_rate: int = 16000
    ):
        self._factory = factory
        self._text = text
        self._sample_rate = sample_rate

    def __repr__(self) -> str:
        return f"ServiceProbe({getattr(self._factory, '__name__', 'factory')})"

    async def __call__(self) -> AsyncIterator[bytes]:
        from pipecat.frames.frames import CancelFrame
        from pipecat.pipeline.worker import PipelineParams

        queue: asyncio.Queue[bytes | None] = asyncio.Queue()
        worker = PipelineWorker(
            Pipeline([self._factory(), _AudioTap(queue)]),
            cancel_on_idle_timeout=False,
            enable_rtvi=False,
            params=PipelineParams(audio_out_sample_rate=self._sample_rate),
        )
        runner = WorkerRunner(handle_sigint=False)
        await runner.add_workers(worker)
        run = asyncio.create_task(runner.run())
        try:
            await worker.queue_frame(TTSSpeakFrame(self._text))
            while (chunk := await queue.get()) is not None:
                yield chunk
        finally:
            await worker.queue_frame(CancelFrame())
            try:
                async with asyncio.timeout(2.0):
                    await run
            except TimeoutError:
                run.cancel()
