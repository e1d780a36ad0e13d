"""The openai provider posts its body through the SDK client without the SDK's per-request
type walk (`async_maybe_transform`, 18 % of the workers' CPU, see bench/README.md), and the
model server receives exactly what `client.chat.completions.create` would have sent."""

import asyncio
from typing import Any

import openai
import pytest
from openai.resources.chat.completions import completions as sdk_completions

from tests.support.openai_server import reply_error, reply_text
from workflows.agents.providers import OpenAIProvider, RateLimitedError
from workflows.agents.types import ModelRequest

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "add",
            "description": "Add two numbers.",
            "parameters": {
                "type": "object",
                "properties": {"a": {"type": "number"}, "b": {"type": "number"}},
                "required": ["a", "b"],
                "additionalProperties": False,
            },
            "strict": True,
        },
    }
]
RESPONSE_FORMAT = {
    "type": "json_schema",
    "json_schema": {
        "name": "answer",
        "strict": True,
        "schema": {
            "type": "object",
            "properties": {"total": {"type": "number"}},
            "required": ["total"],
            "additionalProperties": False,
        },
    },
}
MESSAGES: list[Any] = [
    {"role": "system", "content": "You add."},
    {"role": "user", "content": "2 + 3?"},
    {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {
                "id": "call_1",
                "type": "function",
                "function": {"name": "add", "arguments": '{"a": 2, "b": 3}'},
            }
        ],
    },
    {"role": "tool", "tool_call_id": "call_1", "content": '{"total": 5}'},
]

# Headers that differ between any two requests of one client.
VARYING = {"x-stainless-retry-count", "x-stainless-read-timeout", "content-length"}


@pytest.fixture
def transforms(monkeypatch: pytest.MonkeyPatch) -> list[object]:
    """Every body the SDK's `chat.completions.create` walks against its annotations."""
    walked: list[object] = []
    original = sdk_completions.async_maybe_transform

    async def counted(data: object, expected_type: object) -> object:
        walked.append(data)
        return await original(data, expected_type)  # type: ignore[arg-type]

    monkeypatch.setattr(sdk_completions, "async_maybe_transform", counted)
    return walked


def test_the_provider_sends_what_the_sdk_create_sends_without_its_type_walk(
    openai_server, transforms
):
    openai_server.script([reply_text('{"total": 5}'), reply_text('{"total": 5}')])
    provider = OpenAIProvider(base_url=openai_server.base_url)
    request = ModelRequest(
        agent_id="test.agent",
        model="gpt-4o-mini",
        messages=MESSAGES,
        tools=TOOLS,
        response_format=RESPONSE_FORMAT,
    )

    async def both() -> None:
        try:
            response = await provider.complete(request)
            assert response.message["content"] == '{"total": 5}'
            assert transforms == []  # the provider's call walked nothing
            await provider.client().chat.completions.create(
                model="gpt-4o-mini",
                messages=MESSAGES,
                tools=TOOLS,  # type: ignore[arg-type]
                response_format=RESPONSE_FORMAT,  # type: ignore[arg-type]
            )
            assert len(transforms) == 1  # the SDK's own path does (the probe works)
        finally:
            await provider.close()

    asyncio.run(both())
    ours, sdk = openai_server.chat_requests
    assert ours.json == sdk.json  # the same JSON (its keys in another order)
    assert ours.json == {
        "model": "gpt-4o-mini",
        "messages": MESSAGES,
        "tools": TOOLS,
        "response_format": RESPONSE_FORMAT,
    }
    strip = lambda headers: {k: v for k, v in headers.items() if k not in VARYING}  # noqa: E731
    assert strip(ours.headers) == strip(sdk.headers)
    assert ours.headers["authorization"] == "Bearer sk-test-not-a-real-key"


def test_a_429_still_reaches_the_agent_as_the_sdks_rate_limit(openai_server):
    openai_server.script([reply_error(429, "slow down", retry_after=7)])
    provider = OpenAIProvider(base_url=openai_server.base_url)
    request = ModelRequest(agent_id="test.agent", model="gpt-4o-mini", messages=MESSAGES[:2])

    async def call() -> None:
        try:
            await provider.complete(request)
        finally:
            await provider.close()

    with pytest.raises(RateLimitedError) as raised:
        asyncio.run(call())
    assert raised.value.retry_after == 7
    assert isinstance(raised.value.__context__, openai.RateLimitError)
