"""A local Cartesia TTS API: ``/tts/websocket``, ``/tts/bytes`` and ``/tts/sse`` on one port."""

import asyncio
import base64
import bisect
import json
import re
import uuid
from collections.abc import Collection
from dataclasses import dataclass, field
from typing import Any

from aiohttp import WSMsgType, web
from loguru import logger

from pipecat_tts_failover.testing._server import (
    Emulator,
    SynthesisRequest,
    WebSocketConnection,
    _check_seconds,
    _forever,
)
from pipecat_tts_failover.testing._speech import ENCODINGS, Speech, synthesize, wav_header
from pipecat_tts_failover.testing.faults import Fault, FaultKind

__all__ = ["CartesiaEmulator"]

_SAMPLE_RATES = (8000, 16000, 22050, 24000, 44100, 48000)
#: Cartesia closes a WebSocket after this long without a generation (its docs: 5 minutes).
DEFAULT_IDLE_TIMEOUT_S = 300.0
#: Past concurrency_limit x this many open WebSockets, a handshake is refused with 429.
_SOCKETS_PER_CONCURRENCY = 10
# Cartesia's TTS model names: sonic, sonic-2, sonic-3.6, sonic-turbo, sonic-english,
# and dated snapshots of them (sonic-2-2025-03-07).
_MODEL = re.compile(r"^sonic(-(english|multilingual|turbo|\d+(\.\d+)?))?(-\d{4}-\d{2}-\d{2})?$")
_ERRORS: dict[int, tuple[str, str, str]] = {
    400: ("invalid_request", "Invalid request", "The request is invalid."),
    401: ("unauthorized", "Unauthorized", "Invalid API key"),
    402: ("payment_required", "Payment required", "Your account has run out of credits."),
    429: (
        "concurrency_limited",
        "Too many concurrent requests",
        "You have exceeded your plan's concurrency limit.",
    ),
    500: ("internal_error", "Internal server error", "Speech generation failed."),
    503: ("service_unavailable", "Service unavailable", "The service is temporarily unavailable."),
}


class _BadRequest(Exception):
    """A request the real API would refuse with 400."""


@dataclass(frozen=True, slots=True)
class _Refusal:
    """A request the real API refuses on its own: which status, code, title and message."""

    status: int
    code: str
    title: str
    message: str


@dataclass(frozen=True, slots=True)
class _Format:
    container: str
    encoding: str
    sample_rate: int


def _output_format(value: Any) -> _Format:
    """Read Cartesia's ``output_format`` object."""
    if not isinstance(value, dict):
        raise _BadRequest("output_format is required: {container, encoding, sample_rate}")
    container = value.get("container", "raw")
    encoding = value.get("encoding", "pcm_s16le" if container == "raw" else None)
    sample_rate = value.get("sample_rate")
    if container not in ("raw", "wav"):
        raise _BadRequest(f"the emulator serves containers raw and wav, not {container!r}")
    if encoding not in ENCODINGS:
        raise _BadRequest(f"unsupported encoding {encoding!r}; use one of {', '.join(ENCODINGS)}")
    if sample_rate not in _SAMPLE_RATES:
        raise _BadRequest(f"unsupported sample_rate {sample_rate!r}; use one of {_SAMPLE_RATES}")
    return _Format(container, encoding, sample_rate)


def _b64(audio: bytes) -> str:
    return base64.b64encode(audio).decode("ascii")


def _words_between(speech: Speech, start: float, end: float, last: bool) -> list[tuple]:
    """Words of ``speech`` starting in ``[start, end)`` (``end`` included for the last slice)."""
    starts = [w[1] for w in speech.words]
    lo = bisect.bisect_left(starts, start)
    hi = bisect.bisect_right(starts, end) if last else bisect.bisect_left(starts, end)
    return list(speech.words[lo:hi])


class CartesiaEmulator(Emulator):
    """Serves Cartesia's TTS API on 127.0.0.1, with fault injection.

    Routes: ``GET /tts/websocket`` (contexts with ``transcript``, ``continue``,
    ``flush``, ``cancel``; ``chunk``, ``timestamps``, ``flush_done``, ``done``
    and ``error`` messages), ``POST /tts/bytes`` (raw or WAV audio) and
    ``POST /tts/sse`` (server-sent events). The key is read from ``X-API-Key``,
    ``Authorization: Bearer``, or the ``api_key`` query parameter.

    Like the real API, it counts contexts against the plan's
    ``concurrency_limit`` (a WebSocket context from its first message to its
    ``done``, error or cancel; an HTTP request while it streams) and refuses
    one over it with 429 ``concurrency_limited`` (in-band on a WebSocket);
    refuses a WebSocket handshake with 429 past 10x that many open sockets;
    closes a WebSocket idle for ``idle_timeout`` with 1000 "connection idle
    timeout"; and refuses an unknown ``model_id`` (400 ``model_not_found``)
    or a missing voice (400 ``invalid_request``).

    Point clients at it with only a URL change::

        async with CartesiaEmulator(fault="slow-ttfb:800") as emu:
            ws_tts = CartesiaTTSService(api_key="test-key", url=emu.websocket_url)
            http_tts = CartesiaHttpTTSService(api_key="test-key", base_url=emu.http_url)
            client = AsyncCartesia(
                api_key="test-key", base_url=emu.http_url, websocket_base_url=emu.ws_url
            )

    Args:
        idle_timeout: Seconds a WebSocket may go without a message either way
            before it is closed; Cartesia's is 5 minutes. None never closes.
        models: The model ids accepted; None accepts Cartesia's model names
            (``sonic``, ``sonic-2``, ``sonic-3.6``, ``sonic-turbo``... and their
            dated snapshots).
        voices: The voice ids accepted; None accepts any non-empty id.
        **kwargs: See :class:`~pipecat_tts_failover.testing.Emulator`:
            ``port``, ``api_key``, ``fault``, ``speed``, ``chunk_ms``,
            ``ms_per_char``, ``host``, ``concurrency_limit``.
    """

    provider = "cartesia"

    def __init__(
        self,
        *,
        idle_timeout: float | None = DEFAULT_IDLE_TIMEOUT_S,
        models: Collection[str] | None = None,
        voices: Collection[str] | None = None,
        **kwargs: Any,
    ):
        super().__init__(**kwargs)
        _check_seconds("idle_timeout", idle_timeout)
        for name, value in (("models", models), ("voices", voices)):
            if isinstance(value, str):
                raise TypeError(f"{name} must be a collection of ids, not one string {value!r}")
        self.idle_timeout = idle_timeout
        self.models = frozenset(models) if models is not None else None
        self.voices = frozenset(voices) if voices is not None else None

    @property
    def clients(self) -> dict[str, str]:
        """How to point each pipecat service and the official SDK at this emulator."""
        return {
            "CartesiaTTSService": f'url="{self.websocket_url}"',
            "CartesiaHttpTTSService": f'base_url="{self.http_url}"',
            "cartesia.AsyncCartesia": (
                f'base_url="{self.http_url}", websocket_base_url="{self.ws_url}"'
            ),
        }

    @property
    def websocket_url(self) -> str:
        """The full WebSocket endpoint, as ``CartesiaTTSService(url=...)`` wants it."""
        return f"{self.ws_url}/tts/websocket"

    def _add_routes(self, app: web.Application):
        app.router.add_get("/tts/websocket", self._websocket)
        app.router.add_post("/tts/bytes", self._bytes)
        app.router.add_post("/tts/sse", self._sse)

    def _presented_key(self, request: web.Request) -> str | None:
        key = request.headers.get("X-API-Key")
        if key is None and request.headers.get("Authorization", "").startswith("Bearer "):
            key = request.headers["Authorization"].removeprefix("Bearer ")
        return key if key is not None else request.query.get("api_key")

    def _error_body(self, status: int, message: str | None = None) -> dict[str, Any]:
        code, title, default = _ERRORS.get(status, _ERRORS[500])
        return {
            "error_code": code,
            "title": title,
            "message": message or default,
            "request_id": str(uuid.uuid4()),
        }

    def _error_event(self, status: int, context_id: str | None, message: str | None = None):
        event = {"type": "error", "done": True, "status_code": status}
        event |= self._error_body(status, message)
        if context_id is not None:
            event["context_id"] = context_id
        return event

    def _refusal_event(self, refusal: _Refusal, context_id: str) -> dict[str, Any]:
        return {
            "type": "error",
            "done": True,
            "status_code": refusal.status,
            "error_code": refusal.code,
            "title": refusal.title,
            "message": refusal.message,
            "request_id": str(uuid.uuid4()),
            "context_id": context_id,
        }

    @staticmethod
    def _refusal_response(refusal: _Refusal) -> web.Response:
        body = {
            "error_code": refusal.code,
            "title": refusal.title,
            "message": refusal.message,
            "request_id": str(uuid.uuid4()),
        }
        return web.json_response(body, status=refusal.status)

    def _misconfiguration(self, body: dict) -> _Refusal | None:
        """What is wrong with a request's ``model_id`` or ``voice``, as Cartesia words it."""
        model = body.get("model_id")
        if not isinstance(model, str) or not model:
            return _Refusal(400, "invalid_request", "Invalid request", "model_id is required")
        known = model in self.models if self.models is not None else _MODEL.match(model)
        if not known:
            return _Refusal(
                400,
                "model_not_found",
                "Invalid model",
                f"Invalid model: {model!r} is not a model you can use.",
            )
        voice = body.get("voice")
        voice_id = voice.get("id") if isinstance(voice, dict) else None
        if not isinstance(voice_id, str) or not voice_id:
            return _Refusal(
                400, "invalid_request", "Invalid request", "voice is required: {mode: id, id}"
            )
        if self.voices is not None and voice_id not in self.voices:
            return _Refusal(
                404, "voice_not_found", "Voice not found", f"Voice {voice_id} not found"
            )
        return None

    def _over_limit(self) -> _Refusal:
        return _Refusal(429, *_ERRORS[429])

    # -- HTTP -------------------------------------------------------------

    async def _read_http(
        self, request: web.Request
    ) -> tuple[dict, _Format, SynthesisRequest] | web.Response:
        """Parse, check and record a synthesis request; a response if it ends here.

        Past the checks, the request counts against the concurrency limit:
        the caller releases it.
        """
        try:
            body = await request.json()
        except ValueError:
            return self._error_response(400, "the body must be JSON")
        if not isinstance(body, dict) or not isinstance(body.get("transcript"), str):
            return self._error_response(400, "transcript is required")
        try:
            fmt = _output_format(body.get("output_format"))
        except _BadRequest as e:
            return self._error_response(400, str(e))
        fields = {"text": body["transcript"], "sample_rate": fmt.sample_rate}
        refusal = self._misconfiguration(body)
        if refusal is None and not self._acquire():
            refusal = self._over_limit()
        if refusal is not None:
            await self._refused_request("http", request.path, refusal.code, **fields)
            return self._refusal_response(refusal)
        record = await self._new_request("http", request.path, **fields)
        return body, fmt, record

    async def _bytes(self, request: web.Request) -> web.StreamResponse:
        if refusal := self._auth_failure(request):
            return refusal
        started = await self._read_http(request)
        if isinstance(started, web.Response):
            return started
        try:
            return await self._stream_bytes(request, *started)
        finally:
            self._release()

    async def _stream_bytes(
        self, request: web.Request, body: dict, fmt: _Format, record: SynthesisRequest
    ) -> web.StreamResponse:
        fault = record.fault
        if early := await self._early_http_fault(fault):
            return early
        speech = synthesize(body["transcript"], fmt.sample_rate, self.ms_per_char)
        content_type = "audio/wav" if fmt.container == "wav" else "application/octet-stream"
        response = web.StreamResponse(headers={"Content-Type": content_type})
        await self._prepare(request, response)
        if fmt.container == "wav":
            sent = 0 if fault and fault.kind is FaultKind.EMPTY else len(speech.samples)
            await response.write(wav_header(sent, fmt.sample_rate, fmt.encoding))
        async for chunk in self._chunks(speech, fault, encoding=fmt.encoding):
            await response.write(chunk.audio)
        return await self._end_http(request, response, fault)

    async def _sse(self, request: web.Request) -> web.StreamResponse:
        if refusal := self._auth_failure(request):
            return refusal
        started = await self._read_http(request)
        if isinstance(started, web.Response):
            return started
        try:
            return await self._stream_sse(request, *started)
        finally:
            self._release()

    async def _stream_sse(
        self, request: web.Request, body: dict, fmt: _Format, record: SynthesisRequest
    ) -> web.StreamResponse:
        fault = record.fault
        if (
            fault
            and fault.kind is not FaultKind.ERROR
            and (early := await self._early_http_fault(fault))
        ):
            return early
        context_id = body.get("context_id")
        echo = {"context_id": context_id} if context_id else {}
        speech = synthesize(body["transcript"], fmt.sample_rate, self.ms_per_char)
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await self._prepare(request, response)

        async def event(name: str, data: dict):
            await response.write(f"event: {name}\ndata: {json.dumps(data)}\n\n".encode())

        async for chunk in self._chunks(speech, fault, encoding=fmt.encoding):
            await event(
                "chunk",
                {
                    "type": "chunk",
                    "data": _b64(chunk.audio),
                    "done": False,
                    "status_code": 206,
                    "step_time": float(self.chunk_ms),
                    **echo,
                },
            )
            last = chunk.end >= speech.duration
            if body.get("add_timestamps") and (
                words := _words_between(speech, chunk.start, chunk.end, last)
            ):
                await event(
                    "timestamps",
                    {
                        "type": "timestamps",
                        "done": False,
                        "status_code": 206,
                        "word_timestamps": _word_timestamps(words, 0.0),
                        **echo,
                    },
                )
        if fault and fault.kind is FaultKind.ERROR:
            await event("error", self._error_event(500, context_id))
            await response.write_eof()
            return response
        if not fault or fault.kind not in (FaultKind.CLOSE_1011, FaultKind.STALL):
            await event("done", {"type": "done", "done": True, "status_code": 206, **echo})
        return await self._end_http(request, response, fault)

    async def _early_http_fault(self, fault: Fault | None) -> web.Response | None:
        """The faults that act before any audio: rejections, ``error``, ``hang``."""
        if fault is None:
            return None
        if status := fault.kind.reject_status:
            return self._error_response(status)
        if fault.kind is FaultKind.QUOTA_EXCEEDED:
            return self._error_response(402)
        if fault.kind is FaultKind.ERROR:
            return self._error_response(500)
        if fault.kind is FaultKind.HANG:
            await _forever()
        return None

    # -- WebSocket --------------------------------------------------------

    async def _websocket(self, request: web.Request) -> web.StreamResponse:
        if refusal := self._auth_failure(request):
            return refusal
        limit = self.concurrency_limit
        if limit is not None and len(self._sockets) >= _SOCKETS_PER_CONCURRENCY * limit:
            self._rejected_handshakes += 1
            sockets = _SOCKETS_PER_CONCURRENCY * limit
            return self._error_response(
                429,
                f"Too many concurrent WebSocket connections: your plan allows {sockets} "
                f"({_SOCKETS_PER_CONCURRENCY}x its concurrency limit of {limit}).",
            )
        if status := self._handshake_rejection():
            return self._error_response(status)
        ws = web.WebSocketResponse(timeout=1.0, max_msg_size=16 * 1024 * 1024)
        await ws.prepare(request)
        self._connections += 1
        self._sockets.add(ws)
        connection = _Connection(self, ws, request.path)
        if self.idle_timeout is not None:
            connection.watch_idle(self.idle_timeout)
        logger.debug(f"{self}: websocket connection {self._connections} open")
        try:
            async for message in ws:
                if message.type is WSMsgType.TEXT:
                    await connection.receive(message.data)
                elif message.type is WSMsgType.BINARY:
                    await connection.send(self._error_event(400, None, "send JSON text frames"))
        finally:
            self._sockets.discard(ws)
            await connection.close()
        return ws


def _word_timestamps(words: list[tuple], offset: float) -> dict[str, list]:
    return {
        "words": [w for w, _, _ in words],
        "start": [round(offset + s, 3) for _, s, _ in words],
        "end": [round(offset + e, 3) for _, _, e in words],
    }


@dataclass(slots=True)
class _Context:
    """One Cartesia context on one connection."""

    record: SynthesisRequest
    fmt: _Format
    inbox: asyncio.Queue = field(default_factory=asyncio.Queue)
    task: asyncio.Task | None = None
    closed: bool = False  # a ``continue: false`` arrived
    counted: bool = True  # against the concurrency limit, until done, error or cancel


class _Connection(WebSocketConnection):
    """The contexts of one WebSocket, each streamed by its own task."""

    _emu: CartesiaEmulator
    _contexts: dict[str, _Context]

    def watch_idle(self, timeout: float):
        """Close the socket, as Cartesia does, once nothing has passed either way for ``timeout``."""
        self._watchdog = self._emu._watch(timeout, self._idle, "cartesia-idle")

    async def _idle(self):
        logger.debug(f"{self._emu}: closing a websocket idle for {self._watchdog.timeout:g} s")
        await self._ws.close(code=1000, message=b"connection idle timeout")

    async def send(self, message: dict):
        if self._watchdog is not None:
            self._watchdog.kick()
        await super().send(message)

    async def receive(self, data: str):
        if self._watchdog is not None:
            self._watchdog.kick()
        message = self.parse(data)
        if message is None:
            await self.send(self._emu._error_event(400, None, "messages must be JSON objects"))
            return
        context_id = message.get("context_id") or f"ctx-{uuid.uuid4()}"
        if message.get("cancel"):
            context = self._contexts.pop(context_id, None)
            if context and context.task:
                self._uncount(context)  # now: the next message may open another
                context.task.cancel()
            return
        context = self._contexts.get(context_id)
        if context is None or (context.task is not None and context.task.done()):
            context = await self._open(context_id, message)
            if context is None:
                return
        elif context.closed:
            logger.debug(f"{self._emu}: input for finished context {context_id} ignored")
            return
        transcript = message.get("transcript") or ""
        if not isinstance(transcript, str):
            await self.send(self._emu._error_event(400, context_id, "transcript must be a string"))
            return
        if transcript:
            context.record.text += transcript
            context.inbox.put_nowait(("speak", transcript, bool(message.get("add_timestamps"))))
        if message.get("flush"):
            context.inbox.put_nowait(("flush",))
        if not message.get("continue", False):
            context.closed = True
            context.inbox.put_nowait(("done",))

    async def _open(self, context_id: str, message: dict) -> _Context | None:
        emu = self._emu
        try:
            fmt = _output_format(message.get("output_format"))
        except _BadRequest as e:
            await self.send(emu._error_event(400, context_id, str(e)))
            return None
        fields = {"context_id": context_id, "sample_rate": fmt.sample_rate}
        refusal = emu._misconfiguration(message)
        if refusal is None and not emu._acquire():
            refusal = emu._over_limit()
        if refusal is not None:
            text = message.get("transcript") if isinstance(message.get("transcript"), str) else ""
            await emu._refused_request("websocket", self._path, refusal.code, text=text, **fields)
            await self.send(emu._refusal_event(refusal, context_id))
            return None
        record = await emu._new_request("websocket", self._path, **fields)
        context = _Context(record, fmt)
        context.task = emu._spawn(self._stream(context_id, context), f"cartesia-{context_id}")
        self._contexts[context_id] = context
        return context

    async def _stream(self, context_id: str, context: _Context):
        try:
            await self._run(context_id, context)
        except ConnectionError:
            logger.debug(f"{self._emu}: context {context_id} lost its connection")
        finally:
            self._uncount(context)

    def _uncount(self, context: _Context):
        if context.counted:
            context.counted = False
            self._emu._release()

    async def _run(self, context_id: str, context: _Context):
        emu, fault = self._emu, context.record.fault
        kind = fault.kind if fault else None
        if fault and (status := fault.kind.reject_status):
            await self.send(emu._error_event(status, context_id))
            return
        if kind is FaultKind.QUOTA_EXCEEDED:
            await self.send(emu._error_event(402, context_id))
            return
        if kind is FaultKind.HANG:
            await _forever()
        offset, flushes, first = 0.0, 0, True
        while True:
            item = await context.inbox.get()
            if item[0] == "done":
                await self.send(
                    {"type": "done", "done": True, "status_code": 206, "context_id": context_id}
                )
                return
            if item[0] == "flush":
                flushes += 1
                await self.send(
                    {
                        "type": "flush_done",
                        "done": False,
                        "flush_done": True,
                        "flush_id": flushes,
                        "status_code": 206,
                        "context_id": context_id,
                    }
                )
                continue
            _, transcript, add_timestamps = item
            speech = synthesize(transcript, context.fmt.sample_rate, emu.ms_per_char)
            async for chunk in emu._chunks(
                speech, fault, encoding=context.fmt.encoding, first=first
            ):
                await self.send(
                    {
                        "type": "chunk",
                        "data": _b64(chunk.audio),
                        "done": False,
                        "status_code": 206,
                        "step_time": float(emu.chunk_ms),
                        "context_id": context_id,
                        # The transcript submission this audio belongs to: the
                        # flush that will end it (1 until the first flush_done).
                        "flush_id": flushes + 1,
                    }
                )
                last = chunk.end >= speech.duration
                if add_timestamps and (
                    words := _words_between(speech, chunk.start, chunk.end, last)
                ):
                    await self.send(
                        {
                            "type": "timestamps",
                            "done": False,
                            "status_code": 206,
                            "context_id": context_id,
                            "flush_id": flushes + 1,
                            "word_timestamps": _word_timestamps(words, offset),
                        }
                    )
            offset += speech.duration
            if first and kind is FaultKind.ERROR:
                await self.send(emu._error_event(500, context_id))
                return
            if first and kind is FaultKind.CLOSE_1011:
                self.close_soon(1011, "internal error")
                return
            if first and kind is FaultKind.STALL:
                await _forever()
            first = False
