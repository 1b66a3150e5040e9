"""A local ElevenLabs TTS API: multi-stream-input WebSocket and streaming HTTP on one port."""

import asyncio
import base64
import json
from dataclasses import dataclass, field
from typing import Any

from aiohttp import WSMsgType, web
from loguru import logger

from pipecat_tts_failover.testing._server import (
    Emulator,
    SynthesisRequest,
    WebSocketConnection,
    _Chunk,
    _forever,
)
from pipecat_tts_failover.testing._speech import Speech, synthesize
from pipecat_tts_failover.testing.faults import Fault, FaultKind

__all__ = ["ElevenLabsEmulator"]

_PCM_RATES = (8000, 16000, 22050, 24000, 32000, 44100, 48000)
_ERRORS: dict[int, tuple[str, str]] = {
    400: ("invalid_request", "The request is invalid."),
    401: ("invalid_api_key", "Invalid API key"),
    429: ("too_many_concurrent_requests", "Too many concurrent requests for your subscription."),
    500: ("internal_server_error", "An internal server error occurred."),
    503: ("service_unavailable", "The service is temporarily unavailable."),
}
# Text buffered in a context is spoken, without a flush, once it grows this long.
_AUTO_GENERATE_CHARS = 120


class _BadRequest(Exception):
    """A request the real API would refuse."""


def _output_format(value: str | None) -> tuple[str, int]:
    """Read ``output_format`` (``pcm_16000``, ``ulaw_8000``...) as (encoding, sample rate)."""
    value = value or "mp3_44100_128"
    name, _, rate_text = value.partition("_")
    rate = int(rate_text) if rate_text.isdigit() else None
    if name == "pcm" and rate in _PCM_RATES:
        return "pcm_s16le", rate  # type: ignore[return-value]
    if value == "ulaw_8000":
        return "pcm_mulaw", 8000
    if value == "alaw_8000":
        return "pcm_alaw", 8000
    supported = ", ".join([f"pcm_{r}" for r in _PCM_RATES] + ["ulaw_8000", "alaw_8000"])
    raise _BadRequest(f"the emulator produces only {supported}; got output_format={value!r}")


def _b64(audio: bytes) -> str:
    return base64.b64encode(audio).decode("ascii")


def _http_alignment(speech: Speech, chunk: _Chunk) -> dict[str, list] | None:
    """HTTP alignment of the chunk's words, in seconds from the start of speech."""
    if not chunk.chars:
        return None
    chars = chunk.chars
    return {
        "characters": [speech.text[i] for i in chars],
        "character_start_times_seconds": [round(speech.char_starts[i], 3) for i in chars],
        "character_end_times_seconds": [
            round(speech.char_starts[i] + speech.char_durations[i], 3) for i in chars
        ],
    }


def _ws_alignment(speech: Speech, chunk: _Chunk) -> dict[str, list] | None:
    """WebSocket alignment of the chunk's words, in ms from the first of their characters.

    The real API restarts alignment times in every message; clients advance
    their clock by each message's span, so the spans must tile the speech.
    Whole words ride on the message where they start, so no client has to
    carry half a word from one message to the next.
    """
    if not chunk.chars:
        return None
    origin = speech.char_starts[chunk.chars[0]]
    return {
        "chars": [speech.text[i] for i in chunk.chars],
        "charStartTimesMs": [round((speech.char_starts[i] - origin) * 1000) for i in chunk.chars],
        "charDurationsMs": [round(speech.char_durations[i] * 1000) for i in chunk.chars],
    }


class ElevenLabsEmulator(Emulator):
    """Serves ElevenLabs' text-to-speech API on 127.0.0.1, with fault injection.

    Routes, for any ``voice_id``: ``GET /v1/text-to-speech/{voice_id}/multi-stream-input``
    (contexts opened by ``{"text": " ", "context_id": ...}``; ``flush``,
    ``close_context``, ``close_socket``; empty text is a keepalive; replies are
    ``{"audio", "alignment", "normalizedAlignment", "contextId"}`` and
    ``{"isFinal": true, "contextId"}``), ``POST /v1/text-to-speech/{voice_id}``
    and ``.../stream`` (raw audio), and ``.../with-timestamps`` and
    ``.../stream/with-timestamps`` (JSON / NDJSON with ``audio_base64`` and
    ``alignment``). Audio is PCM, mu-law or A-law as ``output_format`` asks;
    MP3 formats are refused with 400. The key is read from ``xi-api-key``.

    Like the real API, a WebSocket error message is followed by closing the
    socket: ``error`` closes it with 1011, an in-band rejection with 1008.

    Point clients at it with only a URL change::

        async with ElevenLabsEmulator() as emu:
            ws_tts = ElevenLabsTTSService(api_key="test-key", url=emu.ws_url, ...)
            http_tts = ElevenLabsHttpTTSService(
                api_key="test-key", base_url=emu.http_url, aiohttp_session=session, ...
            )
            client = AsyncElevenLabs(api_key="test-key", base_url=emu.http_url)

    Args:
        **kwargs: See :class:`~pipecat_tts_failover.testing.Emulator`:
            ``port``, ``api_key``, ``fault``, ``speed``, ``chunk_ms``,
            ``ms_per_char``, ``host``.
    """

    provider = "elevenlabs"

    def _add_routes(self, app: web.Application):
        base = "/v1/text-to-speech/{voice_id}"
        app.router.add_get(f"{base}/multi-stream-input", self._websocket)
        app.router.add_post(base, self._audio)
        app.router.add_post(f"{base}/stream", self._audio)
        app.router.add_post(f"{base}/with-timestamps", self._with_timestamps)
        app.router.add_post(f"{base}/stream/with-timestamps", self._with_timestamps)

    def _presented_key(self, request: web.Request) -> str | None:
        return request.headers.get("xi-api-key")

    def _error_body(self, status: int, message: str | None = None) -> dict[str, Any]:
        code, default = _ERRORS.get(status, _ERRORS[500])
        if status == 401 and message == "Missing API key":
            code, message = (
                "needs_authorization",
                "Neither authorization header nor xi-api-key received.",
            )
        return {"detail": {"status": code, "message": message or default}}

    def _ws_error(self, status: int, context_id: str | None, close_code: int) -> dict[str, Any]:
        code, message = _ERRORS.get(status, _ERRORS[500])
        error: dict[str, Any] = {"message": message, "error": code, "code": close_code}
        if context_id is not None:
            error["contextId"] = context_id
        return error

    # -- HTTP -------------------------------------------------------------

    async def _start_http(
        self, request: web.Request
    ) -> tuple[Speech, str, Fault | None] | web.Response:
        """Check, parse and record an HTTP request; a response if it ends here."""
        if refusal := self._auth_failure(request):
            return refusal
        try:
            encoding, rate = _output_format(request.query.get("output_format"))
        except _BadRequest as e:
            return self._error_response(400, str(e))
        try:
            body = await request.json()
        except ValueError:
            body = None
        if not isinstance(body, dict) or not isinstance(body.get("text"), str):
            # The real API validates bodies with FastAPI: 422 and a list of problems.
            problem = {"loc": ["body", "text"], "msg": "Field required", "type": "missing"}
            return web.json_response({"detail": [problem]}, status=422)
        record = await self._new_request("http", request.path, text=body["text"], sample_rate=rate)
        fault = record.fault
        if fault is not None:
            if status := fault.kind.reject_status:
                return self._error_response(status)
            if fault.kind is FaultKind.ERROR:
                return self._error_response(500)
            if fault.kind is FaultKind.HANG:
                await _forever()
        return synthesize(body["text"], rate, self.ms_per_char), encoding, fault

    async def _audio(self, request: web.Request) -> web.StreamResponse:
        started = await self._start_http(request)
        if isinstance(started, web.Response):
            return started
        speech, encoding, fault = started
        response = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
        await response.prepare(request)
        async for chunk in self._chunks(speech, fault, encoding=encoding):
            await response.write(chunk.audio)
        return await self._end_http(request, response, fault)

    async def _with_timestamps(self, request: web.Request) -> web.StreamResponse:
        started = await self._start_http(request)
        if isinstance(started, web.Response):
            return started
        speech, encoding, fault = started
        streaming = request.path.endswith("/stream/with-timestamps")
        if not streaming:
            audio = b"".join(
                [c.audio async for c in self._chunks(speech, fault, encoding=encoding)]
            )
            if fault and fault.kind is FaultKind.STALL:
                await _forever()
            if fault and fault.kind is FaultKind.CLOSE_1011 and request.transport is not None:
                request.transport.abort()  # the connection drops before any answer
            everything = range(len(speech.text) if audio else 0)
            alignment = _http_alignment(speech, _Chunk(audio, 0.0, speech.duration, everything))
            return web.json_response(
                {
                    "audio_base64": _b64(audio),
                    "alignment": alignment,
                    "normalized_alignment": alignment,
                }
            )
        response = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
        await response.prepare(request)
        async for chunk in self._chunks(speech, fault, encoding=encoding):
            alignment = _http_alignment(speech, chunk)
            line = {
                "audio_base64": _b64(chunk.audio),
                "alignment": alignment,
                "normalized_alignment": alignment,
            }
            await response.write(json.dumps(line).encode() + b"\n")
        return await self._end_http(request, response, fault)

    # -- WebSocket --------------------------------------------------------

    async def _websocket(self, request: web.Request) -> web.StreamResponse:
        if refusal := self._auth_failure(request):
            return refusal
        try:
            encoding, rate = _output_format(request.query.get("output_format"))
        except _BadRequest as e:
            return self._error_response(400, str(e))
        if status := self._handshake_rejection():
            return self._error_response(status)
        ws = web.WebSocketResponse(timeout=1.0, max_msg_size=16 * 1024 * 1024)
        await ws.prepare(request)
        self._connections += 1
        self._sockets.add(ws)
        connection = _Connection(self, ws, request.path, encoding, rate)
        logger.debug(f"{self}: websocket connection {self._connections} open")
        try:
            async for message in ws:
                if message.type is WSMsgType.TEXT:
                    await connection.receive(message.data)
                elif message.type is WSMsgType.BINARY:
                    await connection.fail(self._ws_error(400, None, 1008), 1008)
        finally:
            self._sockets.discard(ws)
            await connection.close()
        return ws


@dataclass(slots=True)
class _Context:
    """One ElevenLabs context on one connection."""

    record: SynthesisRequest
    buffer: str = ""
    inbox: asyncio.Queue = field(default_factory=asyncio.Queue)
    task: asyncio.Task | None = None
    closed: bool = False  # ``close_context`` arrived


class _Connection(WebSocketConnection):
    """The contexts of one multi-stream-input WebSocket, each streamed by its own task."""

    _emu: "ElevenLabsEmulator"
    _contexts: dict[str, _Context]

    def __init__(
        self,
        emulator: ElevenLabsEmulator,
        ws: web.WebSocketResponse,
        path: str,
        encoding: str,
        sample_rate: int,
    ):
        super().__init__(emulator, ws, path)
        self._encoding = encoding
        self._sample_rate = sample_rate

    async def fail(self, error: dict, close_code: int):
        """Send an error message and close the socket, as the real API does."""
        await self.send(error)
        reason = error["message"].encode()[:120]
        self._emu._spawn(self._ws.close(code=close_code, message=reason), "elevenlabs-close")

    async def receive(self, data: str):
        message = self.parse(data)
        if message is None:
            error = self._emu._ws_error(400, None, 1008)
            error["error"] = "invalid_input_message"
            error["message"] = "Could not parse input message, make sure it is a json."
            await self.fail(error, 1008)
            return
        if message.get("close_socket"):
            self._emu._spawn(self._ws.close(code=1000), "elevenlabs-close")
            return
        context_id = message.get("context_id") or "default"
        text = message.get("text")
        context = self._contexts.get(context_id)
        if context is None or context.closed:
            if not text or context is not None:
                return  # a keepalive or a close for a context that is not open
            context = await self._open(context_id)
        if isinstance(text, str) and text:
            context.buffer += text
            context.record.text = (context.record.text + text).lstrip()
            if len(context.buffer) >= _AUTO_GENERATE_CHARS and " " in context.buffer:
                cut = context.buffer.rindex(" ") + 1
                context.inbox.put_nowait(("speak", context.buffer[:cut]))
                context.buffer = context.buffer[cut:]
        if (message.get("flush") or message.get("close_context")) and context.buffer:
            context.inbox.put_nowait(("speak", context.buffer))
            context.buffer = ""
        if message.get("close_context"):
            context.closed = True
            context.inbox.put_nowait(("final",))

    async def _open(self, context_id: str) -> _Context:
        record = await self._emu._new_request(
            "websocket", self._path, context_id=context_id, sample_rate=self._sample_rate
        )
        context = _Context(record)
        context.task = self._emu._spawn(
            self._stream(context_id, context), f"elevenlabs-{context_id}"
        )
        self._contexts[context_id] = context
        return context

    async def _stream(self, context_id: str, context: _Context):
        try:
            await self._run(context_id, context)
        except ConnectionError:
            logger.debug(f"{self._emu}: context {context_id} lost its connection")

    async def _run(self, context_id: str, context: _Context):
        emu, fault = self._emu, context.record.fault
        kind = fault.kind if fault else None
        if fault and (status := fault.kind.reject_status):
            await self.fail(emu._ws_error(status, context_id, 1008), 1008)
            return
        if kind is FaultKind.HANG:
            await _forever()
        first = True
        while True:
            item = await context.inbox.get()
            if item[0] == "final":
                await self.send({"isFinal": True, "contextId": context_id})
                self._contexts.pop(context_id, None)
                return
            speech = synthesize(item[1], self._sample_rate, emu.ms_per_char)
            async for chunk in emu._chunks(speech, fault, encoding=self._encoding, first=first):
                alignment = _ws_alignment(speech, chunk)
                await self.send(
                    {
                        "audio": _b64(chunk.audio),
                        "alignment": alignment,
                        "normalizedAlignment": alignment,
                        "contextId": context_id,
                    }
                )
            if first and kind is FaultKind.ERROR:
                await self.fail(emu._ws_error(500, context_id, 1011), 1011)
                return
            if first and kind is FaultKind.CLOSE_1011:
                emu._spawn(self._ws.close(code=1011, message=b"internal error"), "elevenlabs-close")
                return
            if first and kind is FaultKind.STALL:
                await _forever()
            first = False
