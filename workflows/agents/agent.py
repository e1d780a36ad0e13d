"""`Agent`: a model with tools and an output schema, run as durable steps inside a run.

```python
@tool(description="Look up a word")
async def define(ctx: ToolContext, input: Word) -> Definition: ...

agent = Agent(id="lexicographer", provider="openai", model="gpt-4o-mini",
              system_prompt="Define words.", tools=[define], output_schema=Answer)

@workflow(id="define_word")
async def define_word(ctx: WorkflowContext, payload: Word) -> Answer:
    result = await ctx.step.agent_invoke_and_wait("define", agent.with_input(payload.word))
    return result.result
```

Every model call is a step `<key>/llm/<n>` and every tool call a step
`<key>/tool/<n>/<name>`; the agent's result is the step `<key>` itself. A crash anywhere
in the loop repeats neither a finished model call nor a finished tool call.
"""

import asyncio
import functools
import json
import random
import re
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from django.conf import settings
from pydantic import BaseModel, ValidationError

from workflows import observability
from workflows.agents.contexts import agent_context_store
from workflows.agents.providers import (
    Provider,
    RateLimitedError,
    TransientModelError,
    provider_for,
    provider_name,
)
from workflows.agents.tools import Tool, ToolContext
from workflows.agents.transcript import (
    LEAN_FORMAT,
    assistant_message,
    context_digest,
    llm_step_key,
    tool_step_key,
)
from workflows.agents.types import (
    AgentResult,
    Message,
    ModelRequest,
    ModelResponse,
    ToolCallRecord,
    Usage,
)
from workflows.engine.circuits import (
    Admission,
    circuit_enter,
    circuit_exit_failed,
    circuit_exit_succeeded,
)
from workflows.engine.errors import NonRetryableError
from workflows.engine.limits import concurrency_limit, concurrency_slot
from workflows.engine.pricing import COST_KEY, budget_check, call_cost_microusd
from workflows.engine.redaction import redact
from workflows.engine.retry import NO_RETRY, RetryPolicy, dependency_name
from workflows.engine.runtime import run_sync
from workflows.models import StepKind

if TYPE_CHECKING:
    from workflows.engine.context import WorkflowContext

# A model call's transient failures (5xx, timeouts, 429 without Retry-After) wait for the
# provider over the retry horizon, behind its circuit: "{provider}" becomes its name.
MODEL_RETRY = RetryPolicy(
    max_attempts=3,
    initial_interval=1.0,
    max_interval=20.0,
    retry_on=(TransientModelError,),
    dependency="{provider}",
)

_agents: dict[str, "Agent"] = {}


class Agent:
    def __init__(
        self,
        *,
        id: str,
        provider: str,
        model: str,
        system_prompt: str,
        tools: list[Tool] | tuple[Tool, ...] = (),
        output_schema: type[BaseModel] | None = None,
        max_steps: int = 10,
        max_tool_errors: int = 3,
        provider_base_url: str | None = None,
        model_retry: RetryPolicy = MODEL_RETRY,
        description: str = "",
    ) -> None:
        names = [t.name for t in tools]
        if len(names) != len(set(names)):
            raise ValueError(f"Agent {id!r} has two tools with the same name: {names}")
        self.id = id
        self.provider = provider
        self.model = model
        self.system_prompt = system_prompt
        self.tools = {t.name: t for t in tools}
        self.output_schema = output_schema
        self.max_steps = max_steps
        self.max_tool_errors = max_tool_errors
        self.provider_base_url = provider_base_url
        self.model_retry = model_retry
        self.description = description
        _agents[id] = self

    def __repr__(self) -> str:
        return f"Agent(id={self.id!r}, provider={self.provider!r}, model={self.model!r})"

    @property
    def effective_provider(self) -> str:
        return provider_name(self.provider)

    def with_input(self, text: str) -> "AgentInvocation":
        return AgentInvocation(agent=self, input=text)

    # Both are sent with every model call and cost ~1 ms each to build from the pydantic
    # models, which do not change: build them once.
    @functools.cached_property
    def tool_schemas(self) -> list[dict[str, Any]]:
        return [t.schema() for t in self.tools.values()]

    @functools.cached_property
    def response_format(self) -> dict[str, Any] | None:
        if self.output_schema is None:
            return None
        from openai.lib._pydantic import to_strict_json_schema

        return {
            "type": "json_schema",
            "json_schema": {
                "name": self.output_schema.__name__,
                "strict": True,
                "schema": to_strict_json_schema(self.output_schema),
            },
        }

    @functools.cached_property
    def context(self) -> tuple[str, dict[str, Any]]:
        """(hash, content) of what every model call sends besides the conversation,
        recorded once (`AgentContext`) rather than in every model call's step."""
        content = {
            "system": self.system_prompt,
            "tools": self.tool_schemas,
            "response_format": self.response_format,
        }
        return context_digest(content), content


def agents_all() -> list[Agent]:
    return sorted(_agents.values(), key=lambda a: a.id)


@dataclass(frozen=True)
class AgentInvocation:
    agent: Agent
    input: str

    async def invoke(self, ctx: "WorkflowContext", key: str) -> AgentResult:
        provider = provider_for(self.agent.provider, base_url=self.agent.provider_base_url)
        return await _AgentLoop(self.agent, ctx, key, self.input, provider).run()


def _errors_text(exc: ValidationError) -> str:
    return "; ".join(
        f"{'.'.join(str(p) for p in e['loc']) or '(root)'}: {e['msg']}" for e in exc.errors()
    )


class _AgentLoop:
    def __init__(
        self,
        agent: Agent,
        ctx: "WorkflowContext",
        key: str,
        user_input: str,
        provider: Provider,
    ) -> None:
        self.agent = agent
        self.ctx = ctx
        self.key = key
        self.user_input = user_input
        self.provider = provider
        self.messages: list[Message] = [
            {"role": "system", "content": agent.system_prompt},
            {"role": "user", "content": user_input},
        ]
        # The messages of the next model call recorded nowhere else (the replies and the
        # tool results are the model and tool calls' outputs): its step keeps only these.
        self.added: list[Message] = [self.messages[-1]]
        self.tool_calls: list[ToolCallRecord] = []
        self.usage = Usage()
        self.model_calls = 0
        self.context_stored = False  # by this invocation's first live model call
        self.rate_limited = 0  # 429s of the current model call

    async def run(self) -> AgentResult:
        final, text, failure = await self._converse()
        # The result is rebuilt from the model and tool calls, which replay before this
        # step does: it is not stored twice (the final answer is the last reply).
        summary = {"format": LEAN_FORMAT}

        def finish() -> dict[str, Any]:
            if failure:
                raise NonRetryableError(failure)
            return summary

        data = await self.ctx.step.execute_step(
            self.key,
            finish,
            kind=StepKind.AGENT,
            input={"format": LEAN_FORMAT, "agent": self.agent.id},
            retry=NO_RETRY,
            meta=lambda _: {"agent": self.agent.id, "total_usage": self.usage.model_dump()},
        )
        schema = self.agent.output_schema
        # A run recorded in format 1 has it all in the step; format 2 from the loop.
        return AgentResult(
            agent_id=self.agent.id,
            result=schema.model_validate(data.get("result", final))
            if schema
            else data.get("result", final),
            text=data.get("text", text),
            tool_calls=data.get("tool_calls", self.tool_calls),
            usage=data.get("usage", self.usage),
            messages=data.get("messages", self.messages),
        )

    async def _converse(self) -> tuple[Any, str | None, str | None]:
        """Model → tools → model … Returns (final JSON-ready result, text, failure)."""
        agent = self.agent
        tool_errors = 0
        corrected = False
        while self.model_calls < agent.max_steps:
            response = await self._model_call()
            self.messages.append(assistant_message(response.message))
            if response.tool_calls:
                for call in response.tool_calls:
                    record = await self._tool_call(call)
                    tool_errors += record.error is not None
                if tool_errors > agent.max_tool_errors:
                    return (
                        None,
                        None,
                        (
                            f"Agent {agent.id!r} gave up after {tool_errors} failed tool calls "
                            f"(max_tool_errors={agent.max_tool_errors}); last error: "
                            f"{self.tool_calls[-1].error}"
                        ),
                    )
                continue
            text = response.message.get("content") or ""
            if agent.output_schema is None:
                return text, text, None
            try:
                output = agent.output_schema.model_validate_json(text)
                return output.model_dump(mode="json"), text, None
            except ValidationError as exc:
                if corrected:
                    return (
                        None,
                        text,
                        (
                            f"Agent {agent.id!r}: the final answer did not match "
                            f"{agent.output_schema.__name__} after a corrective turn: "
                            f"{_errors_text(exc)}"
                        ),
                    )
                corrected = True
                self._add(
                    {
                        "role": "user",
                        "content": (
                            f"Your answer does not match the required JSON schema "
                            f"{agent.output_schema.__name__}: {_errors_text(exc)}. Reply again "
                            "with only a JSON object that matches the schema."
                        ),
                    }
                )
        return (
            None,
            None,
            (
                f"Agent {agent.id!r} reached max_steps={agent.max_steps} model calls without a "
                "final answer"
            ),
        )

    def _add(self, message: Message) -> None:
        self.messages.append(message)
        self.added.append(message)

    async def _model_call(self) -> ModelResponse:
        self.model_calls += 1
        self.rate_limited = 0
        budget_check(
            spent_microusd=self.ctx.usage.get(COST_KEY, 0),
            budget_usd=self.ctx.definition.budget_usd,
            run_id=self.ctx.run_id,
        )
        request = ModelRequest(
            agent_id=self.agent.id,
            model=self.agent.model,
            messages=list(self.messages),
            tools=self.agent.tool_schemas,
            response_format=self.agent.response_format,
        )
        digest, _ = self.agent.context
        recorded = {
            "format": LEAN_FORMAT,
            "agent_id": self.agent.id,
            "model": self.agent.model,
            "context": digest,
        }
        if self.added:
            recorded["added"] = self.added
        self.added = []
        response: ModelResponse = await self.ctx.step.execute_step(
            llm_step_key(self.key, self.model_calls),
            self._complete,
            request,
            kind=StepKind.LLM,
            input=recorded,
            retry=self.agent.model_retry.named(provider=self.provider.name),
            meta=lambda r: {
                "model": r.model,
                "provider": self.provider.name,
                "latency_ms": round(r.latency_ms, 1),
                "finish_reason": r.finish_reason,
                "usage": {
                    **r.usage.model_dump(),
                    COST_KEY: call_cost_microusd(
                        model=r.model,
                        prompt_tokens=r.usage.prompt_tokens,
                        completion_tokens=r.usage.completion_tokens,
                    ),
                },
                "rate_limited": self.rate_limited,
            },
        )
        self.usage = self.usage + response.usage
        return response

    async def _complete(self, request: ModelRequest) -> ModelResponse:
        """One model call within the cluster-wide cap of its provider and model. A 429
        that says when to come back (Retry-After) waits that long (the slot given back
        meanwhile) and does not count as a failed attempt, for up to
        WORKFLOWS_RATE_LIMIT_PATIENCE_SECONDS; one that does not is a failed attempt, which
        the step's policy retries with its backoff."""
        if not self.context_stored:
            digest, content = self.agent.context
            await run_sync(agent_context_store)(digest=digest, content=content)
            self.context_stored = True
        resource = f"{self.provider.name}:{request.model}"
        limit = concurrency_limit(resource)
        give_up_at = time.monotonic() + settings.WORKFLOWS_RATE_LIMIT_PATIENCE_SECONDS
        while True:
            try:
                async with concurrency_slot(resource, limit=limit):
                    response = await self.provider.complete(request)
                return observability.model_called(self.provider.name, request.model, response)
            except RateLimitedError as exc:
                self.rate_limited += 1
                observability.model_rate_limited(self.provider.name, request.model)
                if exc.retry_after is None or time.monotonic() >= give_up_at:
                    raise
                wait = exc.retry_after
            await asyncio.sleep(wait * random.uniform(1.0, 1.25))

    async def _tool_call(self, call: dict[str, Any]) -> ToolCallRecord:
        name = str(call.get("function", {}).get("name", ""))
        raw_arguments = str(call.get("function", {}).get("arguments", ""))
        safe_name = re.sub(r"[^\w.-]", "_", name)[:64] or "unnamed"
        step_key = tool_step_key(self.key, len(self.tool_calls) + 1, safe_name)
        tool = self.agent.tools.get(name)
        tool_ctx = ToolContext(
            run_id=self.ctx.run_id,
            workflow_id=self.ctx.workflow_id,
            agent_id=self.agent.id,
            step_key=step_key,
        )

        async def execute() -> dict[str, Any]:
            if tool is None:
                known = ", ".join(self.agent.tools) or "none"
                return {"error": f"Unknown tool {name!r}. Available tools: {known}."}
            try:
                arguments = tool.input_model.model_validate_json(raw_arguments)
            except ValidationError as exc:
                return {"error": f"Invalid arguments for {name}: {_errors_text(exc)}"}
            # A tool call cannot wait durably (the model waits for its answer): it retries
            # in the worker, and a dependency whose circuit is open is not called at all;
            # the workflow's own steps wait out the outage.
            dependency = tool.retry.dependency
            holder = str(self.ctx.run_id)
            attempt = 0
            while True:
                if await circuit_enter(dependency, holder=holder) is Admission.WAIT:
                    unavailable = f"{dependency_name(dependency or '')} is unavailable"
                    return {"error": f"{unavailable}; not attempted.", "attempts": attempt}
                attempt += 1
                try:
                    output = await tool(tool_ctx, arguments)
                    shaped = tool.output_model.model_validate(output).model_dump(mode="json")
                except Exception as exc:
                    circuit_open = False
                    if dependency is not None and tool.retry.transient(exc):
                        circuit_open = await circuit_exit_failed(dependency, holder=holder, exc=exc)
                    if not circuit_open and tool.retry.should_retry(exc, attempt):
                        await asyncio.sleep(tool.retry.delay(attempt))
                        continue
                    prefix = "" if isinstance(exc, NonRetryableError) else f"{type(exc).__name__}: "
                    # Stored in the step and shown to the model: no credentials in it.
                    return {"error": redact(f"{prefix}{exc}"), "attempts": attempt}
                await circuit_exit_succeeded(dependency)
                return {"output": shaped}

        outcome = await self.ctx.step.execute_step(
            step_key,
            execute,
            kind=StepKind.TOOL,
            # The arguments are in the model's reply that asked for the call.
            input={"format": LEAN_FORMAT, "tool": name, "call_id": call.get("id")},
            retry=NO_RETRY,
            meta=lambda o: {"error": True} if "error" in o else {},
        )
        record = ToolCallRecord(
            id=str(call.get("id", "")),
            name=name,
            arguments=raw_arguments,
            output=outcome.get("output"),
            error=outcome.get("error"),
        )
        self.tool_calls.append(record)
        content = {"error": record.error} if record.error else record.output
        self.messages.append(
            {"role": "tool", "tool_call_id": record.id, "content": json.dumps(content)}
        )
        return record
