"""Workflows the worker-runtime tests drive: slow async calls that report where and
alongside how many other segments they ran, and a step that reports how its commits
reach the disk."""

import asyncio
import os
import time

from django.db import connection
from pydantic import BaseModel

from workflows import WorkflowContext, workflow
from workflows.engine.durability import durable_atomic
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


# How each engine says whether this connection's commits wait for the disk: SQLite's
# `synchronous` (2 FULL, 1 NORMAL), PostgreSQL's `synchronous_commit`.
_COMMITS_WAIT = {
    "sqlite": ("PRAGMA synchronous", 2),
    "postgresql": ("SHOW synchronous_commit", "on"),
}


def commits_wait() -> bool:
    """Whether this thread's connection commits durably (workflows.engine.durability)."""
    statement, waiting = _COMMITS_WAIT[connection.vendor]
    with connection.cursor() as cursor:
        cursor.execute(statement)
        return cursor.fetchone()[0] == waiting


class CommitWaitsInput(BaseModel):
    pass


class CommitWaits(BaseModel):
    plain: bool
    durable: bool


@workflow(id="test.commit_waits", description="Whether a step's commits wait for the disk.")
async def commit_waits(ctx: WorkflowContext, payload: CommitWaitsInput) -> CommitWaits:
    def look() -> CommitWaits:
        with durable_atomic():
            durable = commits_wait()
        return CommitWaits(plain=commits_wait(), durable=durable)

    return await ctx.step.run("look", look)
