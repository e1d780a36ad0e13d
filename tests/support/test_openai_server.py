"""Tests of the local OpenAI test server, driven through the real ``openai`` SDK."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import openai
import pytest
from openai import OpenAI

from tests.support.openai_server import (
    NO_SCRIPT_MESSAGE,
    OpenAITestServer,
    reply_error,
    reply_text,
    reply_tool_calls,
    tool_call,
)

MODEL = "gpt-4o-mini"
USER = [{"role": "user", "content": "Where is order 7?"}]


@pytest.fixture
def server() -> Iterator[OpenAITestServer]:
    with OpenAITestServer() as srv:
        yield srv


def make_client(server: OpenAITestServer, *, max_retries: int = 0) -> OpenAI:
    return OpenAI(base_url=server.base_url, api_key="sk-test", max_retries=max_retries)


def test_base_url_is_local_ephemeral(server: OpenAITestServer) -> None:
    assert server.base_url == f"http://127.0.0.1:{server.port}/v1"
    assert server.port != 0


def test_text_reply_is_parsed_with_usage(server: OpenAITestServer) -> None:
    server.script([reply_text("It ships tomorrow.", prompt_tokens=12, completion_tokens=4)])

    completion = make_client(server).chat.completions.create(model=MODEL, messages=USER)

    choice = completion.choices[0]
    assert choice.message.content == "It ships tomorrow."
    assert choice.message.role == "assistant"
    assert choice.message.tool_calls is None
    assert choice.finish_reason == "stop"
    assert completion.model == MODEL
    assert completion.object == "chat.completion"
    assert completion.usage is not None
    assert completion.usage.prompt_tokens == 12
    assert completion.usage.completion_tokens == 4
    assert completion.usage.total_tokens == 16
    [request] = server.chat_requests
    assert request.json["messages"] == USER
    assert request.headers["authorization"] == "Bearer sk-test"
    assert server.pending == 0


def test_tool_call_reply_is_parsed_with_arguments(server: OpenAITestServer) -> None:
    server.script(
        [
            reply_tool_calls(
                [("lookup_order", {"order_id": 7}), tool_call("notify", raw_arguments="{bad")]
            )
        ]
    )

    completion = make_client(server).chat.completions.create(model=MODEL, messages=USER)

    choice = completion.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    calls = choice.message.tool_calls
    assert calls is not None
    assert [c.type for c in calls] == ["function", "function"]
    first, second = (c for c in calls if c.type == "function")
    assert first.function.name == "lookup_order"
    assert json.loads(first.function.arguments) == {"order_id": 7}
    assert second.function.name == "notify"
    assert second.function.arguments == "{bad"
    assert first.id != second.id
    assert first.id.startswith("call_")


def test_rate_limit_is_retried_by_the_sdk(server: OpenAITestServer) -> None:
    server.script(
        [reply_error(429, "Rate limit reached", retry_after_ms=10), reply_text("second time lucky")]
    )

    started = time.monotonic()
    completion = make_client(server, max_retries=1).chat.completions.create(
        model=MODEL, messages=USER
    )

    assert completion.choices[0].message.content == "second time lucky"
    assert len(server.chat_requests) == 2
    assert time.monotonic() - started < 2  # honoured retry-after-ms, no long backoff


def test_rate_limit_without_retries_raises(server: OpenAITestServer) -> None:
    server.script([reply_error(429, "Rate limit reached", retry_after=0)])

    with pytest.raises(openai.RateLimitError) as excinfo:
        make_client(server).chat.completions.create(model=MODEL, messages=USER)

    assert excinfo.value.status_code == 429
    assert excinfo.value.code == "rate_limit_exceeded"
    assert excinfo.value.response.headers["retry-after"] == "0"


def test_invalid_api_key_raises_authentication_error(server: OpenAITestServer) -> None:
    server.script([reply_error(401, "Incorrect API key provided: sk-test.")])

    with pytest.raises(openai.AuthenticationError) as excinfo:
        make_client(server, max_retries=2).chat.completions.create(model=MODEL, messages=USER)

    assert excinfo.value.status_code == 401
    assert excinfo.value.code == "invalid_api_key"
    assert excinfo.value.type == "invalid_request_error"
    assert "Incorrect API key" in excinfo.value.message
    assert len(server.requests) == 1  # 401 is not retried


def test_requests_record_tools_and_response_format(server: OpenAITestServer) -> None:
    tools: list[Any] = [
        {
            "type": "function",
            "function": {
                "name": "lookup_order",
                "description": "Look an order up.",
                "parameters": {
                    "type": "object",
                    "properties": {"order_id": {"type": "integer"}},
                    "required": ["order_id"],
                },
            },
        }
    ]
    response_format: Any = {"type": "json_object"}
    server.script([reply_text('{"ok": true}')])

    make_client(server).chat.completions.create(
        model=MODEL, messages=USER, tools=tools, response_format=response_format
    )

    [request] = server.requests
    assert request.method == "POST"
    assert request.path == "/v1/chat/completions"
    assert request.headers["content-type"] == "application/json"
    assert request.json["tools"] == tools
    assert request.json["response_format"] == response_format
    assert request.messages == USER


def test_callable_computes_reply_from_conversation(server: OpenAITestServer) -> None:
    server.script([lambda req: reply_text(f"{len(req['messages'])} messages, {req['model']}")])

    completion = make_client(server).chat.completions.create(model="gpt-4o", messages=USER)

    assert completion.choices[0].message.content == "1 messages, gpt-4o"
    assert completion.model == "gpt-4o"


def test_exhausted_script_fails_loudly_without_retries(server: OpenAITestServer) -> None:
    with pytest.raises(openai.InternalServerError) as excinfo:
        make_client(server, max_retries=2).chat.completions.create(model=MODEL, messages=USER)

    assert NO_SCRIPT_MESSAGE in excinfo.value.message
    assert len(server.chat_requests) == 1  # x-should-retry: false
    assert server.errors == [NO_SCRIPT_MESSAGE]


def test_models_list_and_reset(server: OpenAITestServer) -> None:
    models = make_client(server).models.list()

    assert [m.id for m in models] == ["gpt-4o-mini", "gpt-4o"]
    assert server.chat_requests == []
    assert len(server.requests) == 1
    server.script([reply_text("unused")])
    server.reset()
    assert server.requests == []
    assert server.pending == 0


# --- the API's rules: a request the real API refuses is refused here -------------------

STRICT_TOOL: Any = {
    "type": "function",
    "function": {
        "name": "lookup_order",
        "strict": True,
        "parameters": {
            "type": "object",
            "properties": {"order_id": {"type": "integer"}, "note": {"type": "string"}},
            "required": ["order_id", "note"],
            "additionalProperties": False,
        },
    },
}
CALL = {
    "role": "assistant",
    "content": None,
    "tool_calls": [
        {"id": "call_a", "type": "function", "function": {"name": "f", "arguments": "{}"}}
    ],
}


def refused(server: OpenAITestServer, status: int = 400, **request: Any) -> str:
    """Send a request that must be refused; return the server's message."""
    server.script([reply_text("must not be consumed")])
    error_class = openai.BadRequestError if status == 400 else openai.AuthenticationError
    api_key = request.pop("api_key", "sk-test")
    client = OpenAI(base_url=server.base_url, api_key=api_key, max_retries=0)
    with pytest.raises(error_class) as excinfo:
        client.chat.completions.create(**{"model": MODEL, "messages": USER, **request})
    assert excinfo.value.status_code == status
    assert server.pending == 1  # a refused request consumes no scripted reply
    server.reset()
    return excinfo.value.message


def test_the_bearer_key_is_checked(server: OpenAITestServer) -> None:
    server.expected_api_key = "sk-expected"
    assert "incorrect API key" in refused(server, 401, api_key="sk-other")
    # Without any Authorization header (the SDK always sends one).
    no_key = urllib.request.Request(
        server.base_url + "/chat/completions",
        data=json.dumps({"model": MODEL, "messages": USER}).encode(),
        headers={"content-type": "application/json"},
    )
    with pytest.raises(urllib.error.HTTPError) as excinfo:
        urllib.request.urlopen(no_key, timeout=5)
    assert excinfo.value.code == 401
    assert "missing bearer API key" in excinfo.value.read().decode()
    server.script([reply_text("ok")])
    client = OpenAI(base_url=server.base_url, api_key="sk-expected", max_retries=0)
    assert client.chat.completions.create(model=MODEL, messages=USER).choices[0].message.content


def test_assistant_content_is_required_without_tool_calls(server: OpenAITestServer) -> None:
    messages: Any = [*USER, {"role": "assistant", "content": None}, *USER]
    assert "'content' is required unless 'tool_calls'" in refused(server, messages=messages)
    messages = [*USER, {"role": "assistant", "content": None, "tool_calls": []}, *USER]
    assert "non-empty array" in refused(server, messages=messages)
    messages = [*USER, {"role": "assistant"}, *USER]
    assert "'content' is required" in refused(server, messages=messages)


def test_a_tool_message_follows_the_assistant_call_it_answers(server: OpenAITestServer) -> None:
    orphan: Any = [*USER, {"role": "tool", "tool_call_id": "call_a", "content": "{}"}]
    assert "must be a response to a preceding message with 'tool_calls'" in refused(
        server, messages=orphan
    )
    wrong_id: Any = [*USER, CALL, {"role": "tool", "tool_call_id": "call_b", "content": "{}"}]
    assert "no open call 'call_b'" in refused(server, messages=wrong_id)
    unanswered: Any = [*USER, CALL, *USER]
    assert "did not have response messages: call_a" in refused(server, messages=unanswered)
    answered_twice: Any = [
        *USER,
        CALL,
        {"role": "tool", "tool_call_id": "call_a", "content": "{}"},
        {"role": "tool", "tool_call_id": "call_a", "content": "{}"},
    ]
    assert "no open call 'call_a'" in refused(server, messages=answered_twice)

    good: Any = [*USER, CALL, {"role": "tool", "tool_call_id": "call_a", "content": "{}"}]
    server.script([reply_text("fine")])
    assert make_client(server).chat.completions.create(model=MODEL, messages=good).choices


def test_strict_schemas_are_checked_as_the_api_checks_them(server: OpenAITestServer) -> None:
    def tool_with(**changes: Any) -> Any:
        spec = json.loads(json.dumps(STRICT_TOOL))
        spec["function"]["parameters"].update(changes)
        return [spec]

    with_default = tool_with(
        properties={"order_id": {"type": "integer", "default": 1}, "note": {"type": "string"}}
    )
    assert "'default' is not permitted" in refused(server, tools=with_default)
    assert "'additionalProperties' is required" in refused(
        server, tools=tool_with(additionalProperties=True)
    )
    assert "Missing 'note'" in refused(server, tools=tool_with(required=["order_id"]))
    nested: Any = {
        "type": "json_schema",
        "json_schema": {
            "name": "Answer",
            "strict": True,
            "schema": {
                "type": "object",
                "properties": {"inner": {"$ref": "#/$defs/Inner"}},
                "required": ["inner"],
                "additionalProperties": False,
                "$defs": {"Inner": {"type": "object", "properties": {"x": {"type": "string"}}}},
            },
        },
    }
    assert "response_format 'Answer'" in refused(server, response_format=nested)

    # Not strict: the API does not enforce these rules, nor does the server.
    loose = tool_with(required=["order_id"])
    loose[0]["function"]["strict"] = False
    server.script([reply_text("fine")])
    assert make_client(server).chat.completions.create(model=MODEL, messages=USER, tools=loose)
    server.script([reply_text("fine")])
    assert make_client(server).chat.completions.create(
        model=MODEL, messages=USER, tools=[STRICT_TOOL]
    )
