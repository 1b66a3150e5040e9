"""Failover gap and healthy-path overhead: FailoverTTSService against pipecat's own failover.

Run from the repo root::

    .venv/bin/python benchmarks/failover_gap.py [--sentences 6] [--overhead-sentences 150] [--real-sentences 20]

For each fault of the primary, prints how many of the call's sentences the
caller heard in full, for FailoverTTSService and for pipecat's
``ServiceSwitcher`` with ``ServiceSwitcherStrategyFailover`` run side by side on
the same scripted providers; the dead air of the first failed sentence (from
its request to its first audio downstream); and the swap latency: from the
moment the failure was known (the provider's error, or the first-audio
deadline) to the backup receiving the request.

Then the healthy-path overhead of the wrapper against the bare service: CPU
seconds per run and the latency each audio frame gains between the service
pushing it and the next processor receiving it (median and p99). Twice: with a
scripted service that does next to nothing itself (so every cost of pipecat's
plumbing shows at full size), and with pipecat's real ``CartesiaTTSService``
talking to the Cartesia emulator in another process.
"""

import argparse
import asyncio
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from loguru import logger
from pipecat.frames.frames import TTSAudioRawFrame, TTSSpeakFrame, TTSStoppedFrame
from pipecat.pipeline.pipeline import Pipeline
from pipecat.pipeline.service_switcher import (
    ServiceSwitcher,
    ServiceSwitcherStrategyFailover,
)

from pipecat_tts_failover import FailoverTTSService, InMemoryHealthStore
from tests.support.pipeline import PipelineHarness
from tests.support.scripted import ScriptedTTSService, decode_audio, plan

FIRST_AUDIO_TIMEOUT = 1.0
# How long to wait for a sentence to finish before sending the next one.
SENTENCE_WAIT = 4.0
SENTENCE = "Thank you for calling and have a wonderful day number {}"
FAULTS = ["error", "raise", "hang", "stall", "empty", "zeros", "auth"]


def sentences(n: int) -> list[str]:
    words = [
        "one",
        "two",
        "three",
        "four",
        "five",
        "six",
        "seven",
        "eight",
        "nine",
        "ten",
        "eleven",
        "twelve",
    ]
    return [SENTENCE.format(words[i % len(words)]) for i in range(n)]


class Timed(ScriptedTTSService):
    """A scripted service that notes when each request arrives and when it fails."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.request_times: list[float] = []
        self.error_times: list[float] = []

    async def run_tts(self, text, context_id):
        self.request_times.append(time.perf_counter())
        async for frame in super().run_tts(text, context_id):
            yield frame

    async def push_error(self, *args, **kwargs):
        self.error_times.append(time.perf_counter())
        await super().push_error(*args, **kwargs)


def make_providers(fault: str | None, stall_after_words: int = 2):
    primary = Timed(
        provider_index=0,
        faults=plan(every=fault),
        stall_after_words=0 if fault == "error" else stall_after_words,
        pace=0.001,
        name="primary",
    )
    backup = Timed(provider_index=1, pace=0.001, name="backup")
    return primary, backup


def sentences_heard(h: PipelineHarness, texts: list[str]) -> int:
    vocab = sorted({w for t in texts for w in t.split()})
    words = [w for w, _ in decode_audio(h.audio, vocab)]
    heard, i = 0, 0
    for text in texts:
        expected = text.split()
        if words[i : i + len(expected)] == expected:
            heard += 1
            i += len(expected)
    return heard


async def speak_paced(processor, texts: list[str], **harness_kwargs) -> PipelineHarness:
    """Send each sentence once the previous one has finished (or clearly never will).

    Sentences of a real call arrive over time, as the LLM writes them; sending
    them all at once would queue them behind a broken provider before any
    failover could act.
    """
    async with PipelineHarness(processor, **harness_kwargs) as h:
        for i, text in enumerate(texts):
            await h.send(TTSSpeakFrame(text))
            try:
                await h.wait_for(lambda: len(h.of(TTSStoppedFrame)) > i, timeout=SENTENCE_WAIT)
            except TimeoutError:
                pass
    return h


async def fault_row(fault: str, n: int) -> dict:
    texts = sentences(n)
    row: dict = {"fault": fault}

    # Ours.
    primary, backup = make_providers(fault)
    tts = FailoverTTSService(
        services={"primary": primary, "backup": backup},
        store=InMemoryHealthStore(),
        first_audio_timeout=FIRST_AUDIO_TIMEOUT,
        stall_timeout=0.5,
    )
    arrivals: dict[int, float] = {}
    h = await speak_paced(tts, texts, on_down=_stamp(arrivals))
    row["ours_heard"] = sentences_heard(h, texts)
    fail_request = primary.request_times[0]
    backup_request = backup.request_times[0] if backup.request_times else None
    first_backup_audio = min(
        (arrivals[f.id] for f in h.audio if f.id in arrivals and _speaker(f) == 1), default=None
    )
    row["ours_gap_ms"] = _ms(first_backup_audio - fail_request) if first_backup_audio else None
    if fault in ("error", "auth", "raise") and primary.error_times:
        known = primary.error_times[0]
    elif fault in ("hang",):
        known = fail_request + FIRST_AUDIO_TIMEOUT
    else:
        known = None
    row["ours_swap_ms"] = _ms(backup_request - known) if (known and backup_request) else None

    # pipecat's ServiceSwitcher with ServiceSwitcherStrategyFailover.
    primary, backup = make_providers(fault)
    switcher = ServiceSwitcher(
        services=[primary, backup], strategy_type=ServiceSwitcherStrategyFailover
    )
    h2 = await speak_paced(switcher, texts)
    row["pipecat_heard"] = sentences_heard(h2, texts)
    return row


def _speaker(frame: TTSAudioRawFrame) -> int:
    """Which scripted provider spoke an audio frame (see tests.support.scripted.word_code)."""
    value = int.from_bytes(frame.audio[:2], "little", signed=True)
    return (value - 1000) % 4


def _stamp(arrivals: dict[int, float]):
    def stamp(frame):
        if isinstance(frame, TTSAudioRawFrame):
            arrivals[frame.id] = time.perf_counter()

    return stamp


def _ms(seconds: float) -> float:
    return round(seconds * 1000, 2)


async def overhead(n: int, repeats: int) -> dict:
    """CPU per run and per-frame latency added by the wrapper on a healthy call.

    Besides the bare service, the wrapper and pipecat's switcher, ``pipeline``
    is the service alone inside a pipecat ``Pipeline``: the least any
    processor holding a service pays in pipecat, for reference.
    """
    texts = sentences(n)
    kinds = ("bare", "pipeline", "wrapped", "switcher")
    cpu = {kind: [] for kind in kinds}
    latency = {kind: [] for kind in kinds}
    for _ in range(repeats):
        for kind in kinds:
            service = ScriptedTTSService(provider_index=0, name="primary")
            pushed: dict[int, float] = {}

            async def on_push(proc, frame, pushed=pushed):
                if isinstance(frame, TTSAudioRawFrame):
                    pushed[frame.id] = time.perf_counter()

            service.add_event_handler("on_before_push_frame", on_push)
            if kind == "bare":
                processor = service
            elif kind == "pipeline":
                processor = Pipeline([service])
            elif kind == "switcher":
                processor = ServiceSwitcher(
                    services=[service, ScriptedTTSService(provider_index=1)],
                    strategy_type=ServiceSwitcherStrategyFailover,
                )
            else:
                processor = FailoverTTSService(
                    services={"primary": service, "backup": ScriptedTTSService(provider_index=1)},
                    store=InMemoryHealthStore(),
                )
            received: dict[int, float] = {}
            t0 = time.process_time()
            async with PipelineHarness(processor, on_down=_stamp(received)) as h:
                await h.send(*(TTSSpeakFrame(t) for t in texts))
            cpu[kind].append(time.process_time() - t0)
            latency[kind].extend(t - pushed[i] for i, t in received.items() if i in pushed)
    result = {kind: _summary(cpu[kind], latency[kind], repeats) for kind in kinds}
    # Every character of a scripted word is 60 ms of audio.
    result["audio_s"] = sum(len(w) for t in texts for w in t.split()) * 0.06
    return result


async def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sentences", type=int, default=6)
    parser.add_argument("--overhead-sentences", type=int, default=150)
    parser.add_argument("--real-sentences", type=int, default=20)
    parser.add_argument("--real-repeats", type=int, default=9)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    logger.remove()

    print(f"Failover per fault ({args.sentences} sentences per call, primary broken throughout,")
    print(
        f"first_audio_timeout={FIRST_AUDIO_TIMEOUT}s, each sentence sent once the last one ended)"
    )
    header = (
        f"{'fault':<8} {'ours heard':>11} {'pipecat heard':>14} {'dead air ms':>12} {'swap ms':>9}"
    )
    print(header)
    print("-" * len(header))
    for fault in FAULTS:
        row = await fault_row(fault, args.sentences)
        print(
            f"{row['fault']:<8} {row['ours_heard']:>5}/{args.sentences:<5} "
            f"{row['pipecat_heard']:>8}/{args.sentences:<5} "
            f"{_fmt(row['ours_gap_ms']):>12} {_fmt(row['ours_swap_ms']):>9}"
        )

    print()
    print(
        f"Healthy-path overhead, scripted service ({args.overhead_sentences} sentences per run, "
        f"median of {args.repeats} runs, interleaved)"
    )
    result = await overhead(args.overhead_sentences, args.repeats)
    _print_overhead(
        result,
        ("bare", "pipeline", "wrapped", "switcher"),
        {
            "Pipeline([service])": "pipeline",
            "FailoverTTSService": "wrapped",
            "pipecat ServiceSwitcher": "switcher",
        },
    )

    print()
    print(
        f"Healthy-path overhead, pipecat's CartesiaTTSService against the emulator in another "
        f"process ({args.real_sentences} sentences per run, each once the last one ended, "
        f"median of {args.real_repeats} runs, interleaved)"
    )
    result = await real_service_overhead(args.real_sentences, args.real_repeats)
    _print_overhead(result, ("bare", "wrapped"), {"FailoverTTSService": "wrapped"})


class EmulatorProcess:
    """A provider emulator in a process of its own, so its CPU is not the pipeline's."""

    def __init__(self, provider: str, speed: float):
        self._args = [sys.executable, "-m", "pipecat_tts_failover.cli", "emulate", provider]
        self._args += ["--speed", str(speed), "--log-level", "WARNING"]
        self._process: asyncio.subprocess.Process | None = None
        self.ws_url = ""

    async def __aenter__(self) -> "EmulatorProcess":
        self._process = await asyncio.create_subprocess_exec(
            *self._args, stdout=asyncio.subprocess.PIPE
        )
        assert self._process.stdout is not None
        line = await asyncio.wait_for(self._process.stdout.readline(), timeout=30)
        # "<provider> emulator listening on http://127.0.0.1:P and ws://127.0.0.1:P (fault: none)"
        self.ws_url = line.decode().split(" and ")[1].split()[0]
        return self

    async def __aexit__(self, *exc):
        assert self._process is not None
        self._process.terminate()
        await asyncio.wait_for(self._process.wait(), timeout=10)


def real_service(kind: str, cartesia: EmulatorProcess, elevenlabs: EmulatorProcess):
    """pipecat's Cartesia service on the emulator, and what goes in the pipeline for ``kind``.

    ``bare``: the service itself; ``wrapped``: a FailoverTTSService with it as the
    primary and pipecat's ElevenLabs service as the (idle) backup.
    """
    from pipecat.services.cartesia.tts import CartesiaTTSService
    from pipecat.services.elevenlabs.tts import ElevenLabsTTSService

    service = CartesiaTTSService(
        api_key="test-key",
        url=f"{cartesia.ws_url}/tts/websocket",
        settings=CartesiaTTSService.Settings(voice="emulated-voice"),
    )
    if kind == "bare":
        return service, service
    backup = ElevenLabsTTSService(
        api_key="test-key",
        url=elevenlabs.ws_url,
        settings=ElevenLabsTTSService.Settings(voice="emulated-voice"),
    )
    wrapped = FailoverTTSService(
        services={"cartesia": service, "elevenlabs": backup}, store=InMemoryHealthStore()
    )
    return service, wrapped


async def real_service_overhead(n: int, repeats: int) -> dict:
    """The same comparison with pipecat's real services, talking to emulators in other processes.

    The bare side is pipecat's ``CartesiaTTSService``; the wrapped side the
    same service as the primary of a FailoverTTSService with pipecat's
    ``ElevenLabsTTSService`` as the (idle) backup. Sentences are sent one at a
    time, each once the last one ended, as in a call. Only this process's
    CPU is counted: the emulators run in their own.
    """
    texts = sentences(n)
    kinds = ("bare", "wrapped")
    cpu = {kind: [] for kind in kinds}
    latency = {kind: [] for kind in kinds}
    async with EmulatorProcess("cartesia", speed=8) as cartesia:
        async with EmulatorProcess("elevenlabs", speed=8) as elevenlabs:
            for _ in range(repeats):
                for kind in kinds:
                    service, processor = real_service(kind, cartesia, elevenlabs)
                    pushed: dict[int, float] = {}

                    async def on_push(proc, frame, pushed=pushed):
                        if isinstance(frame, TTSAudioRawFrame):
                            pushed[frame.id] = time.perf_counter()

                    service.add_event_handler("on_before_push_frame", on_push)
                    received: dict[int, float] = {}
                    t0 = time.process_time()
                    h = await speak_paced(processor, texts, on_down=_stamp(received))
                    cpu[kind].append(time.process_time() - t0)
                    latency[kind].extend(t - pushed[i] for i, t in received.items() if i in pushed)
                    audio_s = sum(len(f.audio) for f in h.audio) / (2 * 16000)
    result = {kind: _summary(cpu[kind], latency[kind], repeats) for kind in kinds}
    result["audio_s"] = audio_s
    return result


def _summary(cpu: list[float], latency: list[float], repeats: int) -> dict:
    lat = sorted(latency)
    return {
        "cpu_s": statistics.median(cpu),
        "cpu_runs": cpu,
        "lat_p50_ms": lat[len(lat) // 2] * 1000,
        "lat_p99_ms": lat[int(len(lat) * 0.99)] * 1000,
        "frames": len(lat) // repeats,
    }


def _print_overhead(result: dict, kinds: tuple[str, ...], labels: dict[str, str]):
    """Print the rows, then each labelled kind against the bare service."""
    bare = result["bare"]
    print(f"{'':<10} {'CPU s':>8} {'frame lat p50 ms':>17} {'p99 ms':>8} {'frames':>7}")
    for kind in kinds:
        r = result[kind]
        print(
            f"{kind:<10} {r['cpu_s']:>8.3f} {r['lat_p50_ms']:>17.3f} {r['lat_p99_ms']:>8.3f} {r['frames']:>7}"
        )
    for label, kind in labels.items():
        r = result[kind]
        added_cpu = r["cpu_s"] - bare["cpu_s"]
        # Each run against the bare run beside it: the machine's drift between
        # runs cancels out of the pair.
        ratios = sorted(k / b for k, b in zip(r["cpu_runs"], bare["cpu_runs"]))
        print(
            f"{label}: CPU ratio to bare, median of {len(ratios)} paired runs "
            f"{statistics.median(ratios):.3f} (range {ratios[0]:.3f}-{ratios[-1]:.3f}; "
            f"{added_cpu * 1000 / result['audio_s']:+.2f} ms CPU per second of audio); "
            f"added latency per frame p50 {r['lat_p50_ms'] - bare['lat_p50_ms']:.3f} ms, "
            f"p99 {r['lat_p99_ms'] - bare['lat_p99_ms']:.3f} ms"
        )


def _fmt(value) -> str:
    return "-" if value is None else f"{value:.1f}"


if __name__ == "__main__":
    asyncio.run(main())
