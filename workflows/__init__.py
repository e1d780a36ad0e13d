"""A durable workflow engine on Django and django-q2, and an agent runtime on top of it.

```python
from pydantic import BaseModel
from workflows import WorkflowContext, workflow, workflow_start

class Greet(BaseModel):
    name: str

class Greeting(BaseModel):
    text: str

@workflow(id="greet")
async def greet(ctx: WorkflowContext, payload: Greet) -> Greeting:
    text = await ctx.step.run("compose", lambda: f"Hello, {payload.name}")
    return Greeting(text=text)

run = workflow_start("greet", {"name": "Ada"})   # a django-q2 worker executes it
```

Names are imported lazily so that `import workflows` works before Django is set up (the
models are only importable after it); the `TYPE_CHECKING` block lets editors and type
checkers follow them.
"""

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # what editors and type checkers follow; at run time, __getattr__ below
    from workflows.engine.context import WorkflowContext
    from workflows.engine.errors import (
        NonRetryableError,
        PayloadError,
        RunStateError,
        TransientError,
        WaitAlreadyDecidedError,
        WaitExpiredError,
        WaitNotFoundError,
    )
    from workflows.engine.registry import workflow, workflow_get, workflows_all
    from workflows.engine.retry import RetryPolicy
    from workflows.engine.runtime import run_sync
    from workflows.engine.services import (
        run_cancel,
        run_fork,
        run_resume,
        run_retry,
        workflow_start,
    )

_EXPORTS = {
    "workflow": "engine.registry",
    "workflow_get": "engine.registry",
    "workflows_all": "engine.registry",
    "WorkflowContext": "engine.context",
    "RetryPolicy": "engine.retry",
    "NonRetryableError": "engine.errors",
    "TransientError": "engine.errors",
    "PayloadError": "engine.errors",
    "RunStateError": "engine.errors",
    "WaitAlreadyDecidedError": "engine.errors",
    "WaitExpiredError": "engine.errors",
    "WaitNotFoundError": "engine.errors",
    "workflow_start": "engine.services",
    "run_resume": "engine.services",
    "run_cancel": "engine.services",
    "run_retry": "engine.services",
    "run_fork": "engine.services",
    "run_sync": "engine.runtime",
}

__all__ = [
    "NonRetryableError",
    "PayloadError",
    "RetryPolicy",
    "RunStateError",
    "TransientError",
    "WaitAlreadyDecidedError",
    "WaitExpiredError",
    "WaitNotFoundError",
    "WorkflowContext",
    "run_cancel",
    "run_fork",
    "run_resume",
    "run_retry",
    "run_sync",
    "workflow",
    "workflow_get",
    "workflow_start",
    "workflows_all",
]


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'workflows' has no attribute {name!r}")
    return getattr(import_module(f".{_EXPORTS[name]}", __name__), name)
