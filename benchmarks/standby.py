"""Warm or cold standby: what a failover costs the caller, and what each call holds.

Run from the repo root::

    .venv/bin/python benchmarks/standby.py [--repeats 7]

pipecat's real ``CartesiaTTSService`` (primary) and ``ElevenLabsTTSService``
(backup) speak through the emulators (real time, speed 1). Per repeat, in
alternating order, one call with ``standby="warm"`` and one with
``standby="cold"``:

- a healthy call of three sentences: WebSocket connections each emulator
  accepted (sessions the call held);
- a call whose primary answers the second sentence with an error: the
  failover gap, from the failover event to the first audio of the backup
  reaching the end of the pipeline (with cold standby this includes the
  backup's connection).

Prints the median and range of each.
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

from pipecat_tts_failover import FailoverTTSService, InMemoryHealthStore
from tests.support.integration import providers
from tests.support.pipeline import PipelineHarness

SENTENCES = [
    "Thanks for calling Acme support today.",
    "Your package shipped yesterday morning.",
    "Delivery should happen within three days.",
]


async def one_call(standby: str, fault: str | None) -> dict:
    """One call; the connections each emulator accepted and the failover gap, if any."""
    async with providers(speed=1.0) as p:
        primary = p.service("cartesia_ws")
        backup = p.service("elevenlabs_ws")
        tts = FailoverTTSService(
            services={"cartesia": primary, "elevenlabs": backup},
            store=InMemoryHealthStore(),
            first_audio_timeout=1.0,
            standby=standby,
        )
        failed_over_at: list[float] = []
        audio_at: list[float] = []

        @tts.event_handler("on_failover")
        async def on_failover(processor, from_id, to_id, reason):
            failed_over_at.append(time.monotonic())

        def on_down(frame):
            if isinstance(frame, TTSAudioRawFrame):
                audio_at.append(time.monotonic())

        async with PipelineHarness(tts, on_down=on_down) as h:
            for i, sentence in enumerate(SENTENCES):
                if i == 1 and fault:
                    p.cartesia.set_fault(fault)
                await h.send(TTSSpeakFrame(sentence))
                await h.wait_for(lambda i=i: len(h.of(TTSStoppedFrame)) > i, timeout=20)
        gap = None
        if failed_over_at:
            after = [t for t in audio_at if t >= failed_over_at[0]]
            gap = (after[0] - failed_over_at[0]) * 1000 if after else None
        return {
            "cartesia": p.cartesia.connections,
            "elevenlabs": p.elevenlabs.connections,
            "gap_ms": gap,
        }


def _spread(values: list[float]) -> str:
    if not values:
        return "n/a"
    return f"{statistics.median(values):7.1f}  ({min(values):.1f} .. {max(values):.1f})"


async def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    logger.remove()
    results: dict[str, dict[str, list]] = {
        mode: {"healthy": [], "gap": []} for mode in ("warm", "cold")
    }
    for repeat in range(args.repeats):
        order = ("warm", "cold") if repeat % 2 == 0 else ("cold", "warm")
        for mode in order:
            healthy = await one_call(mode, None)
            results[mode]["healthy"].append(healthy)
            failing = await one_call(mode, "error")
            if failing["gap_ms"] is not None:
                results[mode]["gap"].append(failing["gap_ms"])
    print(f"standby: {args.repeats} repeats, alternating order, emulators at real time")
    print("mode   sessions per healthy call (cartesia+elevenlabs)   failover gap ms: median (range)")
    for mode in ("warm", "cold"):
        sessions = [h["cartesia"] + h["elevenlabs"] for h in results[mode]["healthy"]]
        backup = [h["elevenlabs"] for h in results[mode]["healthy"]]
        print(
            f"{mode:5}  {statistics.median(sessions):.0f} (backup: {statistics.median(backup):.0f})"
            f"{'':31}{_spread(results[mode]['gap'])}"
        )


if __name__ == "__main__":
    asyncio.run(main())
