"""One worker process of ``pipecat-tts-failover demo --workers N``: one call on the fleet's Redis store.

The demo starts it as ``python -m pipecat_tts_failover.demo.worker CONFIG``
(CONFIG is JSON: ``name``, ``redis_url``, ``key_prefix``, ``endpoints``,
``speed``, ``wav``) and talks to it in JSON lines:

- worker: ``{"type": "ready"}`` once its store is connected to Redis
  (``{"type": "error", "message": ...}`` if it cannot be, then it exits 1);
- demo: ``{"type": "call"}``: make the call;
- worker: ``{"type": "turn", "turn": T}`` before each turn, and waits for
  demo: ``{"type": "go", "event": [KIND, TEXT] | null}`` (the demo breaks or
  fixes the primary's emulator, which it owns, and says so);
- worker: ``{"type": "view", "view": {...}}`` as the call goes, at most
  every ``_SNAPSHOT_EVERY`` seconds, then ``{"type": "done", "view": {...}}``
  once its WAV is written;
- demo: ``{"type": "quit"}`` (or end of input): close the store and exit.

Logs go to stderr.
"""

import asyncio
import json
import sys
from pathlib import Path
from typing import Any

from loguru import logger

_SNAPSHOT_EVERY = 0.2
_CONNECT_TIMEOUT = 5.0


def _send(message: dict[str, Any]):
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


async def _receive() -> dict[str, Any] | None:
    line = await asyncio.to_thread(sys.stdin.readline)
    return json.loads(line) if line.strip() else None


async def _call(config: dict[str, Any], store):
    from pipecat_tts_failover.demo.call import SAMPLE_RATE, Endpoints, run_call
    from pipecat_tts_failover.demo.script import SCRIPT, Timing
    from pipecat_tts_failover.demo.timeline import CallTimeline

    timing = Timing(speed=config["speed"])
    timeline = CallTimeline(config["name"], SCRIPT, timing, SAMPLE_RATE)
    dirty = asyncio.Event()

    async def before_turn(turn: int):
        _send({"type": "turn", "turn": turn})
        reply = await _receive()
        if reply and reply.get("event"):
            timeline.event(*reply["event"])
            dirty.set()

    async def snapshots():
        while True:
            await dirty.wait()
            dirty.clear()
            _send({"type": "view", "view": timeline.view().to_json()})
            await asyncio.sleep(_SNAPSHOT_EVERY)

    sender = asyncio.create_task(snapshots(), name="demo-worker::snapshots")
    try:
        await run_call(
            "failover",
            Endpoints(**config["endpoints"]),
            timeline,
            timing,
            store=store,
            before_turn=before_turn,
            on_change=dirty.set,
        )
    finally:
        sender.cancel()
        await asyncio.gather(sender, return_exceptions=True)
    timeline.write_wav(Path(config["wav"]))
    _send({"type": "done", "view": timeline.view().to_json()})


async def _main(config: dict[str, Any]) -> int:
    from pipecat_tts_failover.recovery import close_recovery
    from pipecat_tts_failover.store.redis import RedisHealthStore, mask_url

    store = RedisHealthStore(config["redis_url"], key_prefix=config["key_prefix"])
    try:
        if not await store.connect(timeout=_CONNECT_TIMEOUT):
            _send(
                {
                    "type": "error",
                    "message": f"cannot reach Redis at {mask_url(config['redis_url'])}",
                }
            )
            return 1
        _send({"type": "ready"})
        while (message := await _receive()) is not None and message.get("type") == "call":
            await _call(config, store)
        return 0
    finally:
        await close_recovery()
        await store.close()


def main(argv: list[str]) -> int:
    """Run one worker.

    Args:
        argv: The JSON config, alone.

    Returns:
        The exit status.
    """
    logger.remove()
    logger.add(sys.stderr, level="DEBUG")
    config = json.loads(argv[0])
    try:
        return asyncio.run(_main(config))
    except Exception as e:  # noqa: BLE001 - tell the demo, which shows it; the traceback goes to the log
        logger.exception(f"demo worker {config.get('name')} failed")
        _send({"type": "error", "message": f"{config.get('name')}: {e!r}"})
        return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
