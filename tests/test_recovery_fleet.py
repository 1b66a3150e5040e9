"""Recovery and alerts across workers sharing a real redis-server: one probe, one alert per incident."""

import asyncio

import pytest
from pipecat.frames.frames import TTSSpeakFrame

from pipecat_tts_failover import FailoverTTSService, SlackWebhookAlerter
from pipecat_tts_failover.detection import FailureReason
from pipecat_tts_failover.events import ProviderUp
from pipecat_tts_failover.health import HealthPolicy
from pipecat_tts_failover.recovery import Recovery, close_recovery
from pipecat_tts_failover.store.redis import RedisHealthStore
from tests.support.calls import EventRecorder
from tests.support.pipeline import PipelineHarness
from tests.support.redis_server import RedisServer, running
from tests.support.scripted import ScriptedTTSService, plan
from tests.test_alerts import slack  # noqa: F401 - the local Slack stand-in fixture
from tests.test_recovery import SPEECH, ScriptedProbe


@pytest.fixture(scope="module")
def redis(tmp_path_factory):
    with running(RedisServer(tmp_path_factory.mktemp("redis-recovery"))) as server:
        yield server


@pytest.fixture
async def stores(redis, request):
    """Two stores on one Redis and key prefix: two workers of one fleet."""
    made = [
        RedisHealthStore(redis.url, key_prefix=f"recovery-{request.node.name}") for _ in range(2)
    ]
    for store in made:
        assert await store.connect(timeout=5)
    yield made
    await close_recovery()
    for store in made:
        await store.close()


async def test_two_workers_racing_to_probe_run_one_probe(stores):
    calls = 0
    release = asyncio.Event()

    async def slow_probe():
        nonlocal calls
        calls += 1
        await release.wait()
        yield SPEECH

    recorders = [EventRecorder(), EventRecorder()]
    workers = [Recovery(store, first_audio_timeout=2.0) for store in stores]
    for worker, recorder in zip(workers, recorders):
        worker.add({"primary": slow_probe}, [recorder])
    assert await stores[0].mark_down("primary", reason=FailureReason.ERROR, cooldown=0.2)
    async with asyncio.timeout(5):
        while (await stores[1].get(["primary"]))["primary"].down_until is None:
            await asyncio.sleep(0.01)
    for worker in workers:
        worker.watch("primary")
    async with asyncio.timeout(10):
        while calls == 0:
            await asyncio.sleep(0.01)
    release.set()
    async with asyncio.timeout(15):
        while any(w.watching for w in workers):
            await asyncio.sleep(0.02)
    assert calls == 1
    assert sum(len(r.of(ProviderUp)) for r in recorders) == 1
    for store in stores:
        assert (await store.get(["primary"]))["primary"].down_until is None
    for worker in workers:
        await worker.aclose()


async def test_one_down_and_one_up_alert_per_incident_across_workers(stores, slack):  # noqa: F811
    probe = ScriptedProbe("speak")
    alerters = [SlackWebhookAlerter(slack.url) for _ in stores]

    def worker(store, alerter):
        return FailoverTTSService(
            services={
                "primary": ScriptedTTSService(
                    provider_index=0, faults=plan(every="error"), stall_after_words=0
                ),
                "backup": ScriptedTTSService(provider_index=1),
            },
            store=store,
            health=HealthPolicy.first_failure(1.5),  # each worker's first failure is evidence
            probes={"primary": probe},
            alerters=[alerter],
        )

    async def call(store, alerter):
        async with PipelineHarness(worker(store, alerter)) as h:
            await h.send(TTSSpeakFrame("Both workers fail at once."))
        return h

    # Both workers' calls hit the broken primary at the same time.
    calls = await asyncio.gather(*(call(s, a) for s, a in zip(stores, alerters)))
    for h in calls:
        assert h.words == ["Both", "workers", "fail", "at", "once."]

    await slack.wait_for(lambda: len(slack.delivered) >= 2)
    texts = [body["text"] for body in slack.delivered]
    assert sum("down" in t.lower() for t in texts) == 1, texts
    assert sum("recovered" in t.lower() or "back" in t.lower() for t in texts) == 1, texts
    for alerter in alerters:
        await alerter.aclose()
    assert len(slack.delivered) == 2
