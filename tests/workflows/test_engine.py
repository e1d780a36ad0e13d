"""Replay, suspend/resume, retries, cancel and the lease, executed in-process."""

import threading
from datetime import timedelta
from pathlib import Path

import pytest
from django.contrib.auth.models import User
from django.utils import timezone
from pydantic import BaseModel

from tests.support.cluster import run_execute_together
from tests.workflows.sample_workflows import BROKEN, journal_lines
from workflows import (
    PayloadError,
    RunStateError,
    WaitAlreadyDecidedError,
    WaitExpiredError,
    WorkflowContext,
    run_cancel,
    run_resume,
    run_retry,
    workflow,
    workflow_start,
)
from workflows.engine.errors import UnknownWorkflowError
from workflows.engine.executor import run_execute
from workflows.engine.registry import unregister
from workflows.engine.services import runs_reap, waits_expire
from workflows.models import RunStatus, StepRecord, StepStatus, Wait, WaitStatus, WorkflowRun

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.db_engine]


@pytest.fixture
def journal(tmp_path: Path) -> Path:
    return tmp_path / "journal.txt"


def test_completed_run_stores_output_and_steps(queue_capture, journal):
    run = workflow_start("test.counting", {"steps": 3, "journal": str(journal)})
    assert queue_capture.sent == [str(run.id)]
    assert queue_capture.drain() == ["completed"]

    run.refresh_from_db()
    assert run.status == RunStatus.COMPLETED
    assert run.output == {"total": 0 + 2 + 4}
    assert run.finished_at is not None and run.lease_owner == ""
    steps = list(run.steps.values_list("key", "position", "status"))
    assert steps == [(f"step-{i}", i, "completed") for i in range(3)]
    assert journal_lines(journal) == ["step-0", "step-1", "step-2"]


def test_replay_runs_each_step_once(queue_capture, journal):
    run = workflow_start("test.counting", {"steps": 4, "journal": str(journal)})
    queue_capture.drain()
    # Force several replays of the finished history: nothing runs again.
    for _ in range(3):
        WorkflowRun.objects.filter(pk=run.id).update(status=RunStatus.PENDING)
        assert run_execute(run.id) == "completed"
    assert journal_lines(journal) == ["step-0", "step-1", "step-2", "step-3"]


def test_invalid_payload_writes_nothing(queue_capture):
    with pytest.raises(PayloadError) as err:
        workflow_start("test.counting", {"steps": "many"})
    assert "steps" in str(err.value)
    assert err.value.errors[0]["loc"] == ("steps",)
    assert WorkflowRun.objects.count() == 0 and queue_capture.sent == []


def test_unknown_workflow_is_refused(queue_capture):
    with pytest.raises(UnknownWorkflowError, match="no-such-workflow"):
        workflow_start("no-such-workflow", {})
    assert WorkflowRun.objects.count() == 0


def test_suspend_then_resume_returns_resume_data(queue_capture, journal):
    reviewer = User.objects.create_user("reviewer")
    run = workflow_start("test.approval", {"journal": str(journal)})
    assert queue_capture.drain() == ["suspended"]
    run.refresh_from_db()
    assert run.status == RunStatus.SUSPENDED and run.lease_owner == ""
    wait = Wait.objects.get(run=run)
    assert wait.key == "approval" and wait.status == WaitStatus.WAITING
    assert wait.data == {"question": "ship it?"}
    assert wait.deadline > timezone.now() + timedelta(seconds=50)

    run_resume(run.id, "approval", {"approved": True}, by=reviewer)
    assert queue_capture.drain() == ["completed"]
    run.refresh_from_db()
    assert run.output == {
        "approved": True,
        "timed_out": False,
        "resumed_by": "reviewer",
        "prepared": {"value": 21},
    }
    assert journal_lines(journal) == ["prepare", "after"]
    wait.refresh_from_db()
    assert (wait.status, wait.resumed_by, wait.resume_data) == (
        WaitStatus.RESUMED,
        reviewer,
        {"approved": True},
    )


def test_second_resume_is_refused(queue_capture):
    run = workflow_start("test.approval", {})
    queue_capture.drain()
    run_resume(run.id, "approval", {"approved": False})
    with pytest.raises(WaitAlreadyDecidedError, match="already resumed"):
        run_resume(run.id, "approval", {"approved": True})


def test_concurrent_resumes_one_wins(queue_capture):
    run = workflow_start("test.approval", {})
    queue_capture.drain()
    barrier = threading.Barrier(2)
    outcomes: list[str] = []

    def decide(approved: bool) -> None:
        from django.db import connection

        barrier.wait()
        try:
            run_resume(run.id, "approval", {"approved": approved})
            outcomes.append("won")
        except WaitAlreadyDecidedError:
            outcomes.append("refused")
        finally:
            connection.close()

    threads = [threading.Thread(target=decide, args=(flag,)) for flag in (True, False)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(outcomes) == ["refused", "won"]
    assert StepRecord.objects.filter(run=run, key="approval").count() == 1
    assert queue_capture.sent == [str(run.id)]


def test_resume_after_deadline_is_refused(queue_capture):
    run = workflow_start("test.approval", {"timeout": 60})
    queue_capture.drain()
    Wait.objects.filter(run=run).update(deadline=timezone.now() - timedelta(seconds=1))
    with pytest.raises(WaitExpiredError, match="expired"):
        run_resume(run.id, "approval", {"approved": True})
    assert Wait.objects.get(run=run).status == WaitStatus.WAITING


def test_timeout_sweep_resumes_with_timed_out(queue_capture, journal):
    run = workflow_start("test.approval", {"timeout": 60, "journal": str(journal)})
    queue_capture.drain()
    assert waits_expire() == []  # not due yet
    expired = waits_expire(now=timezone.now() + timedelta(seconds=61))
    assert [w.key for w in expired] == ["approval"]
    assert queue_capture.drain() == ["completed"]
    run.refresh_from_db()
    assert run.output["approved"] is False and run.output["timed_out"] is True
    assert Wait.objects.get(run=run).status == WaitStatus.EXPIRED
    with pytest.raises(WaitAlreadyDecidedError, match="already expired"):
        run_resume(run.id, "approval", {"approved": True})


def test_memoized_uuid_and_time_survive_suspend(queue_capture, journal):
    run = workflow_start("test.memoized_values", {"journal": str(journal)})
    queue_capture.drain()
    stored = {s.key: s.output for s in StepRecord.objects.filter(run=run)}
    run_resume(run.id, "pause")
    queue_capture.drain()
    assert journal_lines(journal) == [f"{stored['id']} {stored['time']}"]


def test_code_changed_under_live_run_fails_with_non_determinism(queue_capture):
    class Empty(BaseModel):
        pass

    async def version_one(ctx: WorkflowContext, payload: Empty) -> None:
        await ctx.step.run("load", lambda: 1)
        await ctx.step.suspend("wait")

    async def version_two(ctx: WorkflowContext, payload: Empty) -> None:
        await ctx.step.run("load-renamed", lambda: 1)
        await ctx.step.suspend("wait")

    try:
        workflow(id="test.changing")(version_one)
        run = workflow_start("test.changing", {})
        assert queue_capture.drain() == ["suspended"]
        workflow(id="test.changing", replace=True)(version_two)
        run_resume(run.id, "wait")
        assert queue_capture.drain() == ["failed"]
    finally:
        unregister("test.changing")
    run.refresh_from_db()
    assert run.status == RunStatus.FAILED
    assert "NonDeterminismError" in run.error
    assert "'load-renamed' at position 0" in run.error and "'load'" in run.error


def test_transient_error_is_retried_with_backoff(queue_capture, journal):
    journal.touch()
    run = workflow_start("test.flaky", {"journal": str(journal), "failures": 2})
    assert queue_capture.drain() == ["completed"]
    run.refresh_from_db()
    assert run.output == {"total": 3}
    provider = StepRecord.objects.get(run=run, key="provider")
    assert provider.attempt == 3
    assert journal_lines(journal) == ["first", "provider", "provider", "provider"]


def test_permanent_error_fails_run_then_retry_finishes_it(queue_capture, journal, monkeypatch):
    journal.touch()
    monkeypatch.setitem(BROKEN, "permanent", True)
    run = workflow_start("test.flaky", {"journal": str(journal), "permanent": True, "failures": 0})
    assert queue_capture.drain() == ["failed"]
    run.refresh_from_db()
    assert run.status == RunStatus.FAILED
    assert "Step 'provider' failed after 1 attempt(s)" in run.error
    assert "card declined" in run.error and "Traceback" in run.error_traceback
    failed_step = StepRecord.objects.get(run=run, key="provider")
    assert failed_step.status == StepStatus.FAILED and "NonRetryableError" in failed_step.error

    monkeypatch.setitem(BROKEN, "permanent", False)  # the cause is fixed
    run_retry(run.id)
    assert queue_capture.drain() == ["completed"]
    run.refresh_from_db()
    assert run.status == RunStatus.COMPLETED and run.error == ""
    # "first" completed before the failure and is not run again.
    assert journal_lines(journal) == ["first", "provider", "provider"]


def test_retry_refuses_a_run_that_has_not_failed(queue_capture):
    run = workflow_start("test.counting", {"steps": 1})
    queue_capture.drain()
    with pytest.raises(RunStateError, match="only failed runs"):
        run_retry(run.id)


def test_output_that_is_not_json_names_the_step(queue_capture):
    run = workflow_start("test.bad_output", {})
    assert queue_capture.drain() == ["failed"]
    run.refresh_from_db()
    assert "Step 'returns-a-socket' returned a object, which cannot be stored as JSON" in run.error


def test_cancel_suspended_run_closes_its_wait(queue_capture):
    run = workflow_start("test.approval", {})
    queue_capture.drain()
    run_cancel(run.id)
    run.refresh_from_db()
    assert run.status == RunStatus.CANCELLED
    assert Wait.objects.get(run=run).status == WaitStatus.CANCELLED
    with pytest.raises(WaitAlreadyDecidedError, match="cancelled"):
        run_resume(run.id, "approval", {"approved": True})
    with pytest.raises(RunStateError, match="only active runs"):
        run_cancel(run.id)


def test_cancel_during_execution_stops_at_next_step(queue_capture, journal, monkeypatch):
    run = workflow_start("test.counting", {"steps": 3, "journal": str(journal)})
    import tests.workflows.sample_workflows as sample

    original = sample.journal_append

    def cancel_after_first(path, line):
        original(path, line)
        if line == "step-0":
            run_cancel(run.id)

    monkeypatch.setattr(sample, "journal_append", cancel_after_first)
    assert queue_capture.drain() == ["lease_lost"]
    run.refresh_from_db()
    assert run.status == RunStatus.CANCELLED
    assert journal_lines(journal) == ["step-0"]
    assert StepRecord.objects.filter(run=run).count() == 0


def test_duplicate_delivery_does_nothing_while_leased(queue_capture, journal):
    run = workflow_start("test.counting", {"steps": 2, "journal": str(journal)})
    WorkflowRun.objects.filter(pk=run.id).update(
        status=RunStatus.RUNNING,
        lease_owner="other-worker",
        lease_expires_at=timezone.now() + timedelta(seconds=60),
    )
    assert run_execute(run.id) == "skipped"
    assert journal_lines(journal) == []


def test_two_deliveries_racing_run_each_step_once(queue_capture, journal):
    run = workflow_start(
        "test.counting", {"steps": 3, "journal": str(journal), "step_seconds": 0.05}
    )
    assert run_execute_together(run.id) == ["completed", "skipped"]
    assert journal_lines(journal) == ["step-0", "step-1", "step-2"]


def test_reaper_requeues_expired_lease_and_completed_steps_are_kept(queue_capture, journal):
    run = workflow_start("test.counting", {"steps": 3, "journal": str(journal)})
    queue_capture.sent.clear()
    # A worker took the lease, finished step-0, then died.
    StepRecord.objects.create(
        run=run,
        key="step-0",
        position=0,
        status=StepStatus.COMPLETED,
        output={"value": 0},
        started_at=timezone.now(),
        finished_at=timezone.now(),
    )
    WorkflowRun.objects.filter(pk=run.id).update(
        status=RunStatus.RUNNING,
        attempts=1,  # its take
        lease_owner="dead-worker",
        lease_expires_at=timezone.now() - timedelta(seconds=1),
    )
    assert runs_reap() == [run.id]
    assert queue_capture.drain() == ["completed"]
    assert journal_lines(journal) == ["step-1", "step-2"]
    assert runs_reap() == []


def test_reaper_requeues_pending_runs_whose_task_was_lost(queue_capture, monkeypatch):

    run = workflow_start("test.counting", {"steps": 1})
    queue_capture.sent.clear()  # the task went to a cluster that was then killed
    long_ago = timezone.now() - timedelta(minutes=5)
    WorkflowRun.objects.filter(pk=run.id).update(updated_at=long_ago)

    still_queued = lambda ids: {str(run.id)} & {str(i) for i in ids}  # noqa: E731
    monkeypatch.setattr("workflows.engine.services.runs_waiting", still_queued)
    assert runs_reap() == []  # its task is still in the queue: it is waiting its turn

    monkeypatch.setattr("workflows.engine.services.runs_waiting", lambda ids: set())
    assert runs_reap() == [run.id]
    assert queue_capture.drain() == ["completed"]
