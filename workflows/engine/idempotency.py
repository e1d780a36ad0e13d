"""The idempotency key a step passes to an outside provider, written once: the step
API (`WorkflowContext.idempotency_key`) and a tool's context (`ToolContext`) both give
it. Stable across retries and replays of the run, different for every run and step."""

from uuid import UUID


def step_idempotency_key(run_id: UUID | str, step_key: str) -> str:
    return f"{run_id}:{step_key}"
