"""A fleet worker in a process of its own: makes calls on a RedisHealthStore when told to.

Run from the repo root::

    python -m tests.support.fleet_worker REDIS_URL KEY_PREFIX

It connects its store, prints ``{"ready": true, "connected": ...}``, then
reads one JSON command per line on stdin and answers each with one JSON line
on stdout:

- ``{"call": {"primary": "hang"}}``: one call (``tests.support.calls``) whose
  primary suffers that fault on every request (null: healthy); answers the
  call's result.
- ``{"health": ["primary", ...]}``: this worker's view of those providers;
  answers ``{"primary": {"down": bool, "failures": int}, ...}``.
- ``{"quit": true}`` (or end of input): close the store and exit.

Logs go to stderr.
"""

import asyncio
import json
import sys
import time

from loguru import logger

from pipecat_tts_failover.store.redis import RedisHealthStore
from tests.support.calls import speak_call
from tests.support.scripted import plan


def answer(payload: dict):
    sys.stdout.write(json.dumps(payload) + "\n")
    sys.stdout.flush()


async def main(url: str, key_prefix: str):
    store = RedisHealthStore(url, key_prefix=key_prefix)
    answer({"ready": True, "connected": await store.connect(timeout=10)})
    try:
        while line := await asyncio.to_thread(sys.stdin.readline):
            command = json.loads(line)
            if "call" in command:
                fault = command["call"].get("primary")
                result = await speak_call(store, primary=plan(every=fault) if fault else None)
                answer(result.to_json())
            elif "health" in command:
                health = await store.get(command["health"])
                now = time.time()
                answer(
                    {
                        pid: {"down": h.is_down(now), "failures": h.failures}
                        for pid, h in health.items()
                    }
                )
            else:
                break
    finally:
        await store.close()


if __name__ == "__main__":
    logger.remove()
    logger.add(sys.stderr, level="INFO")
    asyncio.run(main(sys.argv[1], sys.argv[2]))
