"""RedisHealthStore beyond the contract: propagation, concurrency, faults, cluster, sentinel.

Every test runs against real redis-server processes it starts on free ports
(``tests/support/redis_server.py``). Timing is asserted loosely (a bound far
above the op timeout); precise figures belong to the benchmarks.
"""

import asyncio
import collections
import json
import random
import subprocess
import sys
import textwrap
import time
import uuid

import pytest
import redis.asyncio as aioredis

from pipecat_tts_failover.detection import FailureReason
from pipecat_tts_failover.errors import HealthStoreError
from pipecat_tts_failover.health import AttemptVerdict, HealthPolicy
from pipecat_tts_failover.loop_lag import loop_lag_monitor
from pipecat_tts_failover.store import Controls, HealthStore, InMemoryHealthStore
from pipecat_tts_failover.store._redis_scripts import Keys, script_source
from pipecat_tts_failover.store.redis import RedisHealthStore, mask_url
from tests.support.redis_server import (
    RedisCluster,
    RedisSentinel,
    RedisServer,
    captured_logs,
    eventually,
    free_port,
    make_tls_files,
    running,
)

# A call made while Redis is down, asleep or gone must return well within this.
PROMPT = 0.5
OP_TIMEOUT = 0.05


@pytest.fixture(scope="module")
def shared_server(tmp_path_factory):
    """One server for the tests that do not break it."""
    with running(RedisServer(tmp_path_factory.mktemp("shared"))) as server:
        yield server


@pytest.fixture
def server(tmp_path):
    """A server of the test's own, free to be killed, slowed and restarted."""
    with running(RedisServer(tmp_path / "redis")) as server:
        yield server


@pytest.fixture
async def stores():
    """Make RedisHealthStores that are all closed when the test ends."""
    made: list[RedisHealthStore] = []
    prefix = f"test-{uuid.uuid4().hex[:8]}"

    def make(url: str | None = None, **kwargs) -> RedisHealthStore:
        kwargs.setdefault("key_prefix", prefix)
        kwargs.setdefault("op_timeout", OP_TIMEOUT)
        kwargs.setdefault("max_reconnect_delay", 0.2)
        store = RedisHealthStore(url, **kwargs)
        made.append(store)
        return store

    yield make
    for store in made:
        await store.close()


# Rules that never eject: these tests are about counting, not ejecting.
COUNT_ONLY = HealthPolicy(consecutive=10_000, min_volume=10_000, window=3600, bucket=600)


async def failed(
    store: HealthStore,
    provider_id: str,
    reason: FailureReason = FailureReason.ERROR,
    *,
    policy: HealthPolicy = COUNT_ONLY,
    peers: tuple[str, ...] = ("rime",),
) -> AttemptVerdict:
    """Record a failed attempt (by default one that ejects nothing)."""
    return await store.record_attempt(provider_id, reason, policy=policy, peers=peers)


async def spoke(store: HealthStore, provider_id: str) -> AttemptVerdict:
    return await store.record_attempt(provider_id, None, policy=COUNT_ONLY, peers=("rime",))


async def is_down(store: HealthStore, provider_id: str) -> bool:
    health = (await store.get([provider_id]))[provider_id]
    return health.is_down(time.time())


async def timed(awaitable):
    """Await; return ``(result, seconds taken)``."""
    started = time.monotonic()
    result = await awaitable
    return result, time.monotonic() - started


def messages(records, level: str, text: str) -> list[str]:
    return [r["message"] for r in records if r["level"].name == level and text in r["message"]]


# -- configuration, secrets, packaging -------------------------------------


@pytest.mark.parametrize(
    ("url", "masked"),
    [
        ("redis://alice:s3cret@host:6379/0", "redis://alice:***@host:6379/0"),
        ("rediss://:s3cret@host:6380", "rediss://:***@host:6380"),
        ("redis://s3cret@host", "redis://***@host"),
        ("redis://host:6379/2", "redis://host:6379/2"),
        ("unix:///run/redis.sock?db=1&password=s3cret", "unix:///run/redis.sock?db=1&password=***"),
        ("redis://alice:p%40ss:word@host", "redis://alice:***@host"),
    ],
)
def test_mask_url_hides_passwords(url, masked):
    assert mask_url(url) == masked


def test_mask_url_never_echoes_an_unparseable_url():
    assert "s3cret" not in mask_url("redis://alice:s3cret@[::1")


def test_repr_names_the_server_without_the_password():
    store = RedisHealthStore("rediss://alice:s3cret@redis.internal:6380/0")

    assert "s3cret" not in repr(store)
    assert "redis.internal:6380" in repr(store)


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({}, ValueError),
        ({"url": "redis://h", "client": object()}, ValueError),
        ({"url": "http://h"}, ValueError),
        ({"url": "redis://h", "op_timeout": 0}, ValueError),
        ({"url": "redis://h", "op_timeout": float("inf")}, ValueError),
        ({"url": "redis://h", "op_timeout": float("nan")}, ValueError),
        ({"url": "redis://h", "op_timeout": True}, TypeError),
        ({"url": "redis://h", "op_timeout": "1"}, TypeError),
        ({"url": "redis://h", "socket_timeout": float("inf")}, ValueError),
        ({"url": "redis://h", "max_reconnect_delay": "2"}, TypeError),
        ({"url": "redis://h", "key_prefix": ""}, ValueError),
        ({"sentinels": [("h", 26379)]}, ValueError),
        ({"client": object()}, TypeError),
    ],
)
def test_bad_configuration_raises_at_construction(kwargs, error):
    with pytest.raises(error):
        RedisHealthStore(**kwargs)


@pytest.mark.parametrize("value", [float("inf"), True, "1"])
def test_a_bad_op_timeout_is_named_in_the_error(value):
    with pytest.raises((TypeError, ValueError), match="op_timeout must be a"):
        RedisHealthStore("redis://h", op_timeout=value)


async def test_construction_touches_no_network():
    with captured_logs() as logs:
        store = RedisHealthStore(f"redis://127.0.0.1:{free_port()}/0")
        await asyncio.sleep(0.05)

    assert not store.connected
    assert logs == []
    await store.close()


def run_python(code: str, *args: str, timeout: float = 30) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code), *args],
        capture_output=True,
        check=False,
        text=True,
        timeout=timeout,
    )


def test_importing_the_store_package_does_not_import_redis():
    result = run_python(
        """
        import sys
        import pipecat_tts_failover.store
        print("redis" in sys.modules)
        """
    )
    assert result.stdout.strip() == "False", result.stderr


def test_a_missing_redis_package_names_the_extra():
    result = run_python(
        """
        import sys
        sys.modules["redis"] = None  # as if the extra were not installed
        try:
            from pipecat_tts_failover.store import RedisHealthStore
        except ImportError as e:
            print(e)
        """
    )
    assert 'pip install "pipecat-tts-failover[redis]"' in result.stdout, result.stderr


# -- what lives in Redis -----------------------------------------------------


async def test_records_and_changes_use_hash_tagged_keys_and_one_channel(shared_server, stores):
    store = stores(shared_server.url, key_prefix="layout")
    raw = aioredis.Redis.from_url(shared_server.url, decode_responses=True)
    listener = raw.pubsub()
    await listener.subscribe("{layout}:events")
    await store.connect()

    await store.mark_down("cartesia", reason=FailureReason.STALLED, cooldown=30)

    record = await raw.hgetall("{layout}:provider:cartesia")
    assert record["reason"] == "stalled"
    assert float(record["down_until"]) == pytest.approx(float(record["since"]) + 30)
    assert await raw.smembers("{layout}:providers") == {"cartesia"}
    assert await raw.exists("{layout}:epoch")
    message = await eventually(
        lambda: listener.get_message(ignore_subscribe_messages=True, timeout=0.1)
    )
    assert json.loads(message["data"])["p"] == "cartesia"
    await listener.aclose()
    await raw.aclose()


async def test_registered_providers_are_one_hash_tagged_list(shared_server, stores):
    store = stores(shared_server.url, key_prefix="registry")
    raw = aioredis.Redis.from_url(shared_server.url, decode_responses=True)
    # Connected first: a store still connecting waits op_timeout (50 ms here) and then
    # writes to its local view, as it should, which a loaded machine can take.
    assert await store.connect()

    await store.register_providers(["cartesia", "elevenlabs"])

    assert await raw.lrange("{registry}:registered", 0, -1) == ["cartesia", "elevenlabs"]
    await raw.aclose()


async def test_a_prefix_with_its_own_hash_tag_is_kept(shared_server, stores):
    store = stores(shared_server.url, key_prefix="{fleet-a}:tts")
    raw = aioredis.Redis.from_url(shared_server.url, decode_responses=True)
    # Connected first: a store still connecting waits op_timeout (50 ms here) and then
    # writes to its local view, as it should, which a loaded machine can take.
    assert await store.connect()

    await failed(store, "cartesia")

    assert await raw.hget("{fleet-a}:tts:provider:cartesia", "failures") == "1"
    assert await raw.hgetall("{fleet-a}:tts:window:cartesia") != {}
    await raw.aclose()


async def test_get_answers_from_the_local_view_without_a_round_trip(shared_server, stores):
    store = stores(shared_server.url)
    await store.connect()
    await store.mark_down("cartesia", reason=FailureReason.ERROR, cooldown=30)
    raw = aioredis.Redis.from_url(shared_server.url)

    before = (await raw.info("stats"))["total_commands_processed"]
    for _ in range(200):
        assert (await store.get(["cartesia", "elevenlabs"]))["cartesia"].down_until is not None
    after = (await raw.info("stats"))["total_commands_processed"]

    assert after - before <= 2  # our own INFO, and perhaps a subscription PING
    await raw.aclose()


async def test_hundreds_of_attempts_at_once_wait_for_a_connection_instead_of_failing(
    shared_server, stores
):
    # 500 calls' writes at once: more than the store's connection pool holds.
    store = stores(shared_server.url, op_timeout=5.0)
    assert await store.connect()
    with captured_logs() as records:
        verdicts = await asyncio.gather(*(spoke(store, "cartesia") for _ in range(300)))
    assert all(v.attempts >= 1 for v in verdicts)
    assert max(v.attempts for v in verdicts) == 300
    assert messages(records, "WARNING", "") == []


@pytest.mark.parametrize("monitored", [True, False])
async def test_a_reply_that_waited_on_a_lagging_loop_is_not_taken_for_redis_gone(
    shared_server, stores, monitored
):
    # The loop stalls for 0.3 s while an attempt is in flight (a worker
    # overloaded by its own calls): Redis answered in time, the loop did not
    # look. With the loop's lag measured, the op timeout gives that time back.
    monitor = loop_lag_monitor()
    if monitored:
        monitor.acquire()
    try:
        store = stores(shared_server.url)
        assert await store.connect()

        # Runs at the attempt's first wait, with its timeout already running.
        asyncio.get_running_loop().call_soon(time.sleep, 0.3)
        await store.record_attempt("cartesia", None, policy=HealthPolicy())
        # Without the monitor the timeout fires in the late turn: Redis "gone".
        assert store.connected is monitored
    finally:
        if monitored:
            await monitor.release()


async def test_an_attempt_is_one_script_call(shared_server, stores):
    store = stores(shared_server.url)
    assert await store.connect()
    raw = aioredis.Redis.from_url(shared_server.url)

    async def script_calls() -> tuple[int, int]:
        stats = await raw.info("commandstats")
        return tuple(stats.get(f"cmdstat_{c}", {}).get("calls", 0) for c in ("evalsha", "eval"))

    before = await script_calls()
    for i in range(100):
        await store.record_attempt(
            "cartesia",
            FailureReason.ERROR if i % 2 else None,
            policy=HealthPolicy(),
            peers=["elevenlabs", "rime"],
        )
    after = await script_calls()

    # One EVALSHA per attempt: no separate read, no script loaded on the way.
    assert (after[0] - before[0], after[1] - before[1]) == (100, 0)
    await raw.aclose()


async def test_an_attempt_keeps_its_evidence_on_hash_tagged_keys_and_publishes_it(
    shared_server, stores
):
    store = stores(shared_server.url, key_prefix="evidence")
    raw = aioredis.Redis.from_url(shared_server.url, decode_responses=True)
    listener = raw.pubsub()
    await listener.subscribe("{evidence}:events")
    assert await store.connect()
    policy = HealthPolicy(consecutive=2)

    await failed(store, "cartesia", policy=policy, peers=("elevenlabs",))
    window = await raw.hgetall("{evidence}:window:cartesia")
    assert len(window) == 2 and {k[:2] for k in window} == {"a:", "f:"}
    assert 0 < await raw.ttl("{evidence}:window:cartesia") <= policy.window + policy.bucket + 1
    message = await eventually(
        lambda: listener.get_message(ignore_subscribe_messages=True, timeout=0.1)
    )
    assert json.loads(message["data"]) == {
        "p": "cartesia",
        "rev": 1,
        "failures": 1,
        "attempts": 1,
        "window_failures": 1,
        "ejections": 0,
    }

    assert (await failed(store, "cartesia", policy=policy, peers=("elevenlabs",))).ejected
    record = await raw.hgetall("{evidence}:provider:cartesia")
    assert (record["ejections"], record["ejection_count"], record["failures"]) == ("1", "1", "2")
    assert record["ejected_at"] == record["since"]
    assert not await raw.exists("{evidence}:window:cartesia")  # the window starts afresh
    message = await eventually(
        lambda: listener.get_message(ignore_subscribe_messages=True, timeout=0.1)
    )
    assert json.loads(message["data"])["ejections"] == 1
    assert json.loads(message["data"])["reason"] == "error"
    await listener.aclose()
    await raw.aclose()


async def test_locks_and_controls_use_hash_tagged_keys_and_the_channel(shared_server, stores):
    store = stores(shared_server.url, key_prefix="layout2")
    raw = aioredis.Redis.from_url(shared_server.url, decode_responses=True)
    listener = raw.pubsub()
    await listener.subscribe("{layout2}:events")
    assert await store.connect()

    assert await store.try_lock("probe:cartesia", 30)
    assert 0 < await raw.pttl("{layout2}:lock:probe:cartesia") <= 30_000
    await store.release_lock("probe:cartesia")
    assert not await raw.exists("{layout2}:lock:probe:cartesia")

    await store.set_controls(Controls(pinned="elevenlabs", failover_enabled=False))
    record = await raw.hgetall("{layout2}:controls")
    assert json.loads(record["value"]) == {"pinned": "elevenlabs", "failover_enabled": False}
    message = await eventually(
        lambda: listener.get_message(ignore_subscribe_messages=True, timeout=0.1)
    )
    assert json.loads(message["data"])["k"] == "controls"
    await listener.aclose()
    await raw.aclose()


async def test_a_lock_that_ran_out_and_was_taken_by_another_is_not_released(shared_server, stores):
    first, second, third = (stores(shared_server.url) for _ in range(3))
    for store in (first, second, third):
        assert await store.connect()

    assert await first.try_lock("probe:cartesia", 0.1)
    await asyncio.sleep(0.2)
    assert await second.try_lock("probe:cartesia", 30)

    await first.release_lock("probe:cartesia")  # too late: the lock is second's now

    assert not await third.try_lock("probe:cartesia", 30)
    await second.release_lock("probe:cartesia")
    assert await third.try_lock("probe:cartesia", 30)


async def test_controls_written_while_a_store_was_unsubscribed_are_read_on_resubscribe(
    shared_server, stores
):
    store = stores(shared_server.url)
    assert await store.connect()
    raw = aioredis.Redis.from_url(shared_server.url, decode_responses=True)
    key = f"{{{store._keys.prefix}}}:controls"

    # Written without a message, as if published while the store was away...
    value = json.dumps({"pinned": "elevenlabs", "failover_enabled": True, "later": 1})
    await raw.hset(key, mapping={"rev": 5, "value": value})
    assert await store.get_controls() == Controls()
    # ...then the subscription drops: the resynchronization brings them.
    await raw.client_kill_filter(_type="pubsub")
    await eventually(
        lambda: _controls_are(store, Controls(pinned="elevenlabs")),
        what="the controls to be read on resubscribe",
    )
    await raw.aclose()


async def _controls_are(store, expected) -> bool:
    return await store.get_controls() == expected


async def test_a_client_passed_in_is_left_open(shared_server, stores):
    client = aioredis.Redis.from_url(shared_server.url)
    store = stores(client=client)
    await failed(store, "cartesia")

    await store.close()
    await store.close()

    assert await client.ping()
    await client.aclose()


async def test_an_acl_user_in_the_url_is_used_and_never_logged(server, stores):
    server.command("ACL", "SETUSER", "tts", "on", ">s3cret-pw", "~*", "&*", "+@all")
    server.command("ACL", "SETUSER", "default", "off")
    with captured_logs() as logs:
        good = stores(f"redis://tts:s3cret-pw@127.0.0.1:{server.port}/0")
        bad = stores(f"redis://tts:wrong-pw@127.0.0.1:{server.port}/0")
        assert await good.connect(timeout=2)
        assert not await bad.connect(timeout=0.3)
        assert await good.mark_down("cartesia", reason=FailureReason.ERROR, cooldown=30)
        server.kill()
        await failed(good, "cartesia")

    text = "\n".join(r["message"] for r in logs) + repr(good) + repr(bad)
    assert "AuthenticationError" in text or "WRONGPASS" in text
    assert "s3cret-pw" not in text and "wrong-pw" not in text


async def test_rediss_urls_connect_over_tls(tmp_path, stores):
    tls = make_tls_files(tmp_path / "tls")
    tls_port = free_port()
    server = RedisServer(
        tmp_path / "redis",
        extra_args=(
            "--tls-port",
            str(tls_port),
            "--tls-cert-file",
            str(tls["cert"]),
            "--tls-key-file",
            str(tls["key"]),
            "--tls-ca-cert-file",
            str(tls["ca"]),
            "--tls-auth-clients",
            "no",
        ),
    )
    with running(server):
        secure = stores(
            f"rediss://127.0.0.1:{tls_port}/0", connection_options={"ssl_ca_certs": str(tls["ca"])}
        )
        plain = stores(server.url)
        assert await secure.connect() and await plain.connect()

        assert await secure.mark_down("cartesia", reason=FailureReason.ERROR, cooldown=30)
        await eventually(lambda: is_down(plain, "cartesia"))


# -- the same rules as in memory ------------------------------------------------


class FakeClock:
    def __init__(self, now: float = 1_700_000_000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now


async def test_redis_reaches_every_verdict_the_memory_store_reaches(shared_server, stores):
    # record_attempt.lua restates HealthWindow's rules; one random history (attempts
    # of every kind, mark-downs and mark-ups, time jumping across buckets, windows
    # and forgiveness) must give the same verdicts and records, to the last bit.
    clock = FakeClock()
    memory = InMemoryHealthStore(clock=clock)
    redis_store = stores(shared_server.url, clock=clock, op_timeout=2.0)
    assert await redis_store.connect()
    policy = HealthPolicy(
        consecutive=4,
        min_volume=6,
        window=10,
        bucket=2.5,
        ejection=8,
        max_ejection=30,
        jitter=0.2,
        forgive_after=40,
    )
    rng = random.Random(13)
    ids = ["cartesia", "elevenlabs", "rime"]
    outcomes = [None, None, None, FailureReason.ERROR, FailureReason.STALLED]
    seen = collections.Counter()
    ejections = dict.fromkeys(ids, 0)
    for step in range(3000):
        pid = rng.choice(ids)
        roll = rng.random()
        if roll < 0.03:
            results = [await s.mark_up(pid) for s in (memory, redis_store)]
        elif roll < 0.12:
            results = [
                await s.mark_down(pid, reason=FailureReason.OPERATOR, cooldown=20)
                for s in (memory, redis_store)
            ]
        else:
            failure = FailureReason.UNUSABLE if roll > 0.99 else rng.choice(outcomes)
            others = [p for p in ids if p != pid]
            peers = rng.choice([others, others[:1], others[1:]])
            draw = rng.uniform(-1, 1)
            results = [
                await s.record_attempt(pid, failure, policy=policy, peers=peers, draw=draw)
                for s in (memory, redis_store)
            ]
            verdict = results[0]
            seen[verdict.rule or ("spared" if verdict.spared else "none")] += 1
            seen["forgiven"] += verdict.ejections < ejections[pid]
            seen["longer"] += verdict.ejected and verdict.ejections >= 2
            ejections[pid] = verdict.ejections
        assert results[0] == results[1], step
        assert await memory.get(ids) == await redis_store.get(ids), step
        clock.now += rng.choice([0, 0, 0.1, 0.7, 1.3, 2.5, 6.1])

    # The history exercised every rule, the panic floor and forgiveness.
    assert all(seen[k] >= 5 for k in ("consecutive", "rate", "permanent", "spared")), seen
    assert seen["forgiven"] >= 5 and seen["longer"] >= 5, seen


# -- propagation -------------------------------------------------------------


async def test_another_store_sees_a_mark_down_and_mark_up_promptly(shared_server, stores):
    writer, reader = stores(shared_server.url), stores(shared_server.url)
    assert await writer.connect() and await reader.connect()

    await writer.mark_down("cartesia", reason=FailureReason.NO_FIRST_AUDIO, cooldown=30)
    _, took = await timed(eventually(lambda: is_down(reader, "cartesia"), timeout=2))
    assert took < 1.0  # loosely; the benchmark measures it

    await writer.mark_up("cartesia")
    await eventually(lambda: _not(is_down(reader, "cartesia")), timeout=2)


async def _not(awaitable) -> bool:
    return not await awaitable


CHILD = """
import asyncio, sys
from pipecat_tts_failover.detection import FailureReason
from pipecat_tts_failover.store.redis import RedisHealthStore

async def main(url, prefix):
    store = RedisHealthStore(url, key_prefix=prefix, op_timeout=2.0)
    assert await store.connect(timeout=10)
    changed = await store.mark_down("cartesia", reason=FailureReason.STALLED, cooldown=30)
    print("changed" if changed else "unchanged", flush=True)
    await store.close()

asyncio.run(main(sys.argv[1], sys.argv[2]))
"""


async def test_workers_in_other_processes_share_one_incident(shared_server, stores):
    prefix = f"procs-{uuid.uuid4().hex[:8]}"
    here = stores(shared_server.url, key_prefix=prefix)
    assert await here.connect()

    children = [
        await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            CHILD,
            shared_server.url,
            prefix,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        for _ in range(4)
    ]
    outputs = [await asyncio.wait_for(c.communicate(), timeout=60) for c in children]

    verdicts = sorted(out.decode().strip() for out, _ in outputs)
    assert verdicts == ["changed", "unchanged", "unchanged", "unchanged"], outputs
    await eventually(lambda: is_down(here, "cartesia"), timeout=2)


ATTEMPTS_CHILD = """
import asyncio, json, sys, time
from pipecat_tts_failover.detection import FailureReason
from pipecat_tts_failover.health import HealthPolicy
from pipecat_tts_failover.store.redis import RedisHealthStore

async def main(url, prefix, count):
    store = RedisHealthStore(url, key_prefix=prefix, op_timeout=2.0)
    assert await store.connect(timeout=10)
    policy = HealthPolicy(consecutive=5, min_volume=10_000, ejection=600, max_ejection=600)
    print(json.dumps({"ready": True}), flush=True)
    await asyncio.to_thread(sys.stdin.readline)  # "go": every worker starts at once
    verdicts = []
    for _ in range(count):
        verdicts.append(
            await store.record_attempt(
                "cartesia", FailureReason.ERROR, policy=policy, peers=["elevenlabs"]
            )
        )
    # This worker's view shows the ejection, whichever worker decided it.
    deadline = time.monotonic() + 10
    while not (await store.get(["cartesia"]))["cartesia"].is_down(time.time()):
        assert time.monotonic() < deadline, "the ejection never reached this worker"
        await asyncio.sleep(0.01)
    health = (await store.get(["cartesia"]))["cartesia"]
    print(json.dumps({
        "ejected": sum(v.ejected for v in verdicts),
        "rules": [v.rule for v in verdicts if v.ejected],
        "down_until": health.down_until,
        "ejections": health.ejections,
    }), flush=True)
    await store.close()

asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3])))
"""


async def test_two_worker_processes_eject_a_provider_once_and_both_see_it(shared_server, stores):
    prefix = f"procs-{uuid.uuid4().hex[:8]}"
    here = stores(shared_server.url, key_prefix=prefix)
    assert await here.connect()
    count = 40
    children = [
        await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            ATTEMPTS_CHILD,
            shared_server.url,
            prefix,
            str(count),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        for _ in range(2)
    ]
    try:
        for child in children:
            line = await asyncio.wait_for(child.stdout.readline(), timeout=60)
            assert json.loads(line) == {"ready": True}, (await child.stderr.read()).decode()
        for child in children:
            child.stdin.write(b"go\n")
            await child.stdin.drain()
        outputs = [await asyncio.wait_for(c.communicate(), timeout=60) for c in children]
    finally:
        for child in children:
            if child.returncode is None:
                child.kill()
                await child.wait()

    assert [c.returncode for c in children] == [0, 0], [err.decode() for _, err in outputs]
    reports = [json.loads(out) for out, _ in outputs]
    assert sum(r["ejected"] for r in reports) == 1, reports
    assert [rule for r in reports for rule in r["rules"]] == ["consecutive"]
    # Both workers saw the same ejection: one end, one ejection counted.
    assert reports[0]["down_until"] == reports[1]["down_until"]
    assert [r["ejections"] for r in reports] == [1, 1]

    # No attempt lost between the processes: all in a row; the window holds those
    # that came after the five that ejected.
    async def settled():
        health = (await here.get(["cartesia"]))["cartesia"]
        evidence = (health.failures, health.attempts, health.window_failures)
        return evidence == (2 * count, 2 * count - 5, 2 * count - 5)

    await eventually(settled, what="both workers' attempts to be counted")
    assert await is_down(here, "cartesia")


# -- concurrency -------------------------------------------------------------


async def test_many_workers_count_exactly_and_one_marks_each_incident_down(shared_server, stores):
    workers = [stores(shared_server.url, op_timeout=5.0) for _ in range(30)]
    assert all(await asyncio.gather(*(w.connect() for w in workers)))

    verdicts = await asyncio.gather(*(failed(w, "cartesia") for w in workers for _ in range(10)))
    assert sorted(v.consecutive for v in verdicts) == list(range(1, 301))
    assert sorted(v.attempts for v in verdicts) == list(range(1, 301))
    await asyncio.gather(*(w.mark_up("cartesia") for w in workers))

    ejecting = HealthPolicy(consecutive=1)
    for incident in (1, 2, 3):
        verdicts = await asyncio.gather(
            *(failed(w, "cartesia", policy=ejecting, peers=("elevenlabs",)) for w in workers)
        )
        assert [v.ejected for v in verdicts].count(True) == 1
        assert {v.down_until for v in verdicts} == {verdicts[0].down_until}
        assert max(v.ejections for v in verdicts) == incident
        ups = await asyncio.gather(*(w.mark_up("cartesia") for w in workers))
        assert ups.count(True) == 1

    for _incident in range(3):
        downs = await asyncio.gather(
            *(w.mark_down("cartesia", reason=FailureReason.ERROR, cooldown=30) for w in workers)
        )
        assert downs.count(True) == 1
        ups = await asyncio.gather(*(w.mark_up("cartesia") for w in workers))
        assert ups.count(True) == 1

    await eventually(lambda: _all_failures(workers, "cartesia", 0), what="every view to settle")


async def _all_failures(workers, provider_id, expected) -> bool:
    views = await asyncio.gather(*(w.get([provider_id]) for w in workers))
    return all(v[provider_id].failures == expected for v in views)


# -- faults ------------------------------------------------------------------


async def test_unreachable_at_start_answers_locally_then_writes_back(tmp_path, stores):
    port = free_port()
    url = f"redis://127.0.0.1:{port}/0"
    store = stores(url)
    with captured_logs() as logs:
        downed, took = await timed(
            store.mark_down("cartesia", reason=FailureReason.ERROR, cooldown=30)
        )
        assert downed is True and took < PROMPT
        policy = HealthPolicy(consecutive=3)
        ejected = []
        for _ in range(20):
            verdict, took = await timed(failed(store, "elevenlabs", policy=policy))
            assert took < PROMPT
            ejected.append(verdict.ejected)
        # Judged on the local view: the third failure in a row ejects, once.
        assert ejected == [False, False, True] + [False] * 17
        assert await is_down(store, "cartesia") and await is_down(store, "elevenlabs")

        with running(RedisServer(tmp_path / "late", port=port)):
            await eventually(lambda: store.connected, what="the store to reconnect")
            other = stores(url)
            assert await other.connect()
            health = await other.get(["cartesia", "elevenlabs"])
            assert health["cartesia"].reason is FailureReason.ERROR
            # The ejection is written back as a mark-down; the attempts are not.
            assert health["elevenlabs"].is_down(time.time())
            assert health["elevenlabs"].reason is FailureReason.ERROR
            assert health["elevenlabs"].failures == 0

    assert len(messages(logs, "WARNING", "unavailable")) == 1
    assert len(messages(logs, "INFO", "reachable again")) == 1


async def test_killed_while_idle_then_restarted_empty_converges(server, stores):
    a, b = stores(server.url), stores(server.url)
    assert await a.connect() and await b.connect()
    await a.mark_down("cartesia", reason=FailureReason.STALLED, cooldown=30)
    await eventually(lambda: is_down(b, "cartesia"))

    server.kill()
    await eventually(lambda: not a.connected and not b.connected, what="the outage to be noticed")
    downed, took = await timed(a.mark_down("elevenlabs", reason=FailureReason.ERROR, cooldown=30))
    assert downed is True and took < PROMPT
    assert await is_down(b, "cartesia")  # the local view outlives Redis

    server.start()  # empty: no persistence
    await eventually(lambda: a.connected and b.connected, what="both stores to reconnect")
    await eventually(lambda: is_down(b, "elevenlabs"), what="the pending mark-down to reach b")
    late = stores(server.url)
    assert await late.connect()
    # Redis forgot the earlier mark-down; the stores wrote it back from their views.
    assert await is_down(late, "cartesia") and await is_down(late, "elevenlabs")


async def test_registrations_made_in_an_outage_or_lost_by_redis_are_written_back(server, stores):
    a, b = stores(server.url), stores(server.url)
    assert await a.connect() and await b.connect()
    await a.register_providers(["cartesia", "elevenlabs"])

    server.kill()
    await eventually(lambda: not a.connected and not b.connected, what="the outage to be noticed")
    _, took = await timed(b.register_providers(["rime", "cartesia"]))
    assert took < PROMPT
    assert await b.registered_providers() == ["rime", "cartesia"]  # what b knows

    server.start()  # empty: a's registration is gone from Redis
    await eventually(lambda: a.connected and b.connected, what="both stores to reconnect")
    late = stores(server.url)
    assert await late.connect()
    # Whichever store wrote back first, the merged order is the same.
    assert await late.registered_providers() == ["rime", "cartesia", "elevenlabs"]


async def test_killed_during_use_every_call_stays_prompt(server, stores):
    a, b = stores(server.url), stores(server.url)
    assert await a.connect() and await b.connect()
    slowest = 0.0
    stop = asyncio.Event()

    async def hammer():
        nonlocal slowest
        i = 0
        while not stop.is_set():
            started = time.monotonic()
            await failed(a, "cartesia")
            await a.get(["cartesia", "elevenlabs"])
            if i % 10 == 0:
                await spoke(a, "cartesia")
            slowest = max(slowest, time.monotonic() - started)
            i += 1
            await asyncio.sleep(0.001)

    task = asyncio.create_task(hammer())
    try:
        await asyncio.sleep(0.1)
        server.kill()
        await eventually(lambda: not a.connected)
        assert await a.mark_down("elevenlabs", reason=FailureReason.ERROR, cooldown=30)
        await asyncio.sleep(0.1)
        server.start()
        await eventually(lambda: a.connected, what="a to reconnect")
        await asyncio.sleep(0.1)
    finally:
        stop.set()
        await task

    assert slowest < PROMPT
    await eventually(lambda: is_down(b, "elevenlabs"), what="the mark-down made in the outage")


async def test_a_slow_redis_does_not_slow_callers(server, stores):
    a, b = stores(server.url), stores(server.url)
    assert await a.connect() and await b.connect()

    sleeper = server.sleep(0.5)
    try:
        downed, took = await timed(
            a.mark_down("cartesia", reason=FailureReason.STALLED, cooldown=30)
        )
        assert downed is True and took < PROMPT
        _, took = await timed(failed(a, "cartesia", FailureReason.STALLED))
        assert took < PROMPT
        assert await is_down(a, "cartesia")
    finally:
        await asyncio.to_thread(sleeper.wait, 5)

    await eventually(lambda: is_down(b, "cartesia"), what="the mark-down to reach b")
    assert not await b.mark_down("cartesia", reason=FailureReason.ERROR, cooldown=30)


async def test_an_attempt_that_reached_a_slow_redis_is_counted_once(server, stores):
    a = stores(server.url)
    assert await a.connect()

    sleeper = server.sleep(0.5)
    try:
        # Sent, but unanswered within op_timeout: the store judges it on its
        # local view, while Redis runs the script once it wakes up.
        assert (await failed(a, "cartesia")).consecutive == 1
        assert not a.connected
    finally:
        await asyncio.to_thread(sleeper.wait, 5)

    await eventually(lambda: a.connected, what="a to reconnect")
    b = stores(server.url)
    assert await b.connect()
    health = (await b.get(["cartesia"]))["cartesia"]
    assert (health.failures, health.attempts) == (1, 1)
    verdict = await failed(a, "cartesia")
    assert (verdict.consecutive, verdict.attempts) == (2, 2)


async def test_changes_made_in_an_outage_are_written_back_in_order(server, stores):
    a = stores(server.url)
    assert await a.connect()
    await failed(a, "elevenlabs")
    await a.mark_down("playht", reason=FailureReason.ERROR, cooldown=30)
    ejecting = HealthPolicy(consecutive=3)

    # Asleep, Redis keeps its data: the write-back lands on top of it.
    sleeper = server.sleep(1.0)
    try:
        # cartesia: down, back up, then two fresh failures.
        assert await a.mark_down("cartesia", reason=FailureReason.STALLED, cooldown=30)
        assert not a.connected
        assert await a.mark_up("cartesia")
        await failed(a, "cartesia")
        await failed(a, "cartesia")
        # elevenlabs: one failure known before; a success, then three in a row eject it.
        assert (await spoke(a, "elevenlabs")).consecutive == 0
        verdicts = [
            await failed(a, "elevenlabs", FailureReason.STALLED, policy=ejecting) for _ in range(3)
        ]
        assert [v.ejected for v in verdicts] == [False, False, True]
        # playht: brought back up while Redis was away.
        assert await a.mark_up("playht")
        assert sleeper.poll() is None, "Redis woke up before the test was done"
    finally:
        await asyncio.to_thread(sleeper.wait, 5)

    await eventually(lambda: a.connected, what="a to reconnect")
    b = stores(server.url)
    assert await b.connect()
    health = await b.get(["cartesia", "elevenlabs", "playht"])
    assert health["cartesia"].down_until is None
    assert health["elevenlabs"].is_down(time.time())
    assert health["elevenlabs"].reason is FailureReason.STALLED
    assert health["playht"].down_until is None
    # The attempts themselves are not written back: Redis kept its own runs of failures.
    assert (health["elevenlabs"].ejections, health["elevenlabs"].failures) == (1, 1)
    assert (health["cartesia"].failures, health["cartesia"].attempts) == (0, 0)


async def test_in_an_outage_attempts_are_judged_on_the_local_view(server, stores):
    a = stores(server.url)
    assert await a.connect()
    policy = HealthPolicy(consecutive=3, ejection=30, jitter=0.0)
    assert [(await failed(a, "cartesia", policy=policy)).ejected for _ in range(3)] == [
        False,
        False,
        True,
    ]
    await a.mark_up("cartesia")
    await failed(a, "cartesia", policy=policy)
    await failed(a, "cartesia", policy=policy)

    server.kill()
    await eventually(lambda: not a.connected, what="the outage to be noticed")
    # The fleet's run of two failures and its one past ejection carry into the outage.
    verdict, took = await timed(failed(a, "cartesia", policy=policy))
    assert took < PROMPT
    assert (verdict.ejected, verdict.rule, verdict.ejections) == (True, "consecutive", 2)
    assert verdict.down_until == pytest.approx(time.time() + 60, abs=5)
    assert await is_down(a, "cartesia")
    # The panic floor holds on the local view too: elevenlabs' only peer is down.
    await failed(a, "elevenlabs", policy=policy, peers=("cartesia",))
    await failed(a, "elevenlabs", policy=policy, peers=("cartesia",))
    spared = await failed(a, "elevenlabs", policy=policy, peers=("cartesia",))
    assert (spared.ejected, spared.spared) == (False, True)

    server.start()  # empty: the ejection is written back, with its count
    await eventually(lambda: a.connected, what="a to reconnect")
    late = stores(server.url)
    assert await late.connect()
    assert await is_down(late, "cartesia") and not await is_down(late, "elevenlabs")
    health = (await late.get(["cartesia"]))["cartesia"]
    assert (health.reason, health.ejections, health.failures) == (FailureReason.ERROR, 2, 0)
    # So the next ejection is the third, and lasts three times as long.
    await late.mark_up("cartesia")
    verdicts = [await failed(late, "cartesia", policy=policy) for _ in range(3)]
    assert (verdicts[-1].ejected, verdicts[-1].ejections) == (True, 3)


async def test_each_outage_judges_from_what_redis_said_last(server, stores):
    a = stores(server.url)
    assert await a.connect()
    policy = HealthPolicy(consecutive=3)

    server.kill()
    await eventually(lambda: not a.connected, what="the first outage to be noticed")
    assert (await failed(a, "cartesia", policy=policy)).consecutive == 1
    assert (await failed(a, "cartesia", policy=policy)).consecutive == 2
    server.start()
    await eventually(lambda: a.connected, what="a to reconnect")
    # Redis never heard of those two: the view now says no failures in a row.
    assert (await a.get(["cartesia"]))["cartesia"].failures == 0

    server.kill()
    await eventually(lambda: not a.connected, what="the second outage to be noticed")
    verdict = await failed(a, "cartesia", policy=policy)

    assert (verdict.ejected, verdict.consecutive) == (False, 1)


async def test_a_mark_up_owed_from_an_outage_keeps_a_later_mark_down(shared_server):
    # The write-back of a mark-up made at t=100 must not clear a mark-down made at
    # t=200 by a worker that could still reach Redis; a live mark-up (no time) does.
    keys = Keys("guard")
    raw = aioredis.Redis.from_url(shared_server.url, decode_responses=True)
    mark_down = raw.register_script(script_source("mark_down"))
    mark_up = raw.register_script(script_source("mark_up"))
    record = [keys.provider("cartesia"), keys.index]

    def args(*rest):
        return [keys.channel, "cartesia", *rest]

    assert (await mark_down(keys=record, args=args(200, 500, "error", 200)))[0] == 1
    assert (await mark_up(keys=record, args=args(250, 100)))[0] == 0
    assert await raw.hget(keys.provider("cartesia"), "down_until") == "500"
    assert (await mark_up(keys=record, args=args(250, "")))[0] == 1
    assert await raw.hget(keys.provider("cartesia"), "down_until") is None
    await raw.aclose()


async def test_an_extension_made_in_an_outage_is_written_back(server, stores):
    a = stores(server.url)
    assert await a.connect()
    assert await a.mark_down("cartesia", reason=FailureReason.STALLED, cooldown=30)
    until = (await a.get(["cartesia"]))["cartesia"].down_until

    sleeper = server.sleep(1.0)
    try:
        extended, took = await timed(a.extend_down("cartesia", 300))
        assert extended is True and took < PROMPT
        assert not a.connected
        assert (await a.get(["cartesia"]))["cartesia"].down_until > until + 200
        assert await a.extend_down("elevenlabs", 300) is False  # up: nothing owed
        assert sleeper.poll() is None, "Redis woke up before the test was done"
    finally:
        await asyncio.to_thread(sleeper.wait, 5)

    await eventually(lambda: a.connected, what="a to reconnect")
    b = stores(server.url)
    assert await b.connect()
    health = await b.get(["cartesia", "elevenlabs"])
    assert health["cartesia"].down_until > until + 200
    assert health["cartesia"].reason is FailureReason.STALLED
    assert health["elevenlabs"].down_until is None


async def test_in_an_outage_no_lock_is_taken_and_controls_stay_as_last_known(server, stores):
    a = stores(server.url)
    assert await a.connect()
    await a.set_controls(Controls(pinned="elevenlabs"))
    assert await a.try_lock("probe:elevenlabs", 30)

    server.kill()
    taken, took = await timed(a.try_lock("probe:cartesia", 30))
    assert taken is False and took < PROMPT
    _, took = await timed(a.release_lock("probe:elevenlabs"))
    assert took < PROMPT
    controls, took = await timed(a.get_controls())
    assert controls == Controls(pinned="elevenlabs") and took < PROMPT
    # An operator's change must not be lost quietly.
    with pytest.raises(HealthStoreError, match="could not set the controls"):
        await a.set_controls(Controls(failover_enabled=False))
    assert await a.get_controls() == Controls(pinned="elevenlabs")

    server.start()  # empty
    await eventually(lambda: a.connected, what="a to reconnect")
    assert await a.try_lock("probe:cartesia", 30)
    # Redis lost the controls; the store wrote back the ones it knew.
    late = stores(server.url)
    assert await late.get_controls() == Controls(pinned="elevenlabs")
    await a.set_controls(Controls(failover_enabled=False))
    await eventually(lambda: _controls_are(late, Controls(failover_enabled=False)))


async def test_setting_controls_on_a_slow_redis_waits_for_it(server, stores):
    a, b = stores(server.url), stores(server.url)
    assert await a.connect() and await b.connect()

    sleeper = server.sleep(0.5)
    try:
        await a.set_controls(Controls(pinned="elevenlabs"))  # waits out the sleep
    finally:
        await asyncio.to_thread(sleeper.wait, 5)

    await eventually(lambda: _controls_are(b, Controls(pinned="elevenlabs")))


async def test_set_controls_after_close_raises(shared_server, stores):
    store = stores(shared_server.url)
    await store.close()

    with pytest.raises(HealthStoreError, match="closed"):
        await store.set_controls(Controls())
    with pytest.raises(TypeError, match="Controls"):
        await stores(shared_server.url).set_controls({"pinned": None})


async def test_a_busy_event_loop_never_ends_the_caller_s_task(shared_server, stores):
    # When the loop is busy past op_timeout, the deadline and Redis's reply land in
    # the same loop iteration; on Python 3.11 redis-py then raises a CancelledError
    # subclass, which must not escape (it would end a processor's store writer).
    store = stores(shared_server.url)
    assert await store.connect()
    escaped = []
    for i in range(40):
        call = asyncio.create_task(failed(store, "cartesia"))
        for _ in range(i % 5):  # let it get to different points of the round trip
            await asyncio.sleep(0)
        time.sleep(OP_TIMEOUT + 0.01)  # noqa: ASYNC251 - the point: a blocked loop
        try:
            assert (await call).consecutive >= 1
        except asyncio.CancelledError as e:
            escaped.append(type(e).__name__)
        await asyncio.sleep(0.005)

    assert escaped == []


async def test_an_outage_is_logged_once_and_the_recovery_once(server, stores):
    store = stores(server.url)
    assert await store.connect()

    with captured_logs() as logs:
        for outage in range(2):
            server.kill()
            for _ in range(30):
                await failed(store, "cartesia")
                await store.get(["cartesia"])
            await store.mark_down("cartesia", reason=FailureReason.ERROR, cooldown=30)
            server.start()
            await eventually(lambda: store.connected, what="the store to reconnect")

    assert len(messages(logs, "WARNING", "unavailable")) == 2
    assert len(messages(logs, "INFO", "reachable again")) == 2


async def test_close_stops_the_background_task(shared_server, stores):
    store = stores(shared_server.url)
    assert await store.connect()
    tasks = {t for t in asyncio.all_tasks() if "RedisHealthStore" in t.get_name()}
    assert tasks

    await store.close()
    await store.close()

    assert all(t.done() for t in tasks)
    assert not store.connected


# -- Redis Cluster and Sentinel --------------------------------------------


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    with running(RedisCluster(tmp_path_factory.mktemp("cluster"))) as cluster:
        yield cluster


async def test_cluster_keeps_every_key_in_one_slot_and_propagates(cluster, stores):
    a = stores(cluster.url, cluster=True, op_timeout=1.0, key_prefix="fleet")
    b = stores(cluster.nodes[2].url, cluster=True, op_timeout=1.0, key_prefix="fleet")
    assert await a.connect() and await b.connect()

    assert await a.mark_down("cartesia", reason=FailureReason.ERROR, cooldown=30)
    ejecting = HealthPolicy(consecutive=2)
    await failed(a, "elevenlabs", policy=ejecting, peers=("cartesia", "rime"))
    assert (await failed(b, "elevenlabs", policy=ejecting, peers=("cartesia", "rime"))).ejected
    await eventually(lambda: is_down(b, "cartesia"))
    await eventually(lambda: is_down(a, "elevenlabs"))
    assert not await b.mark_down("cartesia", reason=FailureReason.ERROR, cooldown=30)

    assert await a.try_lock("probe:cartesia", 30)
    assert not await b.try_lock("probe:cartesia", 30)
    await a.release_lock("probe:cartesia")
    assert await b.try_lock("probe:cartesia", 30)
    await a.set_controls(Controls(pinned="elevenlabs"))
    await eventually(lambda: _controls_are(b, Controls(pinned="elevenlabs")))
    await a.register_providers(["cartesia", "elevenlabs"])
    assert await b.registered_providers() == ["cartesia", "elevenlabs"]

    raw = aioredis.Redis.from_url(cluster.url)
    keys = [
        "{fleet}:provider:cartesia",
        "{fleet}:window:elevenlabs",
        "{fleet}:providers",
        "{fleet}:epoch",
        "{fleet}:controls",
        "{fleet}:lock:probe:cartesia",
        "{fleet}:registered",
        "{fleet}:events",
    ]
    slots = {await raw.execute_command("CLUSTER", "KEYSLOT", k) for k in keys}
    assert len(slots) == 1
    await raw.aclose()


@pytest.fixture
def sentinel(tmp_path):
    with running(RedisSentinel(tmp_path / "sentinel")) as sentinel:
        yield sentinel


async def test_sentinel_finds_the_master_and_propagates(sentinel, stores):
    a = stores(sentinels=sentinel.sentinels, service_name=sentinel.service_name, op_timeout=1.0)
    b = stores(sentinel.master.url, op_timeout=1.0)
    assert await a.connect() and await b.connect()

    assert await a.mark_down("cartesia", reason=FailureReason.ERROR, cooldown=30)
    await eventually(lambda: is_down(b, "cartesia"))
    assert "sentinel" in repr(a)


@pytest.fixture
def sentinel_with_replica(tmp_path):
    with running(RedisSentinel(tmp_path / "sentinel", replicas=1)) as sentinel:
        yield sentinel


async def test_a_sentinel_failover_is_ridden_out_on_the_local_view(sentinel_with_replica, stores):
    sentinel = sentinel_with_replica
    store = stores(
        sentinels=sentinel.sentinels, service_name=sentinel.service_name, key_prefix="failover"
    )
    assert await store.connect()
    await store.mark_down("cartesia", reason=FailureReason.ERROR, cooldown=30)
    replica = sentinel.replicas[0]
    await eventually(
        lambda: b"down_until" in (replica.command("HKEYS", "{failover}:provider:cartesia") or b""),
        what="the record to reach the replica",
    )

    with captured_logs() as logs:
        sentinel.master.kill()
        downed, took = await timed(
            store.mark_down("elevenlabs", reason=FailureReason.STALLED, cooldown=30)
        )
        assert downed is True and took < PROMPT
        await eventually(
            lambda: sentinel.master_port() == replica.port, timeout=20, what="the failover"
        )
        await eventually(
            lambda: store.connected, timeout=10, what="the store to follow the new master"
        )

    # The replica kept the old record; the mark-down made during the failover was written back.
    promoted = stores(replica.url, key_prefix="failover")
    assert await promoted.connect()
    assert await is_down(promoted, "cartesia") and await is_down(promoted, "elevenlabs")
    assert len(messages(logs, "WARNING", "lost its data")) == 0
    assert len(messages(logs, "INFO", "reachable again")) == 1
