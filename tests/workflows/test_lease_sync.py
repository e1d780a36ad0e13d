"""Leases around sync work, on every path that executes segments: a sync step longer
than the lease keeps its run, inline (`run_execute`) and in a worker whose every sync
thread is busy; and a worker that stops while a run is still inside a step hands that
run back (the last-resort `lease_release` of `WorkerRuntime.stop`)."""

import threading
import time

import pytest
from pydantic import BaseModel

from tests.support.cluster import wait_until
from tests.support.runs import executing_inline, status_of
from workflows import WorkflowContext, workflow, workflow_start
from workflows.engine.executor import run_execute
from workflows.engine.leases import lease_take
from workflows.engine.runtime import SegmentOutcome
from workflows.engine.services import runs_reap
from workflows.models import RunStatus, StepRecord, WorkflowRun
from workflows.worker import runtime as worker_runtime
from workflows.worker.runtime import WorkerRuntime

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.db_engine]

LEASE = 1.0  # seconds; renewed every third of it
STEP = 2.5  # a sync step 2.5 lease durations long


class SyncStepInput(BaseModel):
    seconds: float = STEP


class SyncStepOutput(BaseModel):
    slept: float


def _sync_sleep(seconds: float) -> float:
    """A sync step (the Stripe SDK, SMTP): holds its thread throughout."""
    time.sleep(seconds)
    return seconds


@workflow(id="test.sync_sleep", description="One sync step of S seconds.")
async def sync_sleep(ctx: WorkflowContext, payload: SyncStepInput) -> SyncStepOutput:
    return SyncStepOutput(slept=await ctx.step.run("sleep", _sync_sleep, payload.seconds))


stuck_step_entered = threading.Event()
stuck_step_free = threading.Event()


def _stuck() -> str:
    stuck_step_entered.set()
    stuck_step_free.wait(timeout=30)
    return "done"


@workflow(id="test.stuck_in_step", description="A sync step that waits to be freed.")
async def stuck_in_step(ctx: WorkflowContext, payload: SyncStepInput) -> SyncStepOutput:
    await ctx.step.run("stuck", _stuck)
    return SyncStepOutput(slept=0)


def assert_held_while(run: WorkflowRun, running) -> int:
    """While the step runs, past several lease durations, another worker cannot take
    the run, nor the reaper. Returns how many checks were made."""
    checks = 0
    while running():
        time.sleep(LEASE / 2)
        if not running():
            break
        assert lease_take(run.id, "intruder") is None, "another worker took the run"
        assert runs_reap() == [], "the reaper took a run whose worker is alive"
        checks += 1
    return checks


def test_a_sync_step_longer_than_the_lease_keeps_its_run_inline(settings, queue_capture):
    settings.WORKFLOWS_LEASE_SECONDS = LEASE
    run = workflow_start("test.sync_sleep", {})
    queue_capture.sent.clear()
    with executing_inline(run) as (segment, outcome):
        wait_until(lambda: status_of(run) == RunStatus.RUNNING, timeout=10, interval=0.01)
        checks = assert_held_while(run, segment.is_alive)
    assert checks >= 3, "the step ended before the lease could have run out"
    assert outcome == [SegmentOutcome.COMPLETED]
    run.refresh_from_db()
    assert run.attempts == 1
    assert StepRecord.objects.get(run=run, key="sleep").attempt == 1


def test_a_sync_step_longer_than_the_lease_keeps_its_run_when_every_sync_thread_is_busy(
    settings, queue_capture
):
    settings.WORKFLOWS_LEASE_SECONDS = LEASE
    run = workflow_start("test.sync_sleep", {})
    queue_capture.sent.clear()
    runtime = WorkerRuntime(concurrency=2, sync_threads=1)  # the step holds the only one
    try:
        assert runtime.submit(run.id, wait_seconds=5)
        wait_until(lambda: status_of(run) == RunStatus.RUNNING, timeout=10, interval=0.01)
        checks = assert_held_while(run, lambda: status_of(run) == RunStatus.RUNNING)
        wait_until(lambda: status_of(run) == RunStatus.COMPLETED, timeout=10, interval=0.02)
    finally:
        runtime.stop(drain_seconds=5)
    assert checks >= 3, "the step ended before the lease could have run out"
    run.refresh_from_db()
    assert run.attempts == 1


def test_a_stopping_worker_hands_back_a_run_still_inside_a_step(
    settings, queue_capture, monkeypatch
):
    """The run never reaches a step boundary while the worker stops: only the last-resort
    release returns it to the queue, at once, instead of after its lease runs out."""
    settings.WORKFLOWS_LEASE_SECONDS = 60  # the lease alone would keep it for a minute
    monkeypatch.setattr(worker_runtime, "STOP_GRACE_SECONDS", 0.2)
    stuck_step_entered.clear()
    stuck_step_free.clear()
    run = workflow_start("test.stuck_in_step", {})
    queue_capture.sent.clear()
    runtime = WorkerRuntime(concurrency=2, sync_threads=2)
    try:
        assert runtime.submit(run.id, wait_seconds=5)
        assert stuck_step_entered.wait(timeout=10)
        runtime.stop(drain_seconds=0.1)
        run.refresh_from_db()
        assert run.status == RunStatus.PENDING, "the stuck run was not handed back"
        assert not run.lease_owner
        assert queue_capture.sent == [str(run.id)], "the handed-back run was not queued"
        # The renewals stopped with the worker (its keeper closed).
        assert runtime.keeper._task is None or runtime.keeper._task.done()
    finally:
        stuck_step_free.set()
        runtime.executor.shutdown(wait=True)  # the freed step's commit has been tried
    # The step's late commit was refused (the fence): the next worker repeats it.
    assert not StepRecord.objects.filter(run=run, key="stuck").exists()
    assert run_execute(run.id) == SegmentOutcome.COMPLETED
