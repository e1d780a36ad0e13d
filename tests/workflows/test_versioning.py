"""Deploying under live runs: `ctx.patched`, `manage.py replay_check` and `fork_run`."""

import json
from io import StringIO
from pathlib import Path

import pytest
from django.core.management import CommandError, call_command
from django.db import connection
from django.test.utils import CaptureQueriesContext

from tests.workflows.sample_workflows import DEPLOYED, journal_lines
from workflows import run_fork, run_resume, workflow_start
from workflows.engine.errors import RunStateError
from workflows.engine.replay import runs_replay_check
from workflows.engine.services import run_cancel
from workflows.models import RunStatus, StepRecord, WorkflowRun

pytestmark = pytest.mark.django_db


@pytest.fixture
def deployed():
    """Version 1 of `test.versioned` is deployed; a test may switch to version 2."""
    DEPLOYED["code"] = "v1"
    yield DEPLOYED
    DEPLOYED["code"] = "v1"


def keys(run: WorkflowRun) -> list[str]:
    return list(
        StepRecord.objects.filter(run=run).order_by("position").values_list("key", flat=True)
    )


def replay_check(*args: str) -> tuple[int, str]:
    out = StringIO()
    try:
        call_command("replay_check", *args, stdout=out)
    except SystemExit as exc:
        return int(exc.code), out.getvalue()
    return 0, out.getvalue()


def test_a_patch_keeps_old_runs_on_their_path_and_sends_new_ones_down_the_new_one(
    deployed, queue_capture, tmp_path: Path
):
    old_journal, new_journal = tmp_path / "old", tmp_path / "new"
    old = workflow_start("test.versioned", {"journal": str(old_journal)})
    assert queue_capture.drain() == ["suspended"]

    deployed["code"] = "v2-patched"  # the deploy: a step before the review
    assert replay_check()[0] == 0
    new = workflow_start("test.versioned", {"journal": str(new_journal)})
    assert queue_capture.drain() == ["suspended"]
    run_resume(old.id, "review", {"approved": True})
    run_resume(new.id, "review", {"approved": True})
    assert queue_capture.drain() == ["completed", "completed"]

    old.refresh_from_db()
    new.refresh_from_db()
    assert old.output == {"approved": True, "risk_checked": False}
    assert keys(old) == ["prepare", "review", "after"]
    assert journal_lines(old_journal) == ["prepare", "after"]
    assert new.output == {"approved": True, "risk_checked": True}
    assert keys(new) == ["prepare", "patch/risk-check", "risk_check", "review", "after"]
    assert journal_lines(new_journal) == ["prepare", "risk_check", "after"]

    # Both histories replay again under the deployed code, each down its own branch.
    results = list(runs_replay_check(statuses=[RunStatus.COMPLETED]))
    assert {r.run_id for r in results} == {old.id, new.id}
    assert all(r.ok for r in results), results


def test_deprecating_the_patch_keeps_runs_that_recorded_it(deployed, queue_capture):
    deployed["code"] = "v2-patched"
    run = workflow_start("test.versioned", {})
    assert queue_capture.drain() == ["suspended"]
    # Later: no run from before the change remains, the branch becomes unconditional.
    deployed["code"] = "v2-deprecated"
    assert replay_check()[0] == 0
    fresh = workflow_start("test.versioned", {})
    run_resume(run.id, "review", {"approved": False})
    assert queue_capture.drain() == ["suspended", "completed"]
    run.refresh_from_db()
    assert run.output == {"approved": False, "risk_checked": True}
    assert keys(fresh) == ["prepare", "risk_check"]  # no marker recorded any more


def test_replay_check_reports_an_unguarded_change_and_fails(deployed, queue_capture):
    suspended = workflow_start("test.versioned", {})
    assert queue_capture.drain() == ["suspended"]
    done = workflow_start("test.versioned", {})
    queue_capture.drain()
    run_resume(done.id, "review", {"approved": True})
    assert queue_capture.drain() == ["completed"]

    deployed["code"] = "v2"  # the same change without ctx.patched
    code, out = replay_check()
    assert code == 1
    assert str(suspended.id) in out
    assert str(done.id) not in out  # completed runs are not live
    assert "1 run(s) replayed; 1 would diverge" in out

    code, out = replay_check("--json")
    assert code == 1
    report = json.loads(out)
    assert report["replayed"] == 1
    [diverging] = report["diverging"]
    assert diverging["run_id"] == str(suspended.id)
    assert diverging["workflow_id"] == "test.versioned"
    assert (diverging["position"], diverging["expected"], diverging["found"]) == (
        1,
        "review",
        "risk_check",
    )
    assert "ctx.patched" in diverging["error"] and "replay_check" in diverging["error"]

    # Resuming it under that code fails with the same diagnosis, naming the cure.
    run_resume(suspended.id, "review", {"approved": True})
    assert queue_capture.drain() == ["failed"]
    suspended.refresh_from_db()
    assert "risk_check" in suspended.error and "ctx.patched(" in suspended.error


def test_replay_check_filters_and_refuses_unknown_workflows(deployed, queue_capture):
    workflow_start("test.versioned", {})
    queue_capture.drain()
    deployed["code"] = "v2"
    assert replay_check("--workflow", "test.counting")[0] == 0
    assert replay_check("--status", "pending")[0] == 0
    assert replay_check("--workflow", "test.versioned", "--status", "suspended")[0] == 1
    with pytest.raises(CommandError, match="No workflow 'nope'"):
        call_command("replay_check", "--workflow", "nope")


def test_replay_check_runs_nothing_writes_nothing_and_reads_in_batches(
    deployed, queue_capture, tmp_path: Path
):
    journal = tmp_path / "journal"
    runs = [workflow_start("test.versioned", {"journal": str(journal)}) for _ in range(30)]
    queue_capture.drain(limit=100)
    assert journal_lines(journal) == ["prepare"] * 30
    with CaptureQueriesContext(connection) as queries:
        results = list(runs_replay_check(batch_size=10))
    assert len(results) == len(runs) and all(r.ok for r in results)
    statements = [q["sql"].split()[0].upper() for q in queries.captured_queries]
    assert set(statements) == {"SELECT"}
    assert len(statements) == 1 + 3 * 3  # the ids, then runs, steps and waits per batch
    assert journal_lines(journal) == ["prepare"] * 30  # no step body ran


def test_fork_continues_from_a_step_without_repeating_earlier_ones(
    deployed, queue_capture, tmp_path: Path
):
    journal = tmp_path / "journal"
    origin = workflow_start("test.versioned", {"journal": str(journal)})
    queue_capture.drain()
    run_resume(origin.id, "review", {"approved": True})
    assert queue_capture.drain() == ["completed"]

    with pytest.raises(RunStateError, match="no step 'nope'"):
        run_fork(origin.id, from_step="nope")
    fork = run_fork(origin.id, from_step="after")
    assert queue_capture.drain() == ["completed"]
    fork.refresh_from_db()
    assert fork.output == {"approved": True, "risk_checked": False}
    assert fork.forked_from_id == origin.id and fork.forked_at_step == "after"
    assert list(origin.forks.all()) == [fork]
    assert keys(fork) == ["prepare", "review", "after"]
    assert journal_lines(journal) == ["prepare", "after", "after"]  # only `after` again


def test_an_active_run_is_forked_only_once_cancelled(queue_capture):
    run = workflow_start("test.approval", {})
    queue_capture.drain()
    with pytest.raises(RunStateError, match="cancel it before forking"):
        run_fork(run.id, from_step="prepare")
    run_cancel(run.id)
    fork = run_fork(run.id, from_step="prepare")
    assert fork.status == RunStatus.PENDING


def test_fork_run_command(queue_capture):
    run = workflow_start("test.counting", {"steps": 3})
    queue_capture.drain()
    out = StringIO()
    call_command("fork_run", str(run.id), "--from-step", "step-2", stdout=out)
    fork = WorkflowRun.objects.get(forked_from=run)
    assert f"run {fork.id} (test.counting) forked from {run.id} at step 'step-2'" in out.getvalue()
    assert keys(fork) == ["step-0", "step-1"]
    with pytest.raises(CommandError, match="is not a run id"):
        call_command("fork_run", "nope", "--from-step", "x")
    with pytest.raises(CommandError, match="has no step"):
        call_command("fork_run", str(run.id), "--from-step", "x")
