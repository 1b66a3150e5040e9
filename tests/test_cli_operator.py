"""The operator commands, driven as subprocesses against a real redis-server."""

import json
import subprocess
import sys

import pytest

from tests.support.redis_server import RedisServer, running

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


@pytest.fixture(scope="module")
def redis(tmp_path_factory):
    with running(RedisServer(tmp_path_factory.mktemp("redis-cli"))) as server:
        yield server


@pytest.fixture
def prefix(request) -> str:
    return f"cli-{request.node.name}"


def cli(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run(  # noqa: PLW1510 - the exit code is checked below
        [sys.executable, "-m", "pipecat_tts_failover.cli", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={"COLUMNS": "120", "PATH": "/usr/bin:/bin", "NO_COLOR": "1"},
    )
    if check:
        assert result.returncode == 0, result.stderr
    return result


def on(redis, prefix):
    return ["--redis-url", redis.url, "--key-prefix", prefix]


def test_mark_down_shows_in_status_and_mark_up_clears_it(redis, prefix):
    out = cli("mark-down", "cartesia", "--cooldown", "300", *on(redis, prefix)).stdout
    assert "cartesia: marked down for 300s" in out
    again = cli("mark-down", "cartesia", "--cooldown", "300", *on(redis, prefix)).stdout
    assert "already down" in again

    status = cli("status", "--providers", "cartesia,elevenlabs", *on(redis, prefix)).stdout
    assert "cartesia" in status and "operator" in status  # the table
    rows = {row["provider"]: row for row in status_json(redis, prefix, "cartesia,elevenlabs")}
    assert rows["cartesia"]["state"] == "down" and rows["cartesia"]["reason"] == "operator"
    assert rows["elevenlabs"]["state"] == "up"

    assert "marked up" in cli("mark-up", "cartesia", *on(redis, prefix)).stdout
    assert status_json(redis, prefix, "cartesia")[0]["state"] == "up"


def status_json(redis, prefix, providers=None) -> list[dict]:
    extra = ["--providers", providers] if providers else []
    return json.loads(cli("status", "--json", *extra, *on(redis, prefix)).stdout)["providers"]


def test_status_lists_every_known_provider_by_default(redis, prefix):
    cli("mark-down", "elevenlabs", *on(redis, prefix))
    cli("mark-down", "cartesia", *on(redis, prefix))
    assert [row["provider"] for row in status_json(redis, prefix)] == ["cartesia", "elevenlabs"]


def test_pin_kill_switch_and_reset_reach_the_store(redis, prefix):
    cli("pin", "ElevenLabs", *on(redis, prefix))
    cli("failover", "off", *on(redis, prefix))
    status = cli("status", "--providers", "cartesia", *on(redis, prefix)).stdout
    assert "pinned: elevenlabs" in status and "OFF (kill switch)" in status

    code = (
        "import asyncio, json\n"
        "from pipecat_tts_failover.store.redis import RedisHealthStore\n"
        "async def main():\n"
        f"    store = RedisHealthStore({redis.url!r}, key_prefix={prefix!r})\n"
        "    await store.connect()\n"
        "    c = await store.get_controls()\n"
        "    await store.close()\n"
        "    print(json.dumps([c.pinned, c.failover_enabled]))\n"
        "asyncio.run(main())\n"
    )
    read = lambda: json.loads(
        subprocess.run(
            [sys.executable, "-c", code], check=True, capture_output=True, text=True, timeout=60
        ).stdout
    )
    assert read() == ["elevenlabs", False]

    cli("unpin", *on(redis, prefix))
    assert read() == [None, False]
    cli("mark-down", "cartesia", *on(redis, prefix))
    out = cli("reset", *on(redis, prefix)).stdout
    assert "marked up cartesia" in out
    assert read() == [None, True]


def test_bad_arguments_and_unreachable_redis_fail_clearly(redis, prefix):
    usage = cli("pin", check=False)
    assert usage.returncode == 2 and "required" in usage.stderr
    bad = cli("mark-down", "cartesia", "--cooldown", "-5", *on(redis, prefix), check=False)
    assert bad.returncode == 2 and "positive number of seconds" in bad.stderr
    wrong = cli("failover", "maybe", *on(redis, prefix), check=False)
    assert wrong.returncode == 2 and "invalid choice" in wrong.stderr

    dead = cli("status", "--redis-url", "redis://:hunter2@127.0.0.1:1/0", check=False)
    assert dead.returncode == 1
    assert "cannot reach Redis" in dead.stderr and "hunter2" not in dead.stderr + dead.stdout
