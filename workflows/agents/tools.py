"""`@tool`: an `async def f(ctx, input: Model) -> Model` the agent's model may call."""

import inspect
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, get_type_hints
from uuid import UUID

import openai
from pydantic import BaseModel

from workflows.engine.errors import NonRetryableError
from workflows.engine.idempotency import step_idempotency_key
from workflows.engine.retry import RetryPolicy


class ToolError(NonRetryableError):
    """Raise from a tool to refuse the call; the message goes back to the model."""


@dataclass(frozen=True)
class ToolContext:
    """What a tool receives as `ctx`: enough to act idempotently and find its data.

    `idempotency_key` is stable across retries and replays of this very tool call, and
    differs for every run and call: pass it to providers that accept one.
    """

    run_id: UUID
    workflow_id: str
    agent_id: str
    step_key: str

    @property
    def idempotency_key(self) -> str:
        return step_idempotency_key(self.run_id, self.step_key)


ToolFn = Callable[[ToolContext, Any], Awaitable[BaseModel]]
TOOL_RETRY = RetryPolicy(max_attempts=3, initial_interval=0.5)


def _without_defaults(schema: Any) -> Any:
    """Strict mode refuses `default` anywhere in a schema (the SDK only drops `None`
    ones); every property is required there, so a default never applies anyway."""
    if isinstance(schema, list):
        return [_without_defaults(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    return {
        key: (
            {name: _without_defaults(sub) for name, sub in value.items()}  # names, not keywords
            if key in ("properties", "$defs", "definitions") and isinstance(value, dict)
            else _without_defaults(value)
        )
        for key, value in schema.items()
        if key != "default"
    }


@dataclass(frozen=True)
class Tool:
    name: str
    description: str
    fn: ToolFn
    input_model: type[BaseModel]
    output_model: type[BaseModel]
    retry: RetryPolicy

    def schema(self) -> dict[str, Any]:
        """The tool as the model sees it: a strict JSON schema from the input model."""
        spec = openai.pydantic_function_tool(
            self.input_model, name=self.name, description=self.description
        )
        schema: dict[str, Any] = _without_defaults(json.loads(json.dumps(spec)))
        return schema

    async def __call__(self, ctx: ToolContext, input: BaseModel) -> BaseModel:
        return await self.fn(ctx, input)


def _model_hint(fn: ToolFn, label: str, model: object) -> type[BaseModel]:
    if not (isinstance(model, type) and issubclass(model, BaseModel)):
        raise TypeError(
            f"Tool {fn.__qualname__}: annotate the {label} with a pydantic model "
            "(signature: async def f(ctx, input: In) -> Out)"
        )
    return model


def tool(
    *, description: str, name: str | None = None, retry: RetryPolicy = TOOL_RETRY
) -> Callable[[ToolFn], Tool]:
    """Make `async def f(ctx: ToolContext, input: In) -> Out` a tool.

    Transient errors are retried by `retry`; a `ToolError` (or any error once retries
    are spent) is reported back to the model as the tool's result.
    """

    def decorator(fn: ToolFn) -> Tool:
        if not inspect.iscoroutinefunction(fn):
            raise TypeError(f"Tool {fn.__qualname__} must be an `async def` function")
        hints = get_type_hints(fn)
        params = list(inspect.signature(fn).parameters)
        input_model = _model_hint(fn, "input", hints.get(params[1]) if len(params) == 2 else None)
        output_model = _model_hint(fn, "return", hints.get("return"))
        return Tool(
            name=name or fn.__name__,
            description=description,
            fn=fn,
            input_model=input_model,
            output_model=output_model,
            retry=retry,
        )

    return decorator
