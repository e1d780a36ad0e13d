"""Workflows used by `bench/engine.py`: loaded through `WORKFLOWS_EXTRA_MODULES`."""

from pydantic import BaseModel

from workflows import WorkflowContext, workflow


class NoopInput(BaseModel):
    steps: int


class NoopOutput(BaseModel):
    steps: int


def noop() -> None:
    """The body of every step: nothing, so a step costs only the engine's overhead."""
    return None


@workflow(id="bench.noop", description="K no-op steps; measures per-step engine overhead.")
async def bench_noop(ctx: WorkflowContext, payload: NoopInput) -> NoopOutput:
    for i in range(payload.steps):
        await ctx.step.run(f"s{i}", noop)
    return NoopOutput(steps=payload.steps)
