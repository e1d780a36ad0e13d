"""A segment runs on the runtime it is handed, inline or in a worker: no process-wide
switch decides where its sync work goes."""

import contextvars
import threading
import types

import pytest
from pydantic import BaseModel

from tests.support.cluster import wait_until
from workflows import WorkflowContext, workflow, workflow_start
from workflows.engine.executor import run_execute
from workflows.engine.runtime import (
    SegmentOutcome,
    SegmentRuntime,
    segment_running_on,
    segment_runtime,
)
from workflows.models import RunStatus, WorkflowRun
from workflows.worker.runtime import WorkerRuntime

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.db_engine]


class Nothing(BaseModel):
    pass


class WhereItRan(BaseModel):
    runtime: str
    sync_thread: str


def _runtime_name() -> str:
    return type(segment_runtime()).__name__


@workflow(id="test.where_it_ran", description="Reports its runtime and its sync thread.")
async def where_it_ran(ctx: WorkflowContext, payload: Nothing) -> WhereItRan:
    async def runtime() -> str:
        return _runtime_name()

    return WhereItRan(
        runtime=await ctx.step.run("runtime", runtime),
        sync_thread=await ctx.step.run("thread", lambda: threading.current_thread().name),
    )


def test_inline_execution_runs_sync_work_in_the_callers_thread(queue_capture):
    run = workflow_start("test.where_it_ran", {})
    queue_capture.sent.clear()
    assert run_execute(run.id) == SegmentOutcome.COMPLETED
    output = WorkflowRun.objects.get(pk=run.id).output
    assert output == {"runtime": "InlineRuntime", "sync_thread": threading.current_thread().name}
    assert segment_runtime() is None  # set for the segment only


def test_a_worker_runtime_runs_sync_work_on_its_pool_in_any_process(queue_capture):
    run = workflow_start("test.where_it_ran", {})
    queue_capture.sent.clear()
    runtime = WorkerRuntime(concurrency=2, sync_threads=1)
    try:
        assert runtime.submit(run.id, wait_seconds=5)
        wait_until(
            lambda: WorkflowRun.objects.get(pk=run.id).status == RunStatus.COMPLETED, timeout=20
        )
    finally:
        runtime.stop(drain_seconds=5)
    output = WorkflowRun.objects.get(pk=run.id).output
    assert output["sync_thread"].startswith("workflows-sync"), output
    assert output["runtime"] == "WorkerRuntime"


def test_a_segment_left_unfinished_is_closed_quietly_wherever_it_is_collected():
    """A worker that stops while a segment is still in a slow step leaves the segment's
    coroutine unfinished on its loop; the garbage collector closes it later, in another
    context. That close must not fail (Python would print "Exception ignored … was
    created in a different Context" in the worker's log, as the suite showed)."""

    @types.coroutine
    def slow_step():  # suspends once, as an await on a sync thread's answer does
        yield

    async def segment() -> None:
        with segment_running_on(SegmentRuntime()):
            await slow_step()

    coroutine = segment()
    contextvars.copy_context().run(coroutine.send, None)  # started in a task's context
    coroutine.close()  # collected in this one
    assert segment_runtime() is None
