"""The operator commands, driven as subprocesses against a real redis-server."""

import asyncio
import json
import subprocess
import sys

import pytest

from pipecat_tts_failover.detection import FailureReason
from pipecat_tts_failover.health import HealthPolicy
from pipecat_tts_failover.store.redis import RedisHealthStore
from tests.support.calls import speak_call
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


def register(redis, prefix, *provider_ids: str):
    """Register providers as a worker does when a call starts."""

    async def main():
        store = RedisHealthStore(redis.url, key_prefix=prefix)
        try:
            assert await store.connect()
            await store.register_providers(provider_ids)
        finally:
            await store.close()

    asyncio.run(main())


def record_attempts(redis, prefix, provider_id: str, outcomes: str, peers=("elevenlabs",)):
    """Record attempts as workers do: ``outcomes`` is one letter per attempt, F failed, S spoke."""

    async def main():
        store = RedisHealthStore(redis.url, key_prefix=prefix)
        policy = HealthPolicy(consecutive=3)
        try:
            assert await store.connect()
            for outcome in outcomes:
                failure = FailureReason.STALLED if outcome == "F" else None
                await store.record_attempt(provider_id, failure, policy=policy, peers=peers)
        finally:
            await store.close()

    asyncio.run(main())


def table_rows(table: str) -> dict[str, list[str]]:
    """The status table's cells by provider (and the header under "provider")."""
    rows = {}
    for line in table.splitlines():
        cells = [c.strip() for c in line.strip().strip("│┃").split("│" if "│" in line else "┃")]
        if len(cells) > 1:
            rows[cells[0]] = cells[1:]
    return rows


def test_status_shows_the_evidence_the_fleet_holds_on_each_provider(redis, prefix):
    register(redis, prefix, "cartesia", "elevenlabs")
    # cartesia: three failures in a row eject it; then one success and two failures.
    record_attempts(redis, prefix, "cartesia", "FFF" + "SFF")
    # elevenlabs: healthy but for one failure, the last.
    record_attempts(redis, prefix, "elevenlabs", "SSSSF", peers=("cartesia",))

    rows = {row["provider"]: row for row in status_json(redis, prefix)}
    evidence = ("state", "reason", "failures", "attempts", "window_failures", "ejections")
    assert [rows["cartesia"][k] for k in evidence] == ["down", "stalled", 2, 3, 2, 1]
    assert [rows["elevenlabs"][k] for k in evidence] == ["up", None, 1, 5, 1, 0]

    cells = table_rows(cli("status", *on(redis, prefix)).stdout)
    assert cells["provider"] == [
        "state", "reason", "since", "left", "in a row", "failed", "ejections",
    ]  # fmt: skip
    assert cells["cartesia"][0:2] == ["down", "stalled"]
    assert cells["cartesia"][4:] == ["2", "2/3", "1"]
    assert cells["elevenlabs"][0] == "up"
    assert cells["elevenlabs"][4:] == ["1", "1/5", "0"]


def test_mark_down_shows_in_status_and_mark_up_clears_it(redis, prefix):
    register(redis, prefix, "cartesia", "elevenlabs")
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


def test_status_lists_registered_providers_in_order_then_other_records(redis, prefix):
    register(redis, prefix, "elevenlabs", "cartesia")
    cli("mark-down", "zonos", "--force", *on(redis, prefix))
    cli("mark-down", "azure", "--force", *on(redis, prefix))
    rows = status_json(redis, prefix)
    assert [(row["provider"], row["registered"]) for row in rows] == [
        ("elevenlabs", True),
        ("cartesia", True),
        ("azure", False),
        ("zonos", False),
    ]
    table = cli("status", *on(redis, prefix)).stdout
    assert "not registered by any worker: azure, zonos" in table


async def test_status_lists_a_call_s_providers_from_its_start(redis, prefix):
    store = RedisHealthStore(redis.url, key_prefix=prefix)
    try:
        assert await store.connect()
        # A healthy call: nothing is written about either provider but the registration.
        result = await speak_call(store, sentences=["Thanks for calling."])
        assert result.heard == ["Thanks", "for", "calling."]
    finally:
        await store.close()

    status = await asyncio.to_thread(cli, "status", "--json", *on(redis, prefix))
    rows = json.loads(status.stdout)["providers"]
    assert [(r["provider"], r["state"], r["registered"]) for r in rows] == [
        ("primary", "up", True),
        ("secondary", "up", True),
    ]
    table = (await asyncio.to_thread(cli, "status", *on(redis, prefix))).stdout
    assert "primary" in table and "secondary" in table


def test_unknown_providers_are_refused_with_the_registered_ones_listed(redis, prefix):
    register(redis, prefix, "cartesia", "elevenlabs")

    for command in (["pin", "playht"], ["mark-down", "playht"], ["mark-up", "playht"]):
        refused = cli(*command, *on(redis, prefix), check=False)
        assert refused.returncode == 2, command
        assert "unknown provider 'playht'" in refused.stderr
        assert "known providers: cartesia, elevenlabs" in refused.stderr
        assert "--force" in refused.stderr
    typo = cli("mark-down", "Carte sia", *on(redis, prefix), check=False)
    assert typo.returncode == 2
    assert "'Carte sia' (as an id: 'carte-sia')" in typo.stderr
    assert "did you mean 'cartesia'?" in typo.stderr
    reset = cli("reset", "--providers", "cartesia,playht", *on(redis, prefix), check=False)
    assert reset.returncode == 2 and "'playht'" in reset.stderr

    # Nothing was written: no record, no pin.
    fleet = json.loads(cli("status", "--json", *on(redis, prefix)).stdout)
    assert [row["provider"] for row in fleet["providers"]] == ["cartesia", "elevenlabs"]
    assert fleet["pinned"] is None
    # A registered provider written another way is the same provider.
    assert "elevenlabs: marked down" in cli("mark-down", "ElevenLabs", *on(redis, prefix)).stdout


def test_before_any_worker_registered_every_provider_needs_force(redis, prefix):
    refused = cli("pin", "cartesia", *on(redis, prefix), check=False)
    assert refused.returncode == 2
    assert "no worker has registered its providers yet" in refused.stderr


def test_force_takes_a_provider_no_worker_registered(redis, prefix):
    register(redis, prefix, "cartesia", "elevenlabs")

    pinned = cli("pin", "PlayHT", "--force", *on(redis, prefix))
    assert "new calls start on playht" in pinned.stdout
    assert "no worker has registered 'playht'" in pinned.stderr
    down = cli("mark-down", "Carte sia", "--force", *on(redis, prefix))
    assert "carte-sia: marked down" in down.stdout

    table = cli("status", *on(redis, prefix)).stdout
    assert "pinned: playht (no worker has registered it)" in table
    fleet = json.loads(cli("status", "--json", *on(redis, prefix)).stdout)
    assert fleet["pinned"] == "playht"
    assert fleet["registered"] == ["cartesia", "elevenlabs"]
    rows = {row["provider"]: row for row in fleet["providers"]}
    assert rows["carte-sia"]["state"] == "down" and rows["carte-sia"]["registered"] is False


def test_pin_kill_switch_and_reset_reach_the_store(redis, prefix):
    register(redis, prefix, "cartesia", "elevenlabs")
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
