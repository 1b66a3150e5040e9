"""What both emulators share: the aiohttp server's life, faults, limits, request records, pacing."""

import asyncio
import bisect
import json
import math
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import Any, ClassVar, Literal, Self

import numpy as np
from aiohttp import web
from loguru import logger

from pipecat_tts_failover.testing._speech import Speech, encode
from pipecat_tts_failover.testing.faults import Fault, FaultKind

__all__ = ["CONTROL_PATH", "SCALE_PLAN_CONCURRENCY", "Emulator", "SynthesisRequest"]

# Where a streamed response is kept on its request, for a client that hangs up.
_PREPARED = web.RequestKey("pipecat_tts_failover.prepared", web.StreamResponse)
# RFC 6455: a close frame's reason fits in 123 bytes.
_MAX_CLOSE_REASON = 123

_CLOSE_TIMEOUT_S = 1.0
#: Both providers' concurrency limit on their Scale plan (Cartesia: 15 contexts;
#: ElevenLabs: 15 requests), the default of ``concurrency_limit``.
SCALE_PLAN_CONCURRENCY = 15
#: Where a running emulator's fault is read (GET), set (POST) and cleared (DELETE).
CONTROL_PATH = "/_control/fault"
# Faults that cut a stream short after some audio.
_CUT_KINDS = (FaultKind.ERROR, FaultKind.CLOSE_1011, FaultKind.STALL)


@dataclass(slots=True)
class SynthesisRequest:
    """One synthesis request an emulator received.

    Attributes:
        ordinal: 1-based position among all requests of the emulator.
        transport: ``"http"`` for an HTTP request, ``"websocket"`` for a context.
        path: The URL path it arrived on.
        text: The text to speak. For a WebSocket context this grows as more
            text arrives for it.
        context_id: The WebSocket context id; None for HTTP.
        sample_rate: The sample rate asked for.
        fault: The fault applied to this request, or None if it was healthy.
        refusal: Why the emulator refused it on its own, as the real service
            would (``"concurrency_limited"``, ``"max_active_conversations"``,
            ``"model_not_found"``...), or None.
    """

    ordinal: int
    transport: Literal["http", "websocket"]
    path: str
    text: str = ""
    context_id: str | None = None
    sample_rate: int | None = None
    fault: Fault | None = None
    refusal: str | None = None


@dataclass(frozen=True, slots=True)
class _Chunk:
    """A slice of speech ready to send."""

    audio: bytes
    start: float  # seconds into the speech
    end: float
    chars: range  # characters whose alignment rides on this slice: whole words starting in it


async def _forever() -> None:
    """Wait until cancelled (``hang`` and ``stall``; the emulator's stop cancels it)."""
    await asyncio.get_running_loop().create_future()


class _Watchdog:
    """Runs ``on_expiry`` once ``timeout`` seconds pass without a ``kick``.

    Its task is owned by the emulator (cancelled on stop) and by the
    connection it watches (cancelled when that closes).
    """

    def __init__(self, timeout: float, on_expiry: Callable[[], Awaitable[None]]):
        self.timeout = timeout
        self._on_expiry = on_expiry
        self._kicked = asyncio.Event()
        self.task: asyncio.Task | None = None

    def kick(self):
        """Start the timeout again."""
        self._kicked.set()

    async def run(self):
        while True:
            try:
                async with asyncio.timeout(self.timeout):
                    await self._kicked.wait()
            except TimeoutError:
                await self._on_expiry()
                return
            self._kicked.clear()


class Emulator:
    """Base of the provider emulators: one aiohttp server on 127.0.0.1.

    Subclasses add their provider's routes in ``_add_routes`` and say how a
    request presents its API key in ``_presented_key`` and how the provider
    words an HTTP error in ``_error_body``.

    Attributes:
        provider: The normalized provider id (``"cartesia"``, ``"elevenlabs"``).

    Args:
        port: TCP port; 0 picks a free one.
        api_key: The key clients must present; None accepts any request.
        fault: A fault to inject from the start (a :class:`Fault` or its string).
        speed: How many times faster than real time audio streams; 1.0 is real
            time, ``math.inf`` sends as fast as possible.
        chunk_ms: Milliseconds of audio per streamed message.
        ms_per_char: Milliseconds of speech per character of text.
        host: Interface to bind.
        concurrency_limit: The account's plan limit on generations at once,
            counted as the provider counts them (see each emulator); past it
            the request is refused with the provider's 429. Default 15, both
            providers' Scale plan; None for no limit.

    Raises:
        ValueError: If a number is out of range or the fault does not parse.
    """

    provider: ClassVar[str] = ""

    def __init__(
        self,
        *,
        port: int = 0,
        api_key: str | None = "test-key",
        fault: Fault | str | None = None,
        speed: float = 4.0,
        chunk_ms: int = 40,
        ms_per_char: float = 60.0,
        host: str = "127.0.0.1",
        concurrency_limit: int | None = SCALE_PLAN_CONCURRENCY,
    ):
        if not isinstance(port, int) or not 0 <= port <= 65535:
            raise ValueError(f"port must be an int in 0..65535, got {port!r}")
        if not speed > 0:
            raise ValueError(f"speed must be > 0 (math.inf for no pacing), got {speed!r}")
        if not isinstance(chunk_ms, int) or chunk_ms < 1:
            raise ValueError(f"chunk_ms must be an int >= 1, got {chunk_ms!r}")
        if not ms_per_char > 0:
            raise ValueError(f"ms_per_char must be > 0, got {ms_per_char!r}")
        _check_count("concurrency_limit", concurrency_limit)
        self._host = host
        self._requested_port = port
        self._api_key = api_key
        self.speed = speed
        self.chunk_ms = chunk_ms
        self.ms_per_char = ms_per_char
        self.concurrency_limit = concurrency_limit
        self._active = 0  # generations counted against concurrency_limit

        self._fault: Fault | None = Fault.coerce(fault)
        self._fault_count = 0
        self._requests: list[SynthesisRequest] = []
        self._connections = 0
        self._rejected_handshakes = 0
        self._changed = asyncio.Condition()

        self._runner: web.AppRunner | None = None
        self._port: int | None = None
        self._sockets: set[web.WebSocketResponse] = set()
        self._tasks: set[asyncio.Task] = set()
        self._handler_tasks: set[asyncio.Task] = set()

    # -- lifecycle --------------------------------------------------------

    async def start(self) -> Self:
        """Bind the port and start serving.

        Returns:
            The emulator itself.
        """
        if self._runner is not None:
            return self
        app = web.Application(middlewares=[self._track_handler])
        app.router.add_get(CONTROL_PATH, self._get_fault)
        app.router.add_post(CONTROL_PATH, self._post_fault)
        app.router.add_delete(CONTROL_PATH, self._delete_fault)
        self._add_routes(app)
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=_CLOSE_TIMEOUT_S)
        await runner.setup()
        site = web.TCPSite(runner, self._host, self._requested_port)
        try:
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        server = site._server
        assert server is not None and server.sockets  # type: ignore[attr-defined]
        self._port = server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]
        logger.debug(f"{self}: listening on {self.http_url}")
        return self

    async def stop(self):
        """Close every WebSocket, cancel every stream, and release the port.

        Safe to call twice.
        """
        runner, self._runner = self._runner, None
        if runner is None:
            return
        sockets = list(self._sockets)
        if sockets:
            await asyncio.wait(
                [asyncio.ensure_future(self._close_socket(ws)) for ws in sockets],
                timeout=_CLOSE_TIMEOUT_S * 2,
            )
        pending = [t for t in (*self._tasks, *self._handler_tasks) if not t.done()]
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.wait(pending, timeout=_CLOSE_TIMEOUT_S * 2)
        await runner.cleanup()
        logger.debug(f"{self}: stopped")

    async def __aenter__(self) -> Self:
        return await self.start()

    async def __aexit__(self, *exc_info: object):
        await self.stop()

    async def _close_socket(self, ws: web.WebSocketResponse):
        try:
            await asyncio.wait_for(
                ws.close(code=1001, message=b"emulator stopping"), _CLOSE_TIMEOUT_S
            )
        except (TimeoutError, ConnectionError) as e:
            logger.debug(f"{self}: closing a websocket on stop: {e!r}")

    @web.middleware
    async def _track_handler(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        """Remember the task serving each request, so ``stop`` can cancel it.

        A client that hangs up mid-answer is normal (a probe that heard enough,
        a caller that moved on): the write that finds the connection gone ends
        the handler quietly instead of an aiohttp ERROR with a traceback.
        """
        task = asyncio.current_task()
        assert task is not None
        self._handler_tasks.add(task)
        try:
            return await handler(request)
        except ConnectionResetError as e:
            logger.debug(f"{self}: client hung up on {request.path}: {e}")
            prepared = request.get(_PREPARED)
            return prepared if prepared is not None else web.Response(status=499)
        finally:
            self._handler_tasks.discard(task)

    @staticmethod
    async def _prepare(request: web.Request, response: web.StreamResponse) -> web.StreamResponse:
        """Send a streamed response's headers, remembering it for a hang-up."""
        request[_PREPARED] = response
        await response.prepare(request)
        return response

    def _spawn(self, coro: Coroutine[Any, Any, None], name: str) -> asyncio.Task:
        """Start a task the emulator owns and cancels on stop."""
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def _add_routes(self, app: web.Application):
        raise NotImplementedError

    def __str__(self) -> str:
        return f"{type(self).__name__}#{self._port or 'unbound'}"

    # -- concurrency ------------------------------------------------------

    @property
    def active(self) -> int:
        """Generations counted against ``concurrency_limit`` now."""
        return self._active

    def _acquire(self) -> bool:
        """Count one more generation, or say False if the plan's limit is reached."""
        if self.concurrency_limit is not None and self._active >= self.concurrency_limit:
            return False
        self._active += 1
        return True

    def _release(self):
        self._active -= 1

    # -- addresses --------------------------------------------------------

    @property
    def port(self) -> int:
        """The bound port (after ``start``)."""
        if self._port is None:
            raise RuntimeError(f"{type(self).__name__} is not started")
        return self._port

    @property
    def http_url(self) -> str:
        """Base HTTP URL, e.g. ``http://127.0.0.1:54321``."""
        return f"http://{self._host}:{self.port}"

    @property
    def ws_url(self) -> str:
        """Base WebSocket URL, e.g. ``ws://127.0.0.1:54321``."""
        return f"ws://{self._host}:{self.port}"

    @property
    def control_url(self) -> str:
        """Where to read (GET), set (POST ``{"fault": "..."}``) or clear (DELETE) the fault."""
        return f"{self.http_url}{CONTROL_PATH}"

    @property
    def clients(self) -> dict[str, str]:
        """How to point each pipecat service and official SDK at this emulator.

        Returns:
            Client name -> the keyword arguments to give it, e.g.
            ``{"CartesiaTTSService": 'url="ws://127.0.0.1:8123/tts/websocket"'}``.
        """
        raise NotImplementedError

    # -- faults -----------------------------------------------------------

    @property
    def fault(self) -> Fault | None:
        """The fault in force, or None."""
        return self._fault

    def set_fault(self, fault: Fault | str | None):
        """Inject a fault from now on; ``@N``/``%K`` count requests from now.

        Args:
            fault: The fault (or its string form), or None to clear it.
        """
        self._fault = Fault.coerce(fault)
        self._fault_count = 0
        logger.info(f"{self}: fault set to {self._fault or 'none'}")

    def clear_fault(self):
        """Stop injecting faults."""
        self.set_fault(None)

    async def _get_fault(self, request: web.Request) -> web.Response:
        return web.json_response({"fault": str(self._fault) if self._fault else None})

    async def _post_fault(self, request: web.Request) -> web.Response:
        """``POST /_control/fault`` with ``{"fault": "error@2"}`` (or null to clear)."""
        try:
            body = await request.json()
        except ValueError:
            body = None
        if not isinstance(body, dict) or "fault" not in body:
            return web.json_response(
                {"error": 'send a JSON object: {"fault": "KIND[:VALUE][@N|%K]"} or null'},
                status=400,
            )
        try:
            self.set_fault(body["fault"])
        except (TypeError, ValueError) as e:
            return web.json_response({"error": str(e)}, status=400)
        return await self._get_fault(request)

    async def _delete_fault(self, request: web.Request) -> web.Response:
        self.clear_fault()
        return await self._get_fault(request)

    def _handshake_rejection(self) -> int | None:
        """The status to refuse a WebSocket handshake with, if any."""
        fault = self._fault
        if fault is not None and fault.unconditional and fault.kind.reject_status:
            self._rejected_handshakes += 1
            return fault.kind.reject_status
        return None

    # -- records ----------------------------------------------------------

    @property
    def requests(self) -> list[SynthesisRequest]:
        """Every synthesis request received so far, oldest first (a copy of the list)."""
        return list(self._requests)

    @property
    def connections(self) -> int:
        """WebSocket connections accepted so far."""
        return self._connections

    @property
    def open_connections(self) -> int:
        """WebSocket connections open now."""
        return len(self._sockets)

    @property
    def rejected_handshakes(self) -> int:
        """WebSocket handshakes refused by a ``reject-*`` fault so far."""
        return self._rejected_handshakes

    async def wait_for_requests(self, count: int, timeout: float = 5.0) -> list[SynthesisRequest]:
        """Wait until at least ``count`` requests have arrived.

        Args:
            count: How many requests to wait for.
            timeout: Seconds to wait at most.

        Returns:
            The requests so far.

        Raises:
            TimeoutError: If fewer arrived in time.
        """
        async with asyncio.timeout(timeout):
            async with self._changed:
                await self._changed.wait_for(lambda: len(self._requests) >= count)
        return self.requests

    async def _new_request(
        self,
        transport: Literal["http", "websocket"],
        path: str,
        *,
        text: str = "",
        context_id: str | None = None,
        sample_rate: int | None = None,
    ) -> SynthesisRequest:
        """Record a request and decide which fault, if any, it suffers."""
        self._fault_count += 1
        fault = self._fault.effective_for(self._fault_count) if self._fault else None
        request = SynthesisRequest(
            ordinal=len(self._requests) + 1,
            transport=transport,
            path=path,
            text=text,
            context_id=context_id,
            sample_rate=sample_rate,
            fault=fault,
        )
        self._requests.append(request)
        if fault:
            logger.debug(f"{self}: request {request.ordinal} gets fault {fault}")
        async with self._changed:
            self._changed.notify_all()
        return request

    async def _refused_request(
        self,
        transport: Literal["http", "websocket"],
        path: str,
        refusal: str,
        **fields: Any,
    ) -> SynthesisRequest:
        """Record a request the emulator refused on its own, as the real service would."""
        request = SynthesisRequest(
            ordinal=len(self._requests) + 1,
            transport=transport,
            path=path,
            refusal=refusal,
            **fields,
        )
        self._requests.append(request)
        logger.debug(f"{self}: request {request.ordinal} refused: {refusal}")
        async with self._changed:
            self._changed.notify_all()
        return request

    # -- keys and errors --------------------------------------------------

    def _presented_key(self, request: web.Request) -> str | None:
        raise NotImplementedError

    def _error_body(self, status: int, message: str | None = None) -> dict[str, Any]:
        raise NotImplementedError

    def _error_response(self, status: int, message: str | None = None) -> web.Response:
        return web.json_response(self._error_body(status, message), status=status)

    def _auth_failure(self, request: web.Request) -> web.Response | None:
        """The provider's 401 response if the request lacks the right key."""
        if self._api_key is None:
            return None
        key = self._presented_key(request)
        if key == self._api_key:
            return None
        message = "Missing API key" if key is None else "Invalid API key"
        return self._error_response(401, message)

    # -- streaming --------------------------------------------------------

    async def _end_http(
        self, request: web.Request, response: web.StreamResponse, fault: Fault | None
    ) -> web.StreamResponse:
        """Finish a streamed body, or break it as ``close-1011`` / ``stall`` say."""
        kind = fault.kind if fault else None
        if kind is FaultKind.CLOSE_1011:
            if request.transport is not None:
                request.transport.abort()
            return response
        if kind is FaultKind.STALL:
            await _forever()
        await response.write_eof()
        return response

    def _watch(self, timeout: float, on_expiry: Callable[[], Awaitable[None]], name: str):
        """A started watchdog whose task the emulator owns."""
        watchdog = _Watchdog(timeout, on_expiry)
        watchdog.task = self._spawn(watchdog.run(), name)
        return watchdog

    async def _chunks(
        self,
        speech: Speech,
        fault: Fault | None,
        *,
        encoding: str = "pcm_s16le",
        first: bool = True,
    ) -> AsyncIterator[_Chunk]:
        """Yield ``speech`` in ``chunk_ms`` slices at the emulator's pace, as ``fault`` bends it.

        ``slow-ttfb`` delays the first slice, ``slow-drip`` paces slower than
        real time, ``zeros`` blanks the samples, ``empty`` yields nothing, and
        ``error``, ``close-1011`` and ``stall`` end the stream after
        ``fault.delay_ms`` of audio (the caller then does the rest of the
        fault). ``first`` is False for later pieces of one WebSocket context,
        which the one-off parts of a fault (delay, cut) leave alone.
        """
        kind = fault.kind if fault else None
        if kind is FaultKind.EMPTY:
            return
        pace = self.speed
        cutoff = math.inf
        if fault is not None:
            if kind is FaultKind.SLOW_TTFB and first:
                await asyncio.sleep(fault.delay_ms / 1000)
            elif kind is FaultKind.SLOW_DRIP:
                pace = 1 / fault.slowdown
            elif kind in _CUT_KINDS and first:
                cutoff = fault.delay_ms / 1000
        rate = speech.sample_rate
        step = max(1, round(rate * self.chunk_ms / 1000))
        total = len(speech.samples)
        groups = speech.char_groups
        group_samples = [speech.sample_at(speech.char_starts[g.start]) for g in groups]
        loop = asyncio.get_running_loop()
        began = loop.time()
        for a in range(0, total, step):
            start = a / rate
            if start >= cutoff:
                return
            b = min(total, a + step)
            delay = began + start / pace - loop.time()
            await asyncio.sleep(max(0.0, delay))
            samples = speech.samples[a:b]
            if kind is FaultKind.ZEROS:
                samples = np.zeros_like(samples)
            last = b if b < total else total + 1
            first_group = bisect.bisect_left(group_samples, a)
            end_group = bisect.bisect_left(group_samples, last)
            chars = range(0)
            if first_group < end_group:
                chars = range(groups[first_group].start, groups[end_group - 1].stop)
            yield _Chunk(encode(samples, encoding), start, b / rate, chars)


class WebSocketConnection:
    """One client WebSocket of an emulator: its contexts, each streamed by a task of its own.

    Shared by the provider emulators; each adds how its messages are read.

    Args:
        emulator: The emulator serving the socket.
        ws: The socket.
        path: The path it was opened on.
    """

    def __init__(self, emulator: "Emulator", ws: web.WebSocketResponse, path: str):
        self._emu = emulator
        self._ws = ws
        self._path = path
        self._contexts: dict[str, Any] = {}
        self._send_lock = asyncio.Lock()
        self._watchdog: _Watchdog | None = None
        self._closing_task: asyncio.Task | None = None

    async def send(self, message: dict):
        """Send one JSON message; raises ConnectionResetError once the socket is closed."""
        async with self._send_lock:
            if self._ws.closed:
                raise ConnectionResetError("websocket closed")
            await self._ws.send_str(json.dumps(message))

    def close_soon(self, code: int, reason: str):
        """Close the socket from a task of the emulator's (not the one reading it)."""
        message = reason.encode()[:_MAX_CLOSE_REASON]
        if self._closing_task is None:
            self._closing_task = self._emu._spawn(
                self._ws.close(code=code, message=message), f"close-{code}"
            )

    async def close(self):
        """Cancel every context's stream and the watchdog, and wait for them."""
        if self._watchdog is not None and self._watchdog.task is not None:
            self._watchdog.task.cancel()
        tasks = [c.task for c in self._contexts.values() if c.task and not c.task.done()]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks)
        self._contexts.clear()
        if self._closing_task is not None:
            # Let the close frame go out with its code before the handler returns
            # (aiohttp would otherwise close the socket with 1000 itself).
            await asyncio.wait([self._closing_task], timeout=_CLOSE_TIMEOUT_S * 2)

    @staticmethod
    def parse(data: str) -> dict | None:
        """A client message as a JSON object, or None if it is not one."""
        try:
            message = json.loads(data)
        except ValueError:
            return None
        return message if isinstance(message, dict) else None


def _check_count(name: str, value: int | None):
    """A limit is None or an int >= 1."""
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise ValueError(f"{name} must be an int >= 1 or None, got {value!r}")


def _check_seconds(name: str, value: float | None):
    """A timeout is None or a number of seconds > 0."""
    if value is not None and (
        isinstance(value, bool) or not isinstance(value, int | float) or not value > 0
    ):
        raise ValueError(f"{name} must be a number of seconds > 0 or None, got {value!r}")
