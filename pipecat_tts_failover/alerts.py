"""Alerters: tell people when a provider goes down or comes back, from a task of their own.

An alerter is a ``FailoverListener``. ``on_event`` runs on the audio path, so it
only queues the alert; a background task owned by the alerter sends it. Only
``ProviderDown`` and ``ProviderUp`` are alerted; other events are ignored.

Dedup across a fleet of workers is done upstream by the health store (only the
worker whose write changed a provider's state reports it); each alerter also
refuses to send the same incident twice within one process.

To alert several places, pass several alerters to ``FailoverTTSService(alerters=[...])``.
"""

import asyncio
import inspect
import itertools
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import urlsplit

import aiohttp
from loguru import logger
from yarl import URL

from pipecat_tts_failover.events import FailoverEvent, ProviderDown, ProviderUp

__all__ = ["CallbackAlerter", "SlackWebhookAlerter"]

Alert = ProviderDown | ProviderUp
AlertCallback = Callable[[Alert], Awaitable[object] | object]

# Incidents remembered for dedup; old ones are forgotten first.
_REMEMBERED_INCIDENTS = 1024
# Longest wait between two tries of one alert, whatever Retry-After asks for.
_MAX_RETRY_DELAY = 30.0
# Longest first error quoted in a Slack message (Slack allows 2,000 per field).
_MAX_ERROR_CHARS = 500
_ids = itertools.count(1)


class _BackgroundAlerter:
    """Base of the alerters: filters, dedups and queues alerts; a task of its own sends them.

    Subclasses implement ``_deliver`` (and ``_release`` if they hold resources).

    Args:
        max_pending: Alerts held while sending lags; a full queue drops new ones.
        name: Used in log lines; defaults to the class name and a number.
    """

    def __init__(self, *, max_pending: int, name: str | None):
        if isinstance(max_pending, bool) or not isinstance(max_pending, int) or max_pending < 1:
            raise ValueError(f"max_pending must be a positive int, got {max_pending!r}")
        self._name = name or f"{type(self).__name__}#{next(_ids)}"
        self._max_pending = max_pending
        self._queue: asyncio.Queue[Alert] | None = None
        self._task: asyncio.Task | None = None
        self._closed = False
        self._dropping = False
        self._downs_seen: OrderedDict[tuple[str, float], None] = OrderedDict()
        self._last_up: dict[str, ProviderUp] = {}

    def __str__(self) -> str:
        return self._name

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self._name!r})"

    def on_event(self, event: FailoverEvent) -> None:
        """Queue an alert for ``ProviderDown``/``ProviderUp``; returns at once, never raises.

        Args:
            event: Any FailoverEvent; all but ``ProviderDown`` and ``ProviderUp`` are ignored.
        """
        try:
            if not isinstance(event, ProviderDown | ProviderUp) or self._closed:
                return
            if self._already_sent(event):
                logger.debug(
                    f"{self}: {type(event).__name__} for {event.provider_id} already alerted"
                )
                return
            try:
                queue = self._ensure_worker()
            except RuntimeError:
                logger.warning(f"{self}: no running event loop, dropping an alert")
                return
            try:
                queue.put_nowait(event)
            except asyncio.QueueFull:
                if not self._dropping:
                    self._dropping = True
                    logger.warning(
                        f"{self}: alert queue full ({self._max_pending}), dropping new alerts"
                    )
                return
            self._dropping = False
            self._remember(event)
        except Exception as e:  # noqa: BLE001 - the audio path must never see an alerter fail
            logger.warning(f"{self}: could not queue an alert: {type(e).__name__}")

    async def aclose(self, timeout: float = 5.0) -> None:
        """Send what is queued (waiting at most ``timeout`` seconds), then stop. Safe to call twice.

        Args:
            timeout: Seconds to wait for queued alerts before giving up on them.
        """
        self._closed = True
        task, queue = self._task, self._queue
        self._task = self._queue = None
        try:
            if task is not None and queue is not None and not task.done():
                try:
                    async with asyncio.timeout(timeout):
                        await queue.join()
                except TimeoutError:
                    logger.warning(f"{self}: alerts still unsent after {timeout}s, giving up")
        finally:  # even if aclose itself is cancelled
            if task is not None:
                task.cancel()
                await asyncio.wait([task])  # unlike `await task`, never swallows our cancellation
            await self._release()

    async def _deliver(self, alert: Alert) -> None:
        """Send one alert; failures are logged here or raised to the worker, which logs them."""
        raise NotImplementedError

    async def _release(self) -> None:
        """Free what the alerter holds once its task has stopped."""

    def _describe(self, error: BaseException) -> str:
        """An error fit for logs."""
        return f"{type(error).__name__}: {error}"

    def _ensure_worker(self) -> "asyncio.Queue[Alert]":
        loop = asyncio.get_running_loop()
        if self._task is None or self._task.done() or self._task.get_loop() is not loop:
            self._queue = asyncio.Queue(maxsize=self._max_pending)
            self._task = loop.create_task(self._run(self._queue), name=f"{self}::alerts")
        assert self._queue is not None
        return self._queue

    async def _run(self, queue: "asyncio.Queue[Alert]") -> None:
        while True:
            alert = await queue.get()
            try:
                await self._deliver(alert)
            except Exception as e:  # noqa: BLE001 - one bad alert must not stop the others
                logger.warning(
                    f"{self}: could not send the {_kind(alert)} alert for {alert.provider_id}: "
                    f"{self._describe(e)}"
                )
            finally:
                queue.task_done()

    def _already_sent(self, alert: Alert) -> bool:
        if isinstance(alert, ProviderDown):
            return (alert.provider_id, alert.since) in self._downs_seen
        return self._last_up.get(alert.provider_id) == alert

    def _remember(self, alert: Alert) -> None:
        if isinstance(alert, ProviderDown):
            self._downs_seen[(alert.provider_id, alert.since)] = None
            if len(self._downs_seen) > _REMEMBERED_INCIDENTS:
                self._downs_seen.popitem(last=False)
            self._last_up.pop(alert.provider_id, None)
        else:
            self._last_up[alert.provider_id] = alert


class SlackWebhookAlerter(_BackgroundAlerter):
    """Posts a Slack message (incoming webhook) when a provider goes down and when it is back.

    Each POST has a timeout and is retried with exponential backoff on connection
    errors, timeouts, 429 and 5xx (honouring a ``Retry-After`` header). An alert
    that still fails is logged once at WARNING. The webhook URL is a secret: it
    never appears in logs, reprs or exceptions.

    Args:
        webhook_url: The Slack incoming-webhook URL (http or https).
        timeout: Seconds one POST may take.
        retries: Extra tries after the first one fails.
        backoff: Seconds before the first retry; doubled for each further retry.
        max_pending: Alerts held while Slack lags; a full queue drops new ones.
        session: An aiohttp session to post with; the alerter creates (and closes)
            its own if None. A session passed in is never closed by the alerter.
        name: Used in log lines.

    Example::

        alerter = SlackWebhookAlerter(os.environ["SLACK_WEBHOOK_URL"])
        tts = FailoverTTSService(services=[cartesia, elevenlabs], alerters=[alerter])
        ...
        await alerter.aclose()
    """

    def __init__(
        self,
        webhook_url: str,
        *,
        timeout: float = 5.0,
        retries: int = 3,
        backoff: float = 0.5,
        max_pending: int = 100,
        session: aiohttp.ClientSession | None = None,
        name: str | None = None,
    ):
        _check_webhook_url(webhook_url)
        if isinstance(timeout, bool) or not isinstance(timeout, int | float) or timeout <= 0:
            raise ValueError(f"timeout must be a positive number of seconds, got {timeout!r}")
        if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
            raise ValueError(f"retries must be an int >= 0, got {retries!r}")
        if isinstance(backoff, bool) or not isinstance(backoff, int | float) or backoff < 0:
            raise ValueError(f"backoff must be a number of seconds >= 0, got {backoff!r}")
        if session is not None and not isinstance(session, aiohttp.ClientSession):
            raise TypeError(
                f"session must be an aiohttp.ClientSession, not {type(session).__name__}"
            )
        super().__init__(max_pending=max_pending, name=name)
        self._url = webhook_url
        self._timeout = aiohttp.ClientTimeout(total=float(timeout))
        self._retries = retries
        self._backoff = float(backoff)
        self._session = session
        self._own_session: aiohttp.ClientSession | None = None

    def __repr__(self) -> str:
        return f"SlackWebhookAlerter(name={self._name!r}, webhook_url={_mask_url(self._url)!r})"

    async def _deliver(self, alert: Alert) -> None:
        message = _slack_message(alert)
        session = self._session or self._owned_session()
        problem = ""
        for attempt in range(self._retries + 1):
            retry_after = None
            try:
                async with session.post(self._url, json=message, timeout=self._timeout) as response:
                    if 200 <= response.status < 300:
                        logger.info(
                            f"{self}: sent the {_kind(alert)} alert for {alert.provider_id}"
                        )
                        return
                    body = (await response.text())[:100]
                    problem = f"HTTP {response.status} {self._redact(body)}".strip()
                    if response.status != 429 and response.status < 500:
                        break  # Slack refused the message itself; retrying won't help
                    retry_after = _retry_after(response.headers.get("Retry-After"))
            except (aiohttp.ClientError, TimeoutError) as e:
                problem = self._describe(e)
            if attempt < self._retries:
                delay = self._backoff * 2**attempt if retry_after is None else retry_after
                delay = min(delay, _MAX_RETRY_DELAY)
                logger.debug(f"{self}: Slack webhook failed ({problem}), retrying in {delay:.2f}s")
                await asyncio.sleep(delay)
        tries = f"{attempt + 1} tries" if attempt else "1 try"
        logger.warning(
            f"{self}: could not send the {_kind(alert)} alert for {alert.provider_id} "
            f"to the Slack webhook ({problem}) after {tries}"
        )

    async def _release(self) -> None:
        session, self._own_session = self._own_session, None
        if session is not None:
            await session.close()

    def _owned_session(self) -> aiohttp.ClientSession:
        if self._own_session is None or self._own_session.closed:
            self._own_session = aiohttp.ClientSession()
        return self._own_session

    def _describe(self, error: BaseException) -> str:
        detail = self._redact(str(error))
        return f"{type(error).__name__}: {detail}" if detail else type(error).__name__

    def _redact(self, text: str) -> str:
        secrets = {self._url, str(URL(self._url)), urlsplit(self._url).path}
        for secret in sorted((s for s in secrets if s.strip("/")), key=len, reverse=True):
            text = text.replace(secret, _mask_url(self._url))
        return text


class CallbackAlerter(_BackgroundAlerter):
    """Calls ``callback(event)`` for each ``ProviderDown``/``ProviderUp``, from a task of its own.

    The callback may be sync or async. A sync one runs on the event loop, so keep
    it quick (or hand the work to ``asyncio.to_thread`` yourself). Exceptions it
    raises are logged at WARNING and never reach the caller.

    Args:
        callback: Takes the ``ProviderDown`` or ``ProviderUp`` event.
        timeout: Seconds an async callback may take before it is abandoned (None: no limit).
        max_pending: Alerts held while the callback lags; a full queue drops new ones.
        name: Used in log lines.

    Example::

        async def page_oncall(event):
            await pager.trigger(f"TTS provider {event.provider_id} is down")

        tts = FailoverTTSService(services=[...], alerters=[CallbackAlerter(page_oncall)])
    """

    def __init__(
        self,
        callback: AlertCallback,
        *,
        timeout: float | None = 10.0,
        max_pending: int = 100,
        name: str | None = None,
    ):
        if not callable(callback):
            raise TypeError(f"callback must be callable, not {type(callback).__name__}")
        if timeout is not None and (not isinstance(timeout, int | float) or timeout <= 0):
            raise ValueError(
                f"timeout must be a positive number of seconds or None, got {timeout!r}"
            )
        super().__init__(max_pending=max_pending, name=name)
        self._callback = callback
        self._callback_timeout = timeout

    async def _deliver(self, alert: Alert) -> None:
        result = self._callback(alert)
        if inspect.isawaitable(result):
            async with asyncio.timeout(self._callback_timeout):
                await result


def _slack_message(alert: Alert) -> dict[str, Any]:
    """The Slack message for an alert: a ``text`` fallback and Block Kit ``blocks``.

    Args:
        alert: The ``ProviderDown`` or ``ProviderUp`` event.

    Returns:
        The JSON body for an incoming webhook.
    """
    provider = _escape(alert.provider_id)
    if isinstance(alert, ProviderDown):
        since = datetime.fromtimestamp(alert.since, UTC).isoformat(timespec="seconds")
        since = since.replace("+00:00", "Z")
        error = alert.error or "none reported"
        if len(error) > _MAX_ERROR_CHARS:
            error = error[: _MAX_ERROR_CHARS - 1] + "…"
        title = f"TTS provider {alert.provider_id} is down"
        text = (
            f":rotating_light: TTS provider *{provider}* is down "
            f"({alert.reason.value}) since {since}"
        )
        fields = {
            "Provider": provider,
            "Reason": f"`{alert.reason.value}`",
            "Since (UTC)": since,
            "Failed sentences": str(alert.failed_sentences),
            "First error": _escape(error),
        }
    else:
        outage = _format_duration(alert.outage_seconds)
        title = f"TTS provider {alert.provider_id} is back up"
        text = (
            f":white_check_mark: TTS provider *{provider}* is back up after an outage of {outage}"
        )
        fields = {"Provider": provider, "Outage": outage}
    return {
        "text": text,
        "blocks": [
            {"type": "header", "text": {"type": "plain_text", "text": title[:150], "emoji": True}},
            {
                "type": "section",
                "fields": [{"type": "mrkdwn", "text": f"*{k}*\n{v}"} for k, v in fields.items()],
            },
        ],
    }


def _check_webhook_url(url: object) -> None:
    # The messages never include the URL: it is a secret.
    if not isinstance(url, str):
        raise TypeError(f"webhook_url must be a str, not {type(url).__name__}")
    try:
        parts = urlsplit(url)
        ok = parts.scheme in ("http", "https") and bool(parts.hostname)
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError:
        ok = False
    if not ok:
        raise ValueError("webhook_url must be an http(s) URL with a host")


def _mask_url(url: str) -> str:
    """``scheme://host[:port]/***``: a webhook URL fit for logs (its path is the secret)."""
    try:
        parts = urlsplit(url)
        port = f":{parts.port}" if parts.port else ""
        return f"{parts.scheme}://{parts.hostname or ''}{port}/***"
    except ValueError:
        return "***"


def _retry_after(value: str | None) -> float | None:
    """Seconds a ``Retry-After`` header asks to wait (delta-seconds or HTTP date), if any."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


def _format_duration(seconds: float | None) -> str:
    """``"4.2s"``, ``"2m 05s"``, ``"1h 02m 03s"``, or ``"unknown"``."""
    if seconds is None:
        return "unknown"
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h {minutes:02d}m {secs:02d}s" if hours else f"{minutes}m {secs:02d}s"


def _escape(text: str) -> str:
    """Escape the three characters Slack mrkdwn treats as control characters."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _kind(alert: Alert) -> str:
    return "provider-down" if isinstance(alert, ProviderDown) else "provider-up"
