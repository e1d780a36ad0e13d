"""A tiny local OpenAI-compatible HTTP server for tests (standard library only).

The official ``openai`` SDK talks real HTTP to it, so the whole client stack
(serialisation, pydantic parsing, error mapping, retries) is exercised without
ever touching the internet.  Responses are scripted per test and consumed in
order, one per ``POST /v1/chat/completions`` request; every request is recorded.

Usage::

    from openai import OpenAI

    from tests.support.openai_server import (
        OpenAITestServer, reply_error, reply_text, reply_tool_calls, tool_call,
    )

    with OpenAITestServer() as server:
        server.script([
            reply_error(429, "slow down", retry_after_ms=10),  # SDK retries
            reply_tool_calls([("lookup_order", {"order_id": 7})]),
            reply_tool_calls([tool_call("lookup_order", raw_arguments="{not json")]),
            lambda req: reply_text(f"{len(req['messages'])} messages seen"),
            reply_text("Done.", prompt_tokens=12, completion_tokens=3),
        ])
        client = OpenAI(base_url=server.base_url, api_key="sk-test", max_retries=1)
        ...
        assert server.chat_requests[0].json["model"] == "gpt-4o-mini"
        assert server.pending == 0

Like the real API, it refuses (before consuming a scripted reply) what the API
refuses: a request without a bearer key (401; ``api_key=``/``expected_api_key`` pins the
key), and with 400 an assistant message without ``content`` and without ``tool_calls``,
a ``tool`` message that answers no open ``tool_call_id`` of the assistant message before
it, an assistant's tool calls left unanswered, and a strict schema (``response_format``
json_schema or a tool with ``strict``) that has a ``default``, an object without
``additionalProperties: false`` or a property missing from ``required``.

``outage(seconds=None, status=503)`` answers every chat request with ``status`` (the
script is not consumed) until the window ends or ``end_outage()``: an overloaded or
restarting provider.

When the script is exhausted the server answers ``500`` with the message
"openai test server: no scripted response left" (and ``x-should-retry: false``
so the SDK does not retry), which makes unexpected calls fail loudly.

Note on retries (openai SDK ``_base_client``): ``retry-after-ms`` is preferred
over ``retry-after``; a delay is only honoured when ``0 < delay <= 120`` s, so
``retry-after: 0`` falls back to exponential backoff (~0.5 s).  Use
``retry_after_ms=10`` to keep retry tests fast.  ``x-should-retry`` overrides
the SDK's status-based decision (408/409/429/5xx are retried by default).
"""

from __future__ import annotations

import itertools
import json
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Self
from urllib.parse import urlsplit

from tests.support.servers import BackgroundHTTPServer, QuietHandler

__all__ = [
    "NO_SCRIPT_MESSAGE",
    "ChatReply",
    "ErrorReply",
    "OpenAITestServer",
    "RawReply",
    "RecordedRequest",
    "Reply",
    "Responder",
    "ScriptItem",
    "ToolCall",
    "reply_error",
    "reply_raw",
    "reply_text",
    "reply_tool_calls",
    "tool_call",
]

CHAT_COMPLETIONS_PATH = "/v1/chat/completions"
MODELS_PATH = "/v1/models"
NO_SCRIPT_MESSAGE = "openai test server: no scripted response left"

FinishReason = Literal["stop", "length", "tool_calls", "content_filter", "function_call"]


# --------------------------------------------------------------------------- reply specs


@dataclass(frozen=True, kw_only=True)
class ToolCall:
    """One function tool call in an assistant message; ``id=None`` -> ``call_<n>``."""

    name: str
    arguments: str
    id: str | None = None


@dataclass(frozen=True, kw_only=True)
class ChatReply:
    """A successful chat completion (the server fills ``id``, ``created``, ``model``)."""

    content: str | None = None
    tool_calls: tuple[ToolCall, ...] = ()
    finish_reason: FinishReason = "stop"
    prompt_tokens: int = 10
    completion_tokens: int = 5
    model: str | None = None  # default: echo the request's model
    headers: Mapping[str, str] = field(default_factory=dict)
    delay: float = 0.0  # seconds to sleep before answering (timeout tests)


@dataclass(frozen=True, kw_only=True)
class ErrorReply:
    """An HTTP error with OpenAI's error body ``{"error": {message, type, param, code}}``."""

    status: int
    message: str
    type: str
    code: str | None = None
    param: str | None = None
    headers: Mapping[str, str] = field(default_factory=dict)
    delay: float = 0.0


@dataclass(frozen=True, kw_only=True)
class RawReply:
    """Full control: any status, any body (JSON-serialisable value, or raw ``bytes``)."""

    status: int = 200
    body: Any = None
    content_type: str = "application/json"
    headers: Mapping[str, str] = field(default_factory=dict)
    delay: float = 0.0


Reply = ChatReply | ErrorReply | RawReply
#: A callable computing the reply from the parsed request JSON (``str`` = text reply).
Responder = Callable[[dict[str, Any]], Reply | str]
#: What ``OpenAITestServer.script`` accepts; a bare ``str`` is shorthand for ``reply_text``.
ScriptItem = Reply | str | Responder


def reply_text(
    content: str,
    *,
    prompt_tokens: int = 10,
    completion_tokens: int = 5,
    finish_reason: FinishReason = "stop",
    model: str | None = None,
    delay: float = 0.0,
) -> ChatReply:
    """An assistant message with ``content`` (finish_reason ``"stop"`` by default)."""
    return ChatReply(
        content=content,
        finish_reason=finish_reason,
        prompt_tokens=prompt_tokens,
        completion_tokens=completion_tokens,
        model=model,
        delay=delay,
    )


def tool_call(
    name: str,
    arguments: Mapping[str, Any] | None = None,
    *,
    raw_arguments: str | None = None,
    id: str | None = None,
) -> ToolCall:
    """A function tool call; ``raw_arguments`` is sent verbatim (e.g. invalid JSON)."""
    if arguments is not None and raw_arguments is not None:
        raise ValueError("pass either arguments or raw_arguments, not both")
    if raw_arguments is None:
        raw_arguments = json.dumps(dict(arguments or {}))
    return ToolCall(name=name, arguments=raw_arguments, id=id)


def reply_tool_calls(
    calls: Sequence[ToolCall | tuple[str, Mapping[str, Any] | str]],
    *,
    content: str | None = None,
    prompt_tokens: int = 10,
    completion_tokens: int = 5,
    model: str | None = None,
    delay: float = 0.0,
) -> ChatReply:
    """An assistant message requesting tool calls (finish_reason ``"tool_calls"``).

    Each call is a ``ToolCall`` (see ``tool_call``) or a ``(name, arguments)`` tuple
    where ``arguments`` is a mapping (JSON-encoded) or a raw string (sent verbatim).
    Ids default to ``call_1``, ``call_2``, ... unique per server (until ``reset()``).
    """
    built: list[ToolCall] = []
    for call in calls:
        if isinstance(call, ToolCall):
            built.append(call)
        else:
            name, args = call
            if isinstance(args, str):
                built.append(tool_call(name, raw_arguments=args))
            else:
                built.append(tool_call(name, args))
    if not built:
        raise ValueError("reply_tool_calls needs at least one call")
    return ChatReply(
        content=content,
        tool_calls=tuple(built),
        finish_reason="tool_calls",
        prompt_tokens=prompt_tokens,
        completion_tokens=completion_tokens,
        model=model,
        delay=delay,
    )


# status -> (default type, default code), modelled on api.openai.com answers.
_ERROR_DEFAULTS: dict[int, tuple[str, str | None]] = {
    400: ("invalid_request_error", None),
    401: ("invalid_request_error", "invalid_api_key"),
    403: ("invalid_request_error", None),
    404: ("invalid_request_error", "model_not_found"),
    429: ("requests", "rate_limit_exceeded"),
}


class _Unset:
    """Sentinel type: argument not given (distinct from an explicit ``None``)."""


_UNSET = _Unset()


def reply_error(
    status: int,
    message: str,
    *,
    type: str | None = None,
    code: str | _Unset | None = _UNSET,
    param: str | None = None,
    retry_after: float | str | None = None,
    retry_after_ms: float | None = None,
    should_retry: bool | None = None,
    headers: Mapping[str, str] | None = None,
    delay: float = 0.0,
) -> ErrorReply:
    """An HTTP error response in OpenAI's format.

    ``type``/``code`` default by status: 401 -> invalid_api_key, 429 ->
    rate_limit_exceeded, >=500 -> server_error.  ``retry_after`` sets ``retry-after``,
    ``retry_after_ms`` sets ``retry-after-ms``, ``should_retry`` sets ``x-should-retry``.
    """
    default_type, default_code = _ERROR_DEFAULTS.get(
        status, ("server_error", None) if status >= 500 else ("invalid_request_error", None)
    )
    all_headers = dict(headers or {})
    if retry_after is not None:
        all_headers["retry-after"] = str(retry_after)
    if retry_after_ms is not None:
        all_headers["retry-after-ms"] = str(retry_after_ms)
    if should_retry is not None:
        all_headers["x-should-retry"] = "true" if should_retry else "false"
    return ErrorReply(
        status=status,
        message=message,
        type=default_type if type is None else type,
        code=default_code if isinstance(code, _Unset) else code,
        param=param,
        headers=all_headers,
        delay=delay,
    )


def reply_raw(
    body: Any,
    *,
    status: int = 200,
    content_type: str = "application/json",
    headers: Mapping[str, str] | None = None,
    delay: float = 0.0,
) -> RawReply:
    """Any response at all (``bytes`` bodies are sent verbatim, others JSON-encoded)."""
    return RawReply(
        status=status,
        body=body,
        content_type=content_type,
        headers=dict(headers or {}),
        delay=delay,
    )


# --------------------------------------------------------------------------- records


@dataclass(frozen=True)
class RecordedRequest:
    """One request as received. ``headers`` keys are lowercase; ``json`` is the parsed body."""

    method: str
    path: str
    headers: dict[str, str]
    json: Any
    body: bytes = b""

    @property
    def messages(self) -> list[dict[str, Any]]:
        """``json["messages"]`` (empty list when absent)."""
        if isinstance(self.json, dict):
            messages = self.json.get("messages")
            if isinstance(messages, list):
                return messages
        return []


# --------------------------------------------------------------------------- request rules
# What the Chat Completions API refuses with 400 (checked before a scripted reply is
# consumed), so that a request the real API would refuse cannot pass here.


def messages_violation(messages: Any) -> str | None:
    """The message list's first violation of the API's rules, or None.

    - an assistant message needs `content` unless it carries `tool_calls` (non-empty);
    - an assistant message with `tool_calls` is followed by one `tool` message per call;
    - a `tool` message answers a `tool_call_id` of the assistant message before it.
    """
    if not isinstance(messages, list) or not messages:
        return "'messages' must be a non-empty array"
    open_calls: set[str] = set()  # ids of the last assistant turn not answered yet
    for index, message in enumerate(messages):
        where = f"messages[{index}]"
        if not isinstance(message, dict):
            return f"{where} is not an object"
        role = message.get("role")
        if role not in {"system", "developer", "user", "assistant", "tool"}:
            return f"{where}: invalid role {role!r}"
        if role != "tool" and open_calls:
            return (
                "An assistant message with 'tool_calls' must be followed by tool messages "
                f"responding to each 'tool_call_id'. The following tool_call_ids did not have "
                f"response messages: {', '.join(sorted(open_calls))}"
            )
        if role == "assistant":
            calls = message.get("tool_calls")
            if calls is not None and (not isinstance(calls, list) or not calls):
                return f"{where}.tool_calls: expected a non-empty array"
            if not calls and message.get("content") is None:
                return f"{where}: 'content' is required unless 'tool_calls' is specified"
            for call in calls or []:
                call_id = call.get("id") if isinstance(call, dict) else None
                if not isinstance(call_id, str) or not call_id:
                    return f"{where}.tool_calls: every call needs an 'id'"
                open_calls.add(call_id)
        elif role == "tool":
            call_id = message.get("tool_call_id")
            if call_id not in open_calls:
                return (
                    f"{where}: messages with role 'tool' must be a response to a preceding "
                    f"message with 'tool_calls' (no open call {call_id!r})"
                )
            open_calls.discard(call_id)
            if not isinstance(message.get("content"), str | list):
                return f"{where}: 'content' is required"
        elif message.get("content") is None:
            return f"{where}: 'content' is required"
    if open_calls:
        return (
            "An assistant message with 'tool_calls' must be followed by tool messages "
            f"responding to each 'tool_call_id': {', '.join(sorted(open_calls))}"
        )
    return None


def strict_schema_violation(schema: Any, path: str = "") -> str | None:
    """What strict mode refuses in a JSON schema: `default` anywhere, an object without
    `additionalProperties: false`, a property missing from `required`."""
    if isinstance(schema, list):
        for index, item in enumerate(schema):
            if problem := strict_schema_violation(item, f"{path}[{index}]"):
                return problem
        return None
    if not isinstance(schema, dict):
        return None
    where = path or "(root)"
    if "default" in schema:
        return f"In context={where}, 'default' is not permitted"
    if schema.get("type") == "object" or "properties" in schema:
        if schema.get("additionalProperties") is not False:
            return (
                f"In context={where}, 'additionalProperties' is required to be supplied "
                "and to be false"
            )
        properties = schema.get("properties") or {}
        missing = [name for name in properties if name not in (schema.get("required") or [])]
        if missing:
            return (
                f"In context={where}, 'required' is required to be supplied and to be an "
                f"array including every key in properties. Missing {missing[0]!r}"
            )
    for key, value in schema.items():
        if key in {"properties", "$defs", "definitions"} and isinstance(value, dict):
            for name, sub in value.items():
                if problem := strict_schema_violation(sub, f"{path}.{key}.{name}"):
                    return problem
        elif key in {"items", "anyOf", "allOf", "oneOf", "not", "additionalProperties"}:
            if problem := strict_schema_violation(value, f"{path}.{key}"):
                return problem
    return None


def tools_violation(tools: Any) -> str | None:
    for index, spec in enumerate(tools or []):
        function = spec.get("function") if isinstance(spec, dict) else None
        if not isinstance(function, dict) or not function.get("name"):
            return f"tools[{index}]: a function tool needs a 'function' with a 'name'"
        if function.get("strict"):
            problem = strict_schema_violation(function.get("parameters") or {})
            if problem:
                return f"Invalid schema for function {function['name']!r}: {problem}"
    return None


def response_format_violation(response_format: Any) -> str | None:
    if not isinstance(response_format, dict) or response_format.get("type") != "json_schema":
        return None
    spec = response_format.get("json_schema") or {}
    if not spec.get("name"):
        return "response_format.json_schema: 'name' is required"
    if spec.get("strict"):
        problem = strict_schema_violation(spec.get("schema") or {})
        if problem:
            return f"Invalid schema for response_format {spec['name']!r}: {problem}"
    return None


# --------------------------------------------------------------------------- server


class _Handler(QuietHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, like the real API

    def do_GET(self) -> None:
        self.server.owner._handle(self, "GET")

    def do_POST(self) -> None:
        self.server.owner._handle(self, "POST")

    def do_DELETE(self) -> None:
        self.server.owner._handle(self, "DELETE")

    def send_bytes(
        self, status: int, data: bytes, content_type: str, headers: Mapping[str, str]
    ) -> None:
        self.send_response(status)
        self.send_header("content-type", content_type)
        self.send_header("content-length", str(len(data)))
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)
        self.wfile.flush()


def _error_body(message: str, type_: str, code: str | None, param: str | None = None) -> Any:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


class OpenAITestServer(BackgroundHTTPServer):
    """Scripted OpenAI-compatible server on ``127.0.0.1:<ephemeral port>``."""

    handler_class = _Handler
    thread_name = "openai-test-server"

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        models: Sequence[str] = ("gpt-4o-mini", "gpt-4o"),
        api_key: str | None = None,
    ) -> None:
        super().__init__(host, port)
        # The bearer key requests must carry (401 otherwise, as the API answers); None
        # accepts any non-empty key, but never a request without one.
        self.expected_api_key = api_key
        self._models = tuple(models)
        self._lock = threading.Lock()
        self._script: deque[ScriptItem] = deque()
        self._requests: list[RecordedRequest] = []
        self._errors: list[str] = []
        self._ids = itertools.count(1)
        self._call_ids = itertools.count(1)
        self._fallback: ScriptItem | None = None
        self._outage_until: float | None = None
        self._outage_status = 503
        self.outage_answered = 0  # chat requests answered with the outage's status
        self._in_flight = 0
        self.max_in_flight = 0  # most chat requests being answered at once

    # -- lifecycle -----------------------------------------------------------------

    def start(self) -> Self:
        return self if self.started else super().start()

    @property
    def url(self) -> str:
        """``http://127.0.0.1:PORT`` (no ``/v1``)."""
        return super().base_url

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:PORT/v1`` - pass as ``OpenAI(base_url=...)``."""
        return f"{self.url}/v1"

    # -- scripting & records ---------------------------------------------------------

    def script(self, items: Iterable[ScriptItem]) -> None:
        """Queue responses, consumed in order, one per chat completion request."""
        with self._lock:
            self._script.extend(items)

    def respond_with(self, item: ScriptItem | None) -> None:
        """Answer every chat request the script does not cover with `item` (a callable
        sees each request), instead of the "no scripted response" error."""
        with self._lock:
            self._fallback = item

    def outage(self, seconds: float | None = None, *, status: int = 503) -> None:
        """Answer every chat request with `status` until `end_outage()`, or for `seconds`."""
        with self._lock:
            self._outage_until = time.monotonic() + (float("inf") if seconds is None else seconds)
            self._outage_status = status

    def end_outage(self) -> None:
        with self._lock:
            self._outage_until = None

    def _in_outage(self) -> bool:
        return self._outage_until is not None and time.monotonic() < self._outage_until

    def reset(self) -> None:
        """Forget the script, the fallback, the outage, recorded requests, errors and
        counters."""
        with self._lock:
            self._outage_until = None
            self.outage_answered = 0
            self._fallback = None
            self.max_in_flight = 0
            self._script.clear()
            self._requests.clear()
            self._errors.clear()
            self._ids = itertools.count(1)
            self._call_ids = itertools.count(1)

    @property
    def pending(self) -> int:
        """Number of scripted responses not consumed yet."""
        with self._lock:
            return len(self._script)

    @property
    def requests(self) -> list[RecordedRequest]:
        """Every request received (a copy), in arrival order."""
        with self._lock:
            return list(self._requests)

    @property
    def chat_requests(self) -> list[RecordedRequest]:
        """Only the ``POST /v1/chat/completions`` requests."""
        with self._lock:
            return [r for r in self._requests if r.path == CHAT_COMPLETIONS_PATH]

    @property
    def errors(self) -> list[str]:
        """Problems the server met (script exhausted, responder raised, bad request...)."""
        with self._lock:
            return list(self._errors)

    # -- request handling ------------------------------------------------------------

    def _handle(self, handler: _Handler, method: str) -> None:
        path = urlsplit(handler.path).path.rstrip("/") or "/"
        body = handler.read_body()
        headers = {k.lower(): v for k, v in handler.headers.items()}
        parsed: Any = None
        if body:
            try:
                parsed = json.loads(body)
            except ValueError:
                parsed = None

        item: ScriptItem | None = None
        is_chat = method == "POST" and path == CHAT_COMPLETIONS_PATH
        violation = self._violation(headers, parsed) if is_chat else None
        with self._lock:
            self._requests.append(RecordedRequest(method, path, headers, parsed, body))
            outage = self._outage_status if is_chat and self._in_outage() else None
            self.outage_answered += outage is not None
            if outage is not None:  # the provider is down: nothing consumed
                is_chat = False
            elif violation is not None:  # refused as the API refuses it: nothing consumed
                is_chat = False
            elif is_chat and isinstance(parsed, dict) and not parsed.get("stream"):
                item = self._script.popleft() if self._script else self._fallback
            if is_chat:
                self._in_flight += 1
                self.max_in_flight = max(self.max_in_flight, self._in_flight)
        try:
            if outage is not None:
                self._send(handler, reply_error(outage, "openai test server: outage"))
            elif violation is not None:
                self._fail(handler, *violation)
            else:
                self._answer(handler, method, path, parsed, item)
        finally:
            if is_chat:
                with self._lock:
                    self._in_flight -= 1

    def _answer(
        self, handler: _Handler, method: str, path: str, parsed: Any, item: ScriptItem | None
    ) -> None:

        if method == "GET" and path == MODELS_PATH:
            self._send(handler, reply_raw(self._models_body()))
        elif method == "GET" and path.startswith(MODELS_PATH + "/"):
            self._send(handler, reply_raw(self._model_body(path[len(MODELS_PATH) + 1 :])))
        elif not (method == "POST" and path == CHAT_COMPLETIONS_PATH):
            self._fail(handler, 404, f"openai test server: unknown endpoint {method} {path}")
        elif not isinstance(parsed, dict):
            self._fail(handler, 400, "openai test server: request body is not a JSON object")
        elif parsed.get("stream"):
            self._fail(handler, 400, "openai test server: streaming is not supported")
        elif item is None:
            self._fail(handler, 500, NO_SCRIPT_MESSAGE)
        else:
            try:
                reply = self._resolve(item, parsed)
            except Exception as exc:
                self._fail(handler, 500, f"openai test server: responder raised {exc!r}")
                return
            self._send(handler, reply, parsed)

    def _violation(self, headers: Mapping[str, str], parsed: Any) -> tuple[int, str] | None:
        """What the real API would refuse in this chat request: (status, message)."""
        scheme, _, key = headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not key.strip():
            return 401, "openai test server: missing bearer API key (Authorization header)"
        if self.expected_api_key is not None and key.strip() != self.expected_api_key:
            return 401, "openai test server: incorrect API key provided"
        if not isinstance(parsed, dict):
            return None  # answered as a bad body by _answer
        problem = messages_violation(parsed.get("messages"))
        if problem is None:
            problem = tools_violation(parsed.get("tools"))
        if problem is None:
            problem = response_format_violation(parsed.get("response_format"))
        return (400, f"openai test server: {problem}") if problem else None

    @staticmethod
    def _resolve(item: ScriptItem, request_json: dict[str, Any]) -> Reply:
        if callable(item):
            item = item(request_json)
        if isinstance(item, str):
            return reply_text(item)
        if isinstance(item, ChatReply | ErrorReply | RawReply):
            return item
        raise TypeError(f"unsupported scripted response: {item!r}")

    def _fail(self, handler: _Handler, status: int, message: str) -> None:
        with self._lock:
            self._errors.append(message)
        code = "no_scripted_response" if message == NO_SCRIPT_MESSAGE else None
        if status == 401:
            code = "invalid_api_key"
        self._send(
            handler,
            reply_error(status, message, code=code, should_retry=False),
        )

    def _send(self, handler: _Handler, reply: Reply, request_json: Any = None) -> None:
        if reply.delay > 0:
            time.sleep(reply.delay)
        with self._lock:
            request_id = f"req_test_{next(self._ids)}"
        headers = {"x-request-id": request_id, **reply.headers}
        if isinstance(reply, ChatReply):
            data = json.dumps(self._completion_body(reply, request_json, request_id)).encode()
            handler.send_bytes(200, data, "application/json", headers)
        elif isinstance(reply, ErrorReply):
            body = _error_body(reply.message, reply.type, reply.code, reply.param)
            handler.send_bytes(reply.status, json.dumps(body).encode(), "application/json", headers)
        else:
            raw = reply.body if isinstance(reply.body, bytes) else json.dumps(reply.body).encode()
            handler.send_bytes(reply.status, raw, reply.content_type, headers)

    def _completion_body(
        self, reply: ChatReply, request_json: Any, request_id: str
    ) -> dict[str, Any]:
        model = reply.model
        if model is None and isinstance(request_json, dict):
            model = request_json.get("model")
        message: dict[str, Any] = {
            "role": "assistant",
            "content": reply.content,
            "refusal": None,
            "annotations": [],
        }
        if reply.tool_calls:
            calls = []
            for call in reply.tool_calls:
                with self._lock:
                    call_id = call.id or f"call_{next(self._call_ids)}"
                calls.append(
                    {
                        "id": call_id,
                        "type": "function",
                        "function": {"name": call.name, "arguments": call.arguments},
                    }
                )
            message["tool_calls"] = calls
        return {
            "id": f"chatcmpl-{request_id}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": str(model or "gpt-4o-mini"),
            "choices": [
                {
                    "index": 0,
                    "message": message,
                    "finish_reason": reply.finish_reason,
                    "logprobs": None,
                }
            ],
            "usage": {
                "prompt_tokens": reply.prompt_tokens,
                "completion_tokens": reply.completion_tokens,
                "total_tokens": reply.prompt_tokens + reply.completion_tokens,
            },
            "system_fingerprint": None,
            "service_tier": "default",
        }

    def _models_body(self) -> dict[str, Any]:
        return {"object": "list", "data": [self._model_body(m) for m in self._models]}

    @staticmethod
    def _model_body(model_id: str) -> dict[str, Any]:
        return {
            "id": model_id,
            "object": "model",
            "created": 1_700_000_000,
            "owned_by": "openai-test-server",
        }
