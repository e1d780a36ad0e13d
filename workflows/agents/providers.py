"""Model providers: `openai` (the official SDK, any compatible server) and `simulated`
(a deterministic stand-in registered per agent, for offline runs and tests).

A provider turns a `ModelRequest` into a `ModelResponse` and classifies failures:
`TransientModelError` is retried by the model step's retry policy, `NonRetryableError`
fails the step at once.
"""

import asyncio
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol
from urllib.parse import urlsplit

import openai
from django.conf import settings
from openai._base_client import make_request_options
from openai.types.chat import ChatCompletion, ChatCompletionMessageFunctionToolCall

from workflows.agents.types import Message, ModelRequest, ModelResponse, Usage
from workflows.engine.errors import NonRetryableError, TransientError
from workflows.engine.runtime import loop_resource

logger = logging.getLogger(__name__)


class TransientModelError(TransientError):
    """Timeout, connection or server error: worth another attempt (the model step waits
    for its provider over the retry horizon)."""


class RateLimitedError(TransientModelError):
    """The provider answered 429: come back after `retry_after` seconds (if it said)."""


def _retry_after(response: Any) -> float | None:
    """Seconds from `retry-after-ms` or `retry-after` (seconds; HTTP dates are ignored)."""
    headers = getattr(response, "headers", None) or {}
    for name, scale in (("retry-after-ms", 1000.0), ("retry-after", 1.0)):
        try:
            return float(headers[name]) / scale
        except (KeyError, TypeError, ValueError):
            continue
    return None


class Provider(Protocol):
    name: str

    async def complete(self, request: ModelRequest) -> ModelResponse: ...

    async def close(self) -> None: ...


def _scrub(text: str, secret: str | None) -> str:
    """`text` without the key, URL credentials or auth headers (workflows.engine.redaction)."""
    from workflows.engine.redaction import redact

    return redact(text, extra=[secret])


class OpenAIProvider:
    """Chat Completions through the official `openai` SDK.

    Honours `OPENAI_API_KEY` and `OPENAI_BASE_URL` (so vLLM, Ollama, llama.cpp or any
    compatible server works) and a per-agent `base_url`. The SDK retries 429/5xx and
    timeouts `OPENAI_MAX_RETRIES` times within one attempt of the step.
    """

    name = "openai"

    def __init__(self, *, base_url: str | None = None, api_key: str | None = None) -> None:
        self.api_key = api_key or settings.OPENAI_API_KEY
        self.base_url = base_url or settings.OPENAI_BASE_URL or None
        self._client: openai.AsyncOpenAI | None = None

    def client(self) -> openai.AsyncOpenAI:
        # Created lazily inside the event loop that uses it (`provider_for` keeps one
        # provider per loop: an httpx client must not cross loops).
        if self._client is None:
            self._client = openai.AsyncOpenAI(
                api_key=self.api_key or "missing",
                base_url=self.base_url,
                max_retries=settings.OPENAI_MAX_RETRIES,
                timeout=settings.OPENAI_TIMEOUT,
                http_client=self._http_client(),
            )
        return self._client

    def _http_client(self) -> openai.DefaultAsyncHttpxClient | None:
        """The SDK's aiohttp transport (`openai[aiohttp]`): httpx's own pool looks at every
        open connection for each request, so with a hundred calls in flight a call cost
        2.4-2.6 ms of CPU against 1.4-1.6 (`python -m bench.call_costs`). aiohttp
        refuses a URL with credentials beside the key's header; such a URL keeps the
        SDK's httpx client, which sends them (Basic auth) instead of the key, as it
        always did."""
        url = urlsplit(self.base_url or "")
        if url.username or url.password:
            return None
        return openai.DefaultAioHttpClient()

    async def close(self) -> None:
        if self._client is not None:
            await self._client.close()
            self._client = None

    async def complete(self, request: ModelRequest) -> ModelResponse:
        if not self.api_key:
            raise NonRetryableError(
                "No API key for the openai provider: set OPENAI_API_KEY "
                "(or LLM_PROVIDER=simulated to run without a model)"
            )
        arguments: dict[str, Any] = {"model": request.model, "messages": request.messages}
        if request.tools:
            arguments["tools"] = request.tools
        if request.response_format:
            arguments["response_format"] = request.response_format
        started = time.perf_counter()
        try:
            # `client.chat.completions.create` does exactly this post, after re-walking
            # the body against the SDK's TypedDict annotations (`async_maybe_transform`,
            # ~177 recursive calls per request, 18 % of the workers' CPU in the profile in
            # bench/README.md) to produce the same dict: ours is already plain JSON.
            # Same client, so the same headers, auth, timeout, retries and error classes.
            completion = await self.client().post(
                "/chat/completions",
                body=arguments,
                cast_to=ChatCompletion,
                options=make_request_options(security={"bearer_auth": True}),
                stream=False,
            )
        except openai.AuthenticationError:
            raise NonRetryableError(
                "The model server refused the API key (HTTP 401): set OPENAI_API_KEY to a "
                "valid key for " + (self.base_url or "api.openai.com")
            ) from None
        except openai.RateLimitError as exc:
            raise RateLimitedError(
                _scrub(f"{type(exc).__name__}: {exc}", self.api_key),
                retry_after=_retry_after(exc.response),
            ) from None
        except (
            openai.APITimeoutError,
            openai.APIConnectionError,
            openai.InternalServerError,
        ) as exc:
            raise TransientModelError(
                _scrub(f"{type(exc).__name__}: {exc}", self.api_key)
            ) from None
        except openai.APIStatusError as exc:
            raise NonRetryableError(
                _scrub(f"The model server answered HTTP {exc.status_code}: {exc}", self.api_key)
            ) from None
        latency_ms = (time.perf_counter() - started) * 1000
        choice = completion.choices[0]
        message: Message = {"role": "assistant", "content": choice.message.content}
        if choice.message.tool_calls:
            message["tool_calls"] = [
                {
                    "id": call.id,
                    "type": "function",
                    "function": {
                        "name": call.function.name,
                        "arguments": call.function.arguments,
                    },
                }
                for call in choice.message.tool_calls
                # Only function tools are offered, so only function calls come back.
                if isinstance(call, ChatCompletionMessageFunctionToolCall)
            ]
        usage = completion.usage
        return ModelResponse(
            message=message,
            finish_reason=choice.finish_reason,
            model=completion.model,
            usage=Usage(
                prompt_tokens=usage.prompt_tokens if usage else 0,
                completion_tokens=usage.completion_tokens if usage else 0,
            ),
            latency_ms=round(latency_ms, 1),
        )


# --- simulated ----------------------------------------------------------------------


@dataclass
class SimulatedTurn:
    """What a simulated model answers: text, tool calls, or both."""

    content: str | None = None
    tool_calls: list[tuple[str, dict[str, Any] | str]] = field(default_factory=list)


SimulatedModel = Callable[[list[Message], ModelRequest], SimulatedTurn]
_simulated_models: dict[str, SimulatedModel] = {}


def simulated_model(agent_id: str) -> Callable[[SimulatedModel], SimulatedModel]:
    """Register the stand-in model for an agent: a plain function from the conversation
    so far (and the request, for its tools and schema) to the next assistant turn."""

    def decorator(fn: SimulatedModel) -> SimulatedModel:
        _simulated_models[agent_id] = fn
        return fn

    return decorator


def _count_tokens(messages: list[Message]) -> int:
    return sum(len(json.dumps(m).split()) for m in messages)


class SimulatedProvider:
    name = "simulated"

    async def close(self) -> None:
        pass

    async def complete(self, request: ModelRequest) -> ModelResponse:
        model = _simulated_models.get(request.agent_id)
        if model is None:
            raise NonRetryableError(
                f"No simulated model is registered for agent {request.agent_id!r}: "
                "decorate one with @simulated_model, or use LLM_PROVIDER=openai"
            )
        started = time.perf_counter()
        if settings.SIMULATED_MODEL_LATENCY:
            await asyncio.sleep(settings.SIMULATED_MODEL_LATENCY)
        turn = model(request.messages, request)
        # Ids derived from the conversation length keep the simulation deterministic.
        turn_number = len(request.messages)
        message: Message = {"role": "assistant", "content": turn.content}
        if turn.tool_calls:
            message["tool_calls"] = [
                {
                    "id": f"call_{turn_number}_{i}",
                    "type": "function",
                    "function": {
                        "name": name,
                        "arguments": args if isinstance(args, str) else json.dumps(args),
                    },
                }
                for i, (name, args) in enumerate(turn.tool_calls, start=1)
            ]
        return ModelResponse(
            message=message,
            finish_reason="tool_calls" if turn.tool_calls else "stop",
            model=f"simulated:{request.model}",
            usage=Usage(
                prompt_tokens=_count_tokens(request.messages),
                completion_tokens=_count_tokens([message]),
            ),
            latency_ms=round((time.perf_counter() - started) * 1000, 1),
        )


def provider_name(agent_provider: str) -> str:
    """The provider an agent actually uses: `LLM_PROVIDER=simulated` overrides all."""
    return "simulated" if settings.LLM_PROVIDER == "simulated" else agent_provider


def provider_for(agent_provider: str, *, base_url: str | None = None) -> Provider:
    """The running loop's provider for this configuration, shared by every invocation
    on the loop (one client, kept-alive connections) and closed by the loop's owner
    (`workflows.engine.runtime.loop_resource`)."""
    name = provider_name(agent_provider)
    if name == "simulated":
        return SimulatedProvider()
    if name == "openai":
        base_url = base_url or settings.OPENAI_BASE_URL or None
        configuration = (
            "openai",
            base_url,
            settings.OPENAI_API_KEY,
            settings.OPENAI_MAX_RETRIES,
            settings.OPENAI_TIMEOUT,
        )
        return loop_resource(configuration, lambda: OpenAIProvider(base_url=base_url))
    raise NonRetryableError(f"Unknown model provider {name!r} (known: openai, simulated)")
