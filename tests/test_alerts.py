"""Alerters: Slack webhook messages sent from their own task, never on the audio path."""

import asyncio
import socket
import time
from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp import web
from loguru import logger

from pipecat_tts_failover.alerts import CallbackAlerter, SlackWebhookAlerter
from pipecat_tts_failover.detection import FailureReason
from pipecat_tts_failover.events import (
    FailedOver,
    FailoverListener,
    ProbeFinished,
    ProviderDown,
    ProviderUp,
    SentenceAttempted,
)

SECRET_PATH = "/services/T000/B000/SECRETXYZ"
WAIT = 5.0  # seconds a test waits on a condition before it fails
FAST = 0.005  # on_event must return well within this

DOWN = ProviderDown(
    provider_id="cartesia",
    reason=FailureReason.NO_FIRST_AUDIO,
    error="websocket closed <1011>",
    since=1_700_000_000.0,
    failed_sentences=3,
)
UP = ProviderUp(provider_id="cartesia", outage_seconds=125.0)


class FakeSlack:
    """A local stand-in for a Slack incoming webhook that records what it is sent.

    Each request takes the next status from ``statuses`` (200 once they run out)
    and, if ``hold`` is set, waits on ``release`` before answering.
    """

    def __init__(self):
        self.statuses: list[int] = []
        self.hold = False
        self.release = asyncio.Event()
        self.requests: list[dict] = []  # every request, delivered or not
        self.delivered: list[dict] = []  # bodies answered with 200
        self.changed = asyncio.Condition()
        self.url = ""

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.json()
        status = self.statuses.pop(0) if self.statuses else 200
        async with self.changed:
            self.requests.append(body)
            self.changed.notify_all()
        if self.hold:
            async with asyncio.timeout(WAIT):
                await self.release.wait()
        if status == 307:  # a redirect loop: aiohttp's error names the URL it gave up on
            raise web.HTTPTemporaryRedirect(SECRET_PATH)
        if status != 200:
            headers = {"Retry-After": "0"} if status == 429 else {}
            return web.Response(status=status, text="server_error", headers=headers)
        async with self.changed:
            self.delivered.append(body)
            self.changed.notify_all()
        return web.Response(text="ok")

    async def wait_for(self, predicate) -> None:
        async with asyncio.timeout(WAIT):
            async with self.changed:
                await self.changed.wait_for(predicate)


class Logs:
    """Everything loguru logs during a test, with an event set on each WARNING."""

    def __init__(self):
        self.lines: list[str] = []
        self.warned = asyncio.Event()

    def sink(self, message) -> None:
        self.lines.append(str(message))
        if message.record["level"].no >= logger.level("WARNING").no:
            self.warned.set()

    @property
    def text(self) -> str:
        return "".join(self.lines)

    def warnings(self) -> list[str]:
        return [line for line in self.lines if "WARNING" in line]


@pytest.fixture
async def slack() -> AsyncIterator[FakeSlack]:
    fake = FakeSlack()
    app = web.Application()
    app.router.add_post(SECRET_PATH, fake.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    fake.url = f"http://127.0.0.1:{port}{SECRET_PATH}"
    yield fake
    fake.release.set()
    await runner.cleanup()


@pytest.fixture
def logs() -> AsyncIterator[Logs]:
    captured = Logs()
    sink_id = logger.add(captured.sink, level="TRACE", backtrace=True, diagnose=True)
    yield captured
    logger.remove(sink_id)
    assert "SECRETXYZ" not in captured.text, "the webhook URL leaked into the logs"


def closed_port_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}{SECRET_PATH}"


def timed_on_event(alerter: FailoverListener, event) -> float:
    start = time.perf_counter()
    alerter.on_event(event)
    return time.perf_counter() - start


def alert_tasks() -> list[asyncio.Task]:
    return [t for t in asyncio.all_tasks() if t.get_name().endswith("::alerts")]


async def test_provider_down_posts_one_slack_message_with_the_incident(slack, logs):
    alerter = SlackWebhookAlerter(slack.url)
    alerter.on_event(DOWN)
    await slack.wait_for(lambda: slack.delivered)
    await alerter.aclose()

    assert len(slack.requests) == 1
    body = slack.delivered[0]
    assert "cartesia" in body["text"] and "down" in body["text"]
    header, section = body["blocks"]
    assert header["type"] == "header"
    assert header["text"]["text"] == "TTS provider cartesia is down"
    fields = "\n".join(f["text"] for f in section["fields"])
    assert "*Provider*\ncartesia" in fields
    assert "*Reason*\n`no_first_audio`" in fields
    assert "*Since (UTC)*\n2023-11-14T22:13:20Z" in fields
    assert "*Failed sentences*\n3" in fields
    assert "websocket closed &lt;1011&gt;" in fields  # mrkdwn control characters escaped


async def test_provider_up_posts_one_slack_message_with_the_outage_length(slack, logs):
    alerter = SlackWebhookAlerter(slack.url)
    alerter.on_event(UP)
    await slack.wait_for(lambda: slack.delivered)
    await alerter.aclose()

    assert len(slack.requests) == 1
    body = slack.delivered[0]
    assert "back up" in body["text"] and "2m 05s" in body["text"]
    assert body["blocks"][0]["text"]["text"] == "TTS provider cartesia is back up"
    assert "*Outage*\n2m 05s" in [f["text"] for f in body["blocks"][1]["fields"]]


async def test_the_same_incident_is_alerted_once(slack, logs):
    alerter = SlackWebhookAlerter(slack.url)
    for _ in range(3):
        alerter.on_event(DOWN)
    alerter.on_event(UP)
    alerter.on_event(UP)
    await alerter.aclose()  # sends everything queued

    assert [b["blocks"][0]["text"]["text"] for b in slack.requests] == [
        "TTS provider cartesia is down",
        "TTS provider cartesia is back up",
    ]


async def test_a_new_incident_of_the_same_provider_is_alerted_again(slack, logs):
    alerter = SlackWebhookAlerter(slack.url)
    alerter.on_event(DOWN)
    alerter.on_event(UP)
    alerter.on_event(ProviderDown("cartesia", FailureReason.STALLED, None, DOWN.since + 600, 1))
    alerter.on_event(UP)  # same outage length, but a different incident
    await alerter.aclose()

    assert len(slack.delivered) == 4


async def test_other_events_are_not_alerted(slack, logs):
    alerter = SlackWebhookAlerter(slack.url)
    alerter.on_event(SentenceAttempted("cartesia", FailureReason.STALLED))
    alerter.on_event(FailedOver("cartesia", "elevenlabs", FailureReason.STALLED, 0.4))
    alerter.on_event(ProbeFinished("cartesia", ok=True, reason=None, seconds=0.2))
    await alerter.aclose()

    assert slack.requests == []
    assert alert_tasks() == []


async def test_server_errors_are_retried_until_the_alert_is_delivered_once(slack, logs):
    slack.statuses = [500, 429, 200]
    alerter = SlackWebhookAlerter(slack.url, backoff=0.01)
    alerter.on_event(DOWN)
    await slack.wait_for(lambda: slack.delivered)
    await alerter.aclose()

    assert len(slack.requests) == 3
    assert len(slack.delivered) == 1
    assert logs.warnings() == []


async def test_a_failing_webhook_never_blocks_or_raises_and_warns_once(slack, logs):
    slack.statuses = [500] * 10
    alerter = SlackWebhookAlerter(slack.url, retries=2, backoff=0.01)

    assert timed_on_event(alerter, DOWN) < FAST
    async with asyncio.timeout(WAIT):
        await logs.warned.wait()
    await alerter.aclose()

    assert len(slack.requests) == 3  # the first try and two retries
    assert slack.delivered == []
    [warning] = logs.warnings()
    assert "provider-down alert for cartesia" in warning and "HTTP 500" in warning


async def test_a_4xx_answer_is_not_retried(slack, logs):
    slack.statuses = [404]
    alerter = SlackWebhookAlerter(slack.url, backoff=0.01)
    alerter.on_event(DOWN)
    async with asyncio.timeout(WAIT):
        await logs.warned.wait()
    await alerter.aclose()

    assert len(slack.requests) == 1
    assert len(logs.warnings()) == 1


async def test_a_slow_webhook_never_blocks_the_caller_and_times_out_with_a_warning(slack, logs):
    slack.hold = True
    alerter = SlackWebhookAlerter(slack.url, timeout=0.05, retries=1, backoff=0.01)

    assert timed_on_event(alerter, DOWN) < FAST
    assert timed_on_event(alerter, UP) < FAST
    async with asyncio.timeout(WAIT):
        await logs.warned.wait()
    await alerter.aclose(timeout=0.01)

    assert "TimeoutError" in logs.warnings()[0]
    assert slack.delivered == []
    assert alert_tasks() == []


async def test_an_unreachable_webhook_warns_without_leaking_the_url(logs):
    alerter = SlackWebhookAlerter(closed_port_url(), retries=1, backoff=0.01)

    assert timed_on_event(alerter, DOWN) < FAST
    async with asyncio.timeout(WAIT):
        await logs.warned.wait()
    await alerter.aclose()

    [warning] = logs.warnings()
    assert "Slack webhook" in warning and "ClientConnectorError" in warning


async def test_client_errors_naming_the_url_are_logged_with_the_url_masked(slack, logs):
    slack.statuses = [307] * 20
    alerter = SlackWebhookAlerter(slack.url, retries=0)
    alerter.on_event(DOWN)
    async with asyncio.timeout(WAIT):
        await logs.warned.wait()
    await alerter.aclose()

    [warning] = logs.warnings()
    assert "TooManyRedirects" in warning and "127.0.0.1" in warning and "/***" in warning


def test_the_webhook_url_stays_out_of_reprs_and_errors():
    alerter = SlackWebhookAlerter(f"https://hooks.slack.com{SECRET_PATH}", name="ops")
    assert "SECRETXYZ" not in repr(alerter) and "SECRETXYZ" not in str(alerter)
    assert "hooks.slack.com" in repr(alerter)

    for bad in (
        f"ftp://hooks.slack.com{SECRET_PATH}",
        f"hooks.slack.com{SECRET_PATH}",
        f"https://hooks.slack.com:port{SECRET_PATH}",
        f"https://{SECRET_PATH}",
    ):
        with pytest.raises(ValueError) as raised:
            SlackWebhookAlerter(bad)
        assert "SECRETXYZ" not in str(raised.value)


@pytest.mark.parametrize(
    "kwargs",
    [{"timeout": 0}, {"retries": -1}, {"backoff": -0.1}, {"max_pending": 0}, {"retries": 1.5}],
)
def test_bad_settings_raise_at_construction(kwargs):
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        SlackWebhookAlerter(f"https://hooks.slack.com{SECRET_PATH}", **kwargs)


async def test_a_full_queue_drops_new_alerts_with_one_warning(slack, logs):
    slack.hold = True
    alerter = SlackWebhookAlerter(slack.url, max_pending=1, timeout=WAIT)
    alerter.on_event(DOWN)
    await slack.wait_for(lambda: slack.requests)  # the first alert is in flight
    for i in range(5):
        alerter.on_event(ProviderDown("p", FailureReason.ERROR, None, float(i), 1))

    assert len(logs.warnings()) == 1 and "dropping" in logs.warnings()[0]
    slack.release.set()
    await alerter.aclose()
    assert len(slack.delivered) == 2  # the one in flight and the one queued


async def test_aclose_twice_leaves_no_task_and_keeps_a_callers_session(slack, logs):
    async with aiohttp.ClientSession() as session:
        alerter = SlackWebhookAlerter(slack.url, session=session)
        alerter.on_event(DOWN)
        assert len(alert_tasks()) == 1
        await alerter.aclose()
        await alerter.aclose()

        assert alert_tasks() == []
        assert not session.closed
        assert len(slack.delivered) == 1
        alerter.on_event(UP)  # after close: ignored, no new task
        assert alert_tasks() == []


async def test_aclose_closes_the_session_the_alerter_created(slack, logs):
    alerter = SlackWebhookAlerter(slack.url)
    alerter.on_event(DOWN)
    await slack.wait_for(lambda: slack.delivered)
    session = alerter._own_session
    await alerter.aclose()
    assert session is not None and session.closed


async def test_aclose_without_any_event_is_fine():
    alerter = SlackWebhookAlerter(f"https://hooks.slack.com{SECRET_PATH}")
    await alerter.aclose()
    await alerter.aclose()


async def test_callback_alerter_gets_down_and_up_from_sync_and_async_callbacks(logs):
    seen_sync: list = []
    seen_async: list = []
    got_both = asyncio.Event()

    async def record(event):
        seen_async.append(event)
        if len(seen_async) == 2:
            got_both.set()

    sync_alerter = CallbackAlerter(seen_sync.append)
    async_alerter = CallbackAlerter(record)
    for event in (SentenceAttempted("cartesia", None), DOWN, DOWN, UP):
        sync_alerter.on_event(event)
        async_alerter.on_event(event)
    async with asyncio.timeout(WAIT):
        await got_both.wait()
    await sync_alerter.aclose()
    await async_alerter.aclose()

    assert seen_sync == [DOWN, UP]
    assert seen_async == [DOWN, UP]


async def test_a_failing_callback_is_logged_and_later_alerts_still_run(logs):
    calls: list = []

    def explode(event):
        calls.append(event)
        if event == DOWN:
            raise RuntimeError("pager is down")

    alerter = CallbackAlerter(explode, name="pager")
    assert timed_on_event(alerter, DOWN) < FAST
    alerter.on_event(UP)
    await alerter.aclose()

    assert calls == [DOWN, UP]
    [warning] = logs.warnings()
    assert "pager" in warning and "RuntimeError: pager is down" in warning


def test_callback_alerter_needs_a_callable():
    with pytest.raises(TypeError, match="callback"):
        CallbackAlerter("not callable")  # type: ignore[arg-type]


def test_alerters_are_failover_listeners():
    assert isinstance(CallbackAlerter(print), FailoverListener)
    assert isinstance(
        SlackWebhookAlerter(f"https://hooks.slack.com{SECRET_PATH}"), FailoverListener
    )
