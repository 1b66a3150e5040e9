"""A local ElevenLabs TTS API: the WebSocket endpoints and streaming HTTP on one port."""

import asyncio
import base64
import bisect
import json
from collections.abc import Collection
from dataclasses import dataclass, field
from typing import Any

from aiohttp import WSMsgType, web
from loguru import logger

from pipecat_tts_failover.testing._server import (
    Emulator,
    SynthesisRequest,
    WebSocketConnection,
    _check_count,
    _check_seconds,
    _Chunk,
    _forever,
)
from pipecat_tts_failover.testing._speech import Speech, synthesize
from pipecat_tts_failover.testing.faults import Fault, FaultKind

__all__ = ["ElevenLabsEmulator"]

#: ElevenLabs closes a WebSocket that received no text for this long (its default).
DEFAULT_INACTIVITY_TIMEOUT_S = 20.0
#: The largest ``inactivity_timeout`` ElevenLabs accepts.
MAX_INACTIVITY_TIMEOUT_S = 180.0
#: Contexts one multi-stream-input WebSocket may hold open at once.
MAX_CONTEXTS_PER_SOCKET = 5
#: ElevenLabs' text-to-speech model ids.
MODELS = frozenset(
    {
        "eleven_v3",
        "eleven_multilingual_v2",
        "eleven_flash_v2_5",
        "eleven_flash_v2",
        "eleven_turbo_v2_5",
        "eleven_turbo_v2",
        "eleven_multilingual_v1",
        "eleven_monolingual_v1",
    }
)
# Models the multi-context WebSocket does not serve (ElevenLabs' multi-context guide).
_NOT_MULTI_STREAM = frozenset({"eleven_v3"})

_PCM_RATES = (8000, 16000, 22050, 24000, 32000, 44100, 48000)
_ERRORS: dict[int, tuple[str, str]] = {
    400: ("invalid_request", "The request is invalid."),
    401: ("invalid_api_key", "Invalid API key"),
    429: ("too_many_concurrent_requests", "Too many concurrent requests for your subscription."),
    500: ("internal_server_error", "An internal server error occurred."),
    503: ("service_unavailable", "The service is temporarily unavailable."),
}
_MISSING_KEY = "Neither authorization header nor xi-api-key received, please provide one."
_SERVER_ERROR = "We are sorry, something went wrong. You are not charged for this request."
_SETTINGS_CHANGED = (
    "voice_settings field must be provided in the first message and then either be not "
    "provided or not change."
)
_TOO_MANY_CONTEXTS = (
    "Maximum simultaneous contexts per WebSocket connection exceeded ({limit}). "
    "Please close an existing context before opening a new one."
)
_INPUT_TIMEOUT = (
    "Have not received a new text input within the timeout of {seconds:g} seconds. Streaming "
    "input terminated. Please make sure to either feed the input in the timely manner, or to "
    'send the end of input text (empty string "") when done.'
)
_TOO_MANY_REQUESTS = (
    "Too many concurrent requests. Your current subscription is associated with a maximum of "
    "{limit} concurrent requests (running in parallel). This is done such that a single user "
    "does not overwhelm our systems and affect other users negatively. Please upgrade your "
    "subscription or contact sales if you want to increase this limit."
)
_QUOTA = 10000
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


def _quota_message(text: str, quota: int = _QUOTA, remaining: int = 0) -> str:
    return (
        f"This request exceeds your quota of {quota}. You have {remaining} credits remaining, "
        f"while {max(1, len(text))} credits are required for this request."
    )


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


def _ws_alignment(speech: Speech, chunk: _Chunk, split_words: bool) -> dict[str, list] | None:
    """WebSocket alignment of the characters that start in the chunk's audio, in ms from the first.

    As on the real API, alignment restarts at 0 in every message and a word
    may be split across messages (its first letters in one, the rest in the
    next): clients carry the partial word over and advance their clock by each
    message's span, so the spans tile the speech. Without ``split_words``,
    whole words ride on the message where they start.
    """
    if split_words:
        rate = speech.sample_rate
        starts = [round(t * rate) for t in speech.char_starts]
        lo = bisect.bisect_left(starts, round(chunk.start * rate))
        last = chunk.end >= speech.duration
        hi = len(starts) if last else bisect.bisect_left(starts, round(chunk.end * rate))
        chars = range(lo, hi)
    else:
        chars = chunk.chars
    if not chars:
        return None
    lo = chars[0]
    origin = speech.char_starts[lo]
    return {
        "chars": [speech.text[i] for i in chars],
        "charStartTimesMs": [round((speech.char_starts[i] - origin) * 1000) for i in chars],
        "charDurationsMs": [round(speech.char_durations[i] * 1000) for i in chars],
    }


class ElevenLabsEmulator(Emulator):
    """Serves ElevenLabs' text-to-speech API on 127.0.0.1, with fault injection.

    Routes, for any ``voice_id``: ``GET /v1/text-to-speech/{voice_id}/multi-stream-input``
    (contexts opened by ``{"text": " ", "context_id": ...}``; ``flush``,
    ``close_context``, ``close_socket``; empty text is a keepalive; replies are
    ``{"audio", "alignment", "normalizedAlignment", "contextId"}`` and
    ``{"isFinal": true, "contextId"}``), ``GET .../stream-input`` (one
    context per socket; empty text ends the input, then ``isFinal`` and a
    normal close), ``POST /v1/text-to-speech/{voice_id}`` and ``.../stream``
    (raw audio), and ``.../with-timestamps`` and ``.../stream/with-timestamps``
    (JSON / NDJSON with ``audio_base64`` and ``alignment``). Audio is PCM,
    mu-law or A-law as ``output_format`` asks; MP3 formats are refused with
    400. The key is read from the ``xi-api-key`` header, or on a WebSocket
    sent without one, from ``xi_api_key`` in the first message.

    Like the real API: a WebSocket with a wrong key, an unknown model or voice
    opens, then gets an error message and a 1008 close; every WebSocket error
    closes with 1008 (server errors too); a socket that received no text for
    ``inactivity_timeout`` seconds (the ``inactivity_timeout`` query
    parameter, at most 180) gets ``input_timeout_exceeded`` and 1008; a 6th
    open context on one multi-stream socket gets ``max_active_conversations``
    and 1008; ``voice_settings`` that change after a context's first message
    close it with 1008; ``close_socket`` lets every flushed context finish
    before closing; HTTP requests past ``concurrency_limit`` at once get 429
    ``too_many_concurrent_requests``, and every HTTP answer carries the
    ``current-concurrent-requests`` and ``maximum-concurrent-requests`` headers.

    Point clients at it with only a URL change::

        async with ElevenLabsEmulator() as emu:
            ws_tts = ElevenLabsTTSService(api_key="test-key", url=emu.ws_url, ...)
            http_tts = ElevenLabsHttpTTSService(
                api_key="test-key", base_url=emu.http_url, aiohttp_session=session, ...
            )
            client = AsyncElevenLabs(api_key="test-key", base_url=emu.http_url)

    Args:
        inactivity_timeout: Seconds a WebSocket may go without text when its
            URL does not say (ElevenLabs' default: 20); None never times out.
        max_contexts_per_socket: Contexts one multi-stream-input socket may
            hold open (ElevenLabs: 5); None for no cap.
        models: The model ids accepted; None accepts ElevenLabs' models.
        voices: The voice ids accepted; None accepts any.
        split_words: Split a word's WebSocket alignment across messages, as the
            real API does; False puts each word whole in the message where it
            starts.
        character_quota: The account's credits, one per character spoken (the
            real API's count for most models); a request that needs more than
            remain is refused with ``quota_exceeded`` (HTTP 401; on a WebSocket
            the error message and a 1008 close). None for no quota.
        **kwargs: See :class:`~pipecat_tts_failover.testing.Emulator`:
            ``port``, ``api_key``, ``fault``, ``speed``, ``chunk_ms``,
            ``ms_per_char``, ``host``, ``concurrency_limit`` (HTTP requests
            streaming at once; WebSockets are not counted).
    """

    provider = "elevenlabs"

    def __init__(
        self,
        *,
        inactivity_timeout: float | None = DEFAULT_INACTIVITY_TIMEOUT_S,
        max_contexts_per_socket: int | None = MAX_CONTEXTS_PER_SOCKET,
        models: Collection[str] | None = None,
        voices: Collection[str] | None = None,
        split_words: bool = True,
        character_quota: int | None = None,
        **kwargs: Any,
    ):
        super().__init__(**kwargs)
        _check_count("character_quota", character_quota)
        _check_seconds("inactivity_timeout", inactivity_timeout)
        if inactivity_timeout is not None and inactivity_timeout > MAX_INACTIVITY_TIMEOUT_S:
            raise ValueError(
                f"inactivity_timeout must be at most {MAX_INACTIVITY_TIMEOUT_S:g} s, as "
                f"ElevenLabs allows, got {inactivity_timeout!r}"
            )
        _check_count("max_contexts_per_socket", max_contexts_per_socket)
        for name, value in (("models", models), ("voices", voices)):
            if isinstance(value, str):
                raise TypeError(f"{name} must be a collection of ids, not one string {value!r}")
        self.inactivity_timeout = inactivity_timeout
        self.max_contexts_per_socket = max_contexts_per_socket
        self.models = frozenset(models) if models is not None else MODELS
        self.voices = frozenset(voices) if voices is not None else None
        self.split_words = split_words
        self.character_quota = character_quota
        self.characters_used = 0

    @property
    def clients(self) -> dict[str, str]:
        """How to point each pipecat service and the official SDK at this emulator."""
        return {
            "ElevenLabsTTSService": f'url="{self.ws_url}"',
            "ElevenLabsHttpTTSService": f'base_url="{self.http_url}"',
            "elevenlabs.client.AsyncElevenLabs": f'base_url="{self.http_url}"',
        }

    def _add_routes(self, app: web.Application):
        base = "/v1/text-to-speech/{voice_id}"
        app.router.add_get(f"{base}/multi-stream-input", self._websocket)
        app.router.add_get(f"{base}/stream-input", self._websocket)
        app.router.add_post(base, self._audio)
        app.router.add_post(f"{base}/stream", self._audio)
        app.router.add_post(f"{base}/with-timestamps", self._with_timestamps)
        app.router.add_post(f"{base}/stream/with-timestamps", self._with_timestamps)

    def _presented_key(self, request: web.Request) -> str | None:
        return request.headers.get("xi-api-key")

    def _error_body(self, status: int, message: str | None = None) -> dict[str, Any]:
        code, default = _ERRORS.get(status, _ERRORS[500])
        if status == 401 and message == "Missing API key":
            code, message = "needs_authorization", _MISSING_KEY
        return {"detail": {"status": code, "message": message or default}}

    @staticmethod
    def _detail(status: int, code: str, message: str, **headers: str) -> web.Response:
        body = {"detail": {"status": code, "message": message}}
        return web.json_response(body, status=status, headers=headers)

    def _ws_error(self, status: int, context_id: str | None, close_code: int) -> dict[str, Any]:
        code, message = _ERRORS.get(status, _ERRORS[500])
        return _ws_message(code, message, context_id, close_code)

    def _misconfiguration(self, request: web.Request, model: str | None) -> tuple[int, str, str]:
        """What is wrong with the voice or model asked for: (HTTP status, code, message)."""
        voice = request.match_info["voice_id"]
        if self.voices is not None and voice not in self.voices:
            return 404, "voice_not_found", f"A voice with the voice_id {voice} was not found."
        if model is not None and model not in self.models:
            return 400, "model_not_found", f"A model with model ID {model} does not exist."
        if model in _NOT_MULTI_STREAM and request.path.endswith("/multi-stream-input"):
            return (
                400,
                "unsupported_model",
                f"Multi-context WebSockets are not available for the {model} model.",
            )
        return 0, "", ""

    def _spend(self, text: str) -> str | None:
        """Charge ``text`` to the quota; the ``quota_exceeded`` message if too few credits remain."""
        if self.character_quota is None:
            return None
        remaining = max(0, self.character_quota - self.characters_used)
        if len(text) > remaining:
            return _quota_message(text, self.character_quota, remaining)
        self.characters_used += len(text)
        return None

    def _concurrency_headers(self) -> dict[str, str]:
        if self.concurrency_limit is None:
            return {}
        return {
            "current-concurrent-requests": str(self.active),
            "maximum-concurrent-requests": str(self.concurrency_limit),
        }

    # -- HTTP -------------------------------------------------------------

    async def _start_http(
        self, request: web.Request
    ) -> tuple[Speech, str, SynthesisRequest] | web.Response:
        """Check, parse and record an HTTP request; a response if it ends here.

        Past the checks the request counts against the concurrency limit:
        the caller releases it.
        """
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
        fields = {"text": body["text"], "sample_rate": rate}
        model = body.get("model_id") if isinstance(body.get("model_id"), str) else None
        status, code, message = self._misconfiguration(request, model)
        if status:
            await self._refused_request("http", request.path, code, **fields)
            return self._detail(status, code, message)
        if (over_quota := self._spend(body["text"])) is not None:
            await self._refused_request("http", request.path, "quota_exceeded", **fields)
            return self._detail(401, "quota_exceeded", over_quota)
        if not self._acquire():
            await self._refused_request("http", request.path, _ERRORS[429][0], **fields)
            return self._detail(
                429,
                _ERRORS[429][0],
                _TOO_MANY_REQUESTS.format(limit=self.concurrency_limit),
                **self._concurrency_headers(),
            )
        record = await self._new_request("http", request.path, **fields)
        return synthesize(body["text"], rate, self.ms_per_char), encoding, record

    async def _early_fault(self, record: SynthesisRequest) -> web.Response | None:
        """The faults that act before any audio: rejections, quota, ``error``, ``hang``."""
        fault = record.fault
        if fault is None:
            return None
        headers = self._concurrency_headers()
        if status := fault.kind.reject_status:
            return web.json_response(self._error_body(status), status=status, headers=headers)
        if fault.kind is FaultKind.QUOTA_EXCEEDED:
            return self._detail(401, "quota_exceeded", _quota_message(record.text), **headers)
        if fault.kind is FaultKind.ERROR:
            return web.json_response(self._error_body(500), status=500, headers=headers)
        if fault.kind is FaultKind.HANG:
            await _forever()
        return None

    async def _audio(self, request: web.Request) -> web.StreamResponse:
        started = await self._start_http(request)
        if isinstance(started, web.Response):
            return started
        speech, encoding, record = started
        try:
            if early := await self._early_fault(record):
                return early
            fault = record.fault
            response = web.StreamResponse(
                headers={"Content-Type": "application/octet-stream"} | self._concurrency_headers()
            )
            await self._prepare(request, response)
            async for chunk in self._chunks(speech, fault, encoding=encoding):
                await response.write(chunk.audio)
            return await self._end_http(request, response, fault)
        finally:
            self._release()

    async def _with_timestamps(self, request: web.Request) -> web.StreamResponse:
        started = await self._start_http(request)
        if isinstance(started, web.Response):
            return started
        speech, encoding, record = started
        try:
            if early := await self._early_fault(record):
                return early
            return await self._timestamped(request, speech, encoding, record.fault)
        finally:
            self._release()

    async def _timestamped(
        self, request: web.Request, speech: Speech, encoding: str, fault: Fault | None
    ) -> web.StreamResponse:
        headers = self._concurrency_headers()
        if not request.path.endswith("/stream/with-timestamps"):
            audio = b"".join(
                [c.audio async for c in self._chunks(speech, fault, encoding=encoding)]
            )
            if fault and fault.kind is FaultKind.STALL:
                await _forever()
            if fault and fault.kind is FaultKind.CLOSE_1011 and request.transport is not None:
                request.transport.abort()  # the connection drops before any answer
            everything = range(len(speech.text) if audio else 0)
            alignment = _http_alignment(speech, _Chunk(audio, 0.0, speech.duration, everything))
            body = {
                "audio_base64": _b64(audio),
                "alignment": alignment,
                "normalized_alignment": alignment,
            }
            return web.json_response(body, headers=headers)
        response = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"} | headers)
        await self._prepare(request, response)
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
        try:
            encoding, rate = _output_format(request.query.get("output_format"))
            timeout = self._inactivity_timeout(request.query.get("inactivity_timeout"))
        except _BadRequest as e:
            return self._error_response(400, str(e))
        if status := self._handshake_rejection():
            return self._error_response(status)
        ws = web.WebSocketResponse(timeout=1.0, max_msg_size=16 * 1024 * 1024)
        await ws.prepare(request)
        self._connections += 1
        self._sockets.add(ws)
        single = request.path.endswith("/stream-input") and "/multi-" not in request.path
        # auto_mode: the real API generates each text message as it comes, with no buffer.
        auto_mode = request.query.get("auto_mode", "false").lower() == "true"
        connection = _Connection(
            self, ws, request.path, encoding, rate, single=single, auto_mode=auto_mode
        )
        logger.debug(f"{self}: websocket connection {self._connections} open")
        try:
            if await connection.admit(request, timeout):
                async for message in ws:
                    if message.type is WSMsgType.TEXT:
                        await connection.receive(message.data)
                    elif message.type is WSMsgType.BINARY:
                        await connection.fail(self._ws_error(400, None, 1008))
        finally:
            self._sockets.discard(ws)
            await connection.close()
        return ws

    def _inactivity_timeout(self, value: str | None) -> float | None:
        """The ``inactivity_timeout`` query parameter, or the emulator's default."""
        if value is None:
            return self.inactivity_timeout
        try:
            seconds = float(value)
        except ValueError:
            seconds = -1.0
        if not 0 < seconds <= MAX_INACTIVITY_TIMEOUT_S:
            raise _BadRequest(
                f"inactivity_timeout must be a number of seconds in (0, "
                f"{MAX_INACTIVITY_TIMEOUT_S:g}], got {value!r}"
            )
        return seconds


def _ws_message(code: str, message: str, context_id: str | None, close_code: int) -> dict:
    """An ElevenLabs WebSocket error message: ``{message, error, code}``."""
    error: dict[str, Any] = {"message": message, "error": code, "code": close_code}
    if context_id is not None:
        error["contextId"] = context_id
    return error


@dataclass(slots=True)
class _Context:
    """One ElevenLabs context on one connection, from the first message that names it."""

    voice_settings: Any = None  # as its first message gave them
    record: SynthesisRequest | None = None  # from its first text on
    buffer: str = ""
    inbox: asyncio.Queue = field(default_factory=asyncio.Queue)
    task: asyncio.Task | None = None
    closed: bool = False  # ``close_context`` arrived


class _Connection(WebSocketConnection):
    """The contexts of one ElevenLabs WebSocket, each streamed by its own task.

    A ``stream-input`` socket (``single``) holds one context, whose replies
    carry no ``contextId``; its empty text ends the input and, after
    ``isFinal``, the socket.
    """

    _emu: "ElevenLabsEmulator"
    _contexts: dict[str, _Context]

    def __init__(
        self,
        emulator: ElevenLabsEmulator,
        ws: web.WebSocketResponse,
        path: str,
        encoding: str,
        sample_rate: int,
        *,
        single: bool = False,
        auto_mode: bool = False,
    ):
        super().__init__(emulator, ws, path)
        self._encoding = encoding
        self._sample_rate = sample_rate
        self._single = single
        self._auto_mode = auto_mode
        self._key_pending = False  # no key in the headers: the first message must carry it
        self._closing = False  # close_socket arrived, or a stream-input's end of input
        self._failed = False

    async def admit(self, request: web.Request, inactivity_timeout: float | None) -> bool:
        """Check the key, voice and model of a socket just opened; fail it (1008) if wrong."""
        emu = self._emu
        if emu._api_key is not None:
            key = emu._presented_key(request)
            if key is None:
                self._key_pending = True
            elif key != emu._api_key:
                await self.fail(_ws_message("invalid_api_key", "Invalid API key", None, 1008))
                return False
        status, code, message = emu._misconfiguration(request, request.query.get("model_id"))
        if status:
            await self.fail(_ws_message(code, message, None, 1008))
            return False
        if inactivity_timeout is not None:
            self._watchdog = emu._watch(inactivity_timeout, self._timed_out, "elevenlabs-idle")
        return True

    async def _timed_out(self):
        assert self._watchdog is not None
        message = _INPUT_TIMEOUT.format(seconds=self._watchdog.timeout)
        await self.fail(_ws_message("input_timeout_exceeded", message, None, 1008))

    async def fail(self, error: dict | None, reason: str | None = None):
        """Send an error message (if any) and close the socket with 1008, as the real API does."""
        if self._failed:
            return
        self._failed = True
        if error is not None:
            try:
                await self.send(error)
            except ConnectionError:
                return
        if reason is None:
            reason = error["message"] if error is not None else ""
        self.close_soon(1008, reason)

    async def receive(self, data: str):
        if self._failed:
            return
        message = self.parse(data)
        if message is None:
            error = self._emu._ws_error(400, None, 1008)
            error["error"] = "invalid_input_message"
            error["message"] = "Could not parse input message, make sure it is a json."
            await self.fail(error)
            return
        if "text" in message and self._watchdog is not None:
            self._watchdog.kick()
        if self._key_pending:
            key = message.get("xi_api_key", message.get("xi-api-key"))
            if key != self._emu._api_key:
                code, text = (
                    ("needs_authorization", _MISSING_KEY)
                    if key is None
                    else (
                        "invalid_api_key",
                        "Invalid API key",
                    )
                )
                await self.fail(_ws_message(code, text, None, 1008))
                return
            self._key_pending = False
        if self._closing:
            return
        if message.get("close_socket") and not self._single:
            await self._close_socket()
            return
        context_id = "default" if self._single else message.get("context_id") or "default"
        text = message.get("text")
        end_of_input = self._single and text == ""
        context = self._contexts.get(context_id)
        if context is None:
            if message.get("close_context") or end_of_input:
                return  # nothing open to close
            limit = self._emu.max_contexts_per_socket
            if not self._single and limit is not None and len(self._contexts) >= limit:
                reason = _TOO_MANY_CONTEXTS.format(limit=limit)
                await self._emu._refused_request(
                    "websocket", self._path, "max_active_conversations", context_id=context_id
                )
                await self.fail(_ws_message("max_active_conversations", reason, context_id, 1008))
                return
            context = _Context(voice_settings=message.get("voice_settings"))
            self._contexts[context_id] = context
        else:
            settings = message.get("voice_settings")
            if settings is not None and settings != context.voice_settings:
                await self.fail(None, _SETTINGS_CHANGED)
                return
        if context.closed:
            logger.debug(f"{self._emu}: input for closed context {context_id} ignored")
            return
        if isinstance(text, str) and text:
            if context.record is None:
                await self._start(context_id, context)
            assert context.record is not None
            context.buffer += text
            context.record.text = (context.record.text + text).lstrip()
            if self._auto_mode and context.buffer.strip():
                context.inbox.put_nowait(("speak", context.buffer))
                context.buffer = ""
            elif len(context.buffer) >= _AUTO_GENERATE_CHARS and " " in context.buffer:
                cut = context.buffer.rindex(" ") + 1
                context.inbox.put_nowait(("speak", context.buffer[:cut]))
                context.buffer = context.buffer[cut:]
        if (message.get("flush") or message.get("close_context") or end_of_input) and (
            context.buffer
        ):
            context.inbox.put_nowait(("speak", context.buffer))
            context.buffer = ""
        if message.get("close_context") or end_of_input:
            self._end(context_id, context)
            if end_of_input:
                self._closing = True

    def _end(self, context_id: str, context: _Context):
        """No more input for the context: ``isFinal`` once its audio is out."""
        context.closed = True
        if context.record is None:
            self._contexts.pop(context_id, None)
            self._emu._spawn(self._final(context_id), "elevenlabs-final")
        else:
            context.inbox.put_nowait(("final",))

    async def _close_socket(self):
        """``close_socket``: contexts already flushed finish, then the socket closes normally."""
        self._closing = True
        for context_id, context in list(self._contexts.items()):
            if not context.closed:
                context.buffer = ""  # text never flushed is not spoken
                self._end(context_id, context)
        if not self._contexts:
            self.close_soon(1000, "")

    async def _final(self, context_id: str):
        """Send ``isFinal``; close the socket if it was the last context of a closing socket."""
        final: dict[str, Any] = {"isFinal": True}
        if not self._single:
            final["contextId"] = context_id
        try:
            await self.send(final)
        except ConnectionError:
            return
        if self._closing and not self._contexts:
            self.close_soon(1000, "")

    async def _start(self, context_id: str, context: _Context):
        context.record = await self._emu._new_request(
            "websocket", self._path, context_id=context_id, sample_rate=self._sample_rate
        )
        context.task = self._emu._spawn(
            self._stream(context_id, context), f"elevenlabs-{context_id}"
        )

    async def _stream(self, context_id: str, context: _Context):
        try:
            await self._run(context_id, context)
        except ConnectionError:
            logger.debug(f"{self._emu}: context {context_id} lost its connection")

    def _reply(self, message: dict, context_id: str) -> dict:
        return message if self._single else message | {"contextId": context_id}

    async def _run(self, context_id: str, context: _Context):
        emu = self._emu
        assert context.record is not None
        fault = context.record.fault
        kind = fault.kind if fault else None
        if fault and (status := fault.kind.reject_status):
            await self.fail(emu._ws_error(status, context_id, 1008))
            return
        if kind is FaultKind.QUOTA_EXCEEDED:
            message = _quota_message(context.record.text or " ")
            await self.fail(_ws_message("quota_exceeded", message, context_id, 1008))
            return
        if kind is FaultKind.HANG:
            await _forever()
        first = True
        while True:
            item = await context.inbox.get()
            if item[0] == "final":
                self._contexts.pop(context_id, None)
                await self._final(context_id)
                return
            if (over_quota := emu._spend(item[1].strip())) is not None:
                context.record.refusal = "quota_exceeded"
                await self.fail(_ws_message("quota_exceeded", over_quota, context_id, 1008))
                return
            speech = synthesize(item[1], self._sample_rate, emu.ms_per_char)
            async for chunk in emu._chunks(speech, fault, encoding=self._encoding, first=first):
                alignment = _ws_alignment(speech, chunk, emu.split_words)
                reply = {
                    "audio": _b64(chunk.audio),
                    "alignment": alignment,
                    "normalizedAlignment": alignment,
                }
                await self.send(self._reply(reply, context_id))
            if first and kind is FaultKind.ERROR:
                error = _ws_message("internal_server_error", _SERVER_ERROR, context_id, 1008)
                await self.fail(error)
                return
            if first and kind is FaultKind.CLOSE_1011:
                self.close_soon(1011, "internal error")
                return
            if first and kind is FaultKind.STALL:
                await _forever()
            first = False
