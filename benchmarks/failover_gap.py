"""Failover gap and healthy-path overhead: FailoverTTSService against pipecat's own failover.

Run from the repo root::

    .venv/bin/python benchmarks/failover_gap.py [--sentences 6] [--overhead-sentences 150]

For each fault of the primary, prints how many of the call's sentences the
caller heard in full, for FailoverTTSService and for pipecat's
``ServiceSwitcher`` with ``ServiceSwitcherStrategyFailover`` run side by side on
the same scripted providers; the dead air of the first failed sentence (from
its request to its first audio downstream); and the swap latency: from the
moment the failure was known (the provider's error, or the first-audio
deadline) to the backup receiving the request.

Then the healthy-path overhead of the wrapper against the bare service: CPU
seconds per run and the latency each audio frame gains between the service
pushing it and the next processor receiving it (median and p99).
"""

import argparse
import asyncio
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from loguru import logger
from pipecat.frames.frames import TTSAudioRawFrame, TTSSpeakFrame, TTSStoppedFrame  # noqa: E402
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
    """CPU per run and per-frame latency added by the wrapper on a healthy call."""
    texts = sentences(n)
    kinds = ("bare", "wrapped", "switcher")
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
    result = {}
    for kind in kinds:
        lat = sorted(latency[kind])
        result[kind] = {
            "cpu_s": statistics.median(cpu[kind]),
            "lat_p50_ms": lat[len(lat) // 2] * 1000,
            "lat_p99_ms": lat[int(len(lat) * 0.99)] * 1000,
            "frames": len(lat) // repeats,
        }
    # Every scripted word is 60 ms of audio.
    result["audio_s"] = sum(len(t.split()) for t in texts) * 0.06
    return result


async def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sentences", type=int, default=6)
    parser.add_argument("--overhead-sentences", type=int, default=150)
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
        f"Healthy-path overhead ({args.overhead_sentences} sentences per run, median of "
        f"{args.repeats} runs, bare and wrapped interleaved)"
    )
    result = await overhead(args.overhead_sentences, args.repeats)
    bare, wrapped = result["bare"], result["wrapped"]
    print(f"{'':<10} {'CPU s':>8} {'frame lat p50 ms':>17} {'p99 ms':>8} {'frames':>7}")
    for kind in ("bare", "wrapped", "switcher"):
        r = result[kind]
        print(
            f"{kind:<10} {r['cpu_s']:>8.3f} {r['lat_p50_ms']:>17.3f} {r['lat_p99_ms']:>8.3f} {r['frames']:>7}"
        )
    switcher = result["switcher"]
    audio_seconds = result["audio_s"]
    for kind, r in (("FailoverTTSService", wrapped), ("pipecat ServiceSwitcher", switcher)):
        added_cpu = r["cpu_s"] - bare["cpu_s"]
        print(
            f"{kind}: CPU ratio to bare {r['cpu_s'] / bare['cpu_s']:.3f} "
            f"(+{added_cpu * 1000 / audio_seconds:.2f} ms CPU per second of audio, "
            f"{added_cpu / audio_seconds * 100:.2f} % of one core at real time); "
            f"added latency per frame p50 {r['lat_p50_ms'] - bare['lat_p50_ms']:.3f} ms, "
            f"p99 {r['lat_p99_ms'] - bare['lat_p99_ms']:.3f} ms"
        )


def _fmt(value) -> str:
    return "-" if value is None else f"{value:.1f}"


if __name__ == "__main__":
    asyncio.run(main())
