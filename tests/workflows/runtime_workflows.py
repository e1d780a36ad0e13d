"""Workflows the worker-runtime tests drive: slow async calls that report where and
alongside how many other segments they ran."""

import asyncio
import os
import time

from pydantic import BaseModel

from workflows import WorkflowContext, workflow
from workflows.engine.runtime import segment_runtime
from workflows.worker.runtime import WorkerRuntime


class SlowCallsInput(BaseModel):
    calls: int = 3
    seconds: float = 1.0


class CallRecord(BaseModel):
    pid: int
    started: float
    finished: float
    in_flight: int  # segments the worker's runtime held while this call ran


class SlowCallsOutput(BaseModel):
    calls: list[CallRecord]


async def slow_call(seconds: float) -> CallRecord:
    """Stands in for a model call: waits without holding a thread."""
    started = time.time()
    await asyncio.sleep(seconds)
    runtime = segment_runtime()
    return CallRecord(
        pid=os.getpid(),
        started=started,
        finished=time.time(),
        in_flight=runtime.in_flight if isinstance(runtime, WorkerRuntime) else 1,
    )


@workflow(id="test.slow_calls", description="N async calls of S seconds each.")
async def slow_calls(ctx: WorkflowContext, payload: SlowCallsInput) -> SlowCallsOutput:
    records = [
        await ctx.step.run(f"call/{n}", slow_call, payload.seconds) for n in range(payload.calls)
    ]
    return SlowCallsOutput(calls=records)
