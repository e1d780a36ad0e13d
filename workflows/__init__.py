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
    from .context import WorkflowContext
    from .errors import (
        NonRetryableError,
        PayloadError,
        RunStateError,
        TransientError,
        WaitAlreadyDecidedError,
        WaitExpiredError,
        WaitNotFoundError,
    )
    from .registry import workflow, workflow_get, workflows_all
    from .retry import RetryPolicy
    from .runtime import run_sync
    from .services import run_cancel, run_fork, run_resume, run_retry, workflow_start

_EXPORTS = {
    "workflow": "registry",
    "workflow_get": "registry",
    "workflows_all": "registry",
    "WorkflowContext": "context",
    "RetryPolicy": "retry",
    "NonRetryableError": "errors",
    "TransientError": "errors",
    "PayloadError": "errors",
    "RunStateError": "errors",
    "WaitAlreadyDecidedError": "errors",
    "WaitExpiredError": "errors",
    "WaitNotFoundError": "errors",
    "workflow_start": "services",
    "run_resume": "services",
    "run_cancel": "services",
    "run_retry": "services",
    "run_fork": "services",
    "run_sync": "runtime",
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
