"""`@workflow` and the registry the web process and the workers share."""

import inspect
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, TypeVar, get_type_hints

from django.conf import settings
from pydantic import BaseModel

from workflows.engine.errors import UnknownWorkflowError

WorkflowFn = Callable[[Any, Any], Awaitable[Any]]
F = TypeVar("F", bound=WorkflowFn)


@dataclass(frozen=True)
class WorkflowDefinition:
    id: str
    fn: WorkflowFn
    input_model: type[BaseModel]
    output_model: type[BaseModel] | None
    description: str
    # Most a run may spend on model calls (US dollars); None: WORKFLOWS_RUN_BUDGET_USD.
    budget: Decimal | None = None

    @property
    def budget_usd(self) -> Decimal | None:
        if self.budget is not None:
            return self.budget
        default = getattr(settings, "WORKFLOWS_RUN_BUDGET_USD", None)
        return Decimal(str(default)) if default else None


_registry: dict[str, WorkflowDefinition] = {}


def _models_of(fn: WorkflowFn) -> tuple[type[BaseModel], type[BaseModel] | None]:
    hints = get_type_hints(fn)
    params = list(inspect.signature(fn).parameters)
    if len(params) != 2:
        raise TypeError(f"{fn.__qualname__} must take (ctx, payload), not {params}")
    input_model = hints.get(params[1])
    if not (isinstance(input_model, type) and issubclass(input_model, BaseModel)):
        raise TypeError(f"{fn.__qualname__}: annotate `{params[1]}` with a pydantic model")
    output_model = hints.get("return")
    if output_model is type(None):
        output_model = None
    if output_model is not None and not (
        isinstance(output_model, type) and issubclass(output_model, BaseModel)
    ):
        raise TypeError(f"{fn.__qualname__}: return a pydantic model (or None)")
    return input_model, output_model


def register(definition: WorkflowDefinition, *, replace: bool = False) -> None:
    existing = _registry.get(definition.id)
    same_function = existing is not None and (
        existing.fn.__module__,
        existing.fn.__qualname__,
    ) == (definition.fn.__module__, definition.fn.__qualname__)
    if existing is not None and not (replace or same_function):
        raise ValueError(
            f"Workflow id {definition.id!r} is already registered by "
            f"{existing.fn.__module__}.{existing.fn.__qualname__}"
        )
    _registry[definition.id] = definition


def unregister(workflow_id: str) -> None:
    _registry.pop(workflow_id, None)


def workflow(
    *,
    id: str,
    description: str = "",
    budget_usd: Decimal | str | None = None,
    replace: bool = False,
) -> Callable[[F], F]:
    """Register `async def f(ctx, payload: In) -> Out` as a durable workflow.

    ```python
    class Greet(BaseModel):
        name: str

    class Greeting(BaseModel):
        text: str

    @workflow(id="greet")
    async def greet(ctx: WorkflowContext, payload: Greet) -> Greeting:
        text = await ctx.step.run("compose", lambda: f"Hello, {payload.name}")
        return Greeting(text=text)

    run = workflow_start("greet", {"name": "Ada"})
    ```

    `budget_usd` caps what one run may spend on model calls (see
    `workflows.engine.pricing`); without it, `WORKFLOWS_RUN_BUDGET_USD` applies, if set.
    """

    def decorator(fn: F) -> F:
        # Not `if not iscoroutinefunction(fn)`: its TypeGuard would narrow `fn` away from F.
        is_async: bool = inspect.iscoroutinefunction(fn)
        if not is_async:
            raise TypeError(f"Workflow {id!r} must be an `async def` function")
        input_model, output_model = _models_of(fn)
        register(
            WorkflowDefinition(
                id=id,
                fn=fn,
                input_model=input_model,
                output_model=output_model,
                description=description or inspect.getdoc(fn) or "",
                budget=Decimal(str(budget_usd)) if budget_usd is not None else None,
            ),
            replace=replace,
        )
        return fn

    return decorator


def workflow_get(workflow_id: str) -> WorkflowDefinition:
    try:
        return _registry[workflow_id]
    except KeyError:
        known = ", ".join(sorted(_registry)) or "none"
        raise UnknownWorkflowError(
            f"No workflow {workflow_id!r} is registered (known: {known})"
        ) from None


def workflows_all() -> list[WorkflowDefinition]:
    return sorted(_registry.values(), key=lambda d: d.id)
