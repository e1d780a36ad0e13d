"""Retention of finished runs' history (`workflows.engine.retention`, `manage.py
prune_runs`): what goes (the steps and waits of old completed, failed and cancelled
runs), what never does (active and suspended runs, what an application vetoes), the
tombstone left, and the doors (retry, fork, replay_check, the trace page) on a pruned
run. Database-agnostic: the PostgreSQL pass of scripts/test.sh runs it there too."""

import json
from datetime import timedelta
from io import StringIO
from pathlib import Path

import pytest
from django.contrib.auth.models import User
from django.core.management import CommandError, call_command
from django.test import Client
from django.urls import reverse
from django.utils import timezone
from django_q.models import Schedule

from tests.workflows.sample_workflows import BROKEN
from workflows import workflow_start
from workflows.engine.errors import RunStateError
from workflows.engine.retention import RetentionPolicy, runs_prune, runs_prune_configured
from workflows.engine.services import run_fork, run_retry
from workflows.models import RunStatus, StepRecord, Wait, WorkflowRun
from workflows.tasks import runs_prune_task

pytestmark = pytest.mark.django_db(transaction=True)

MONTH = RetentionPolicy(older_than=timedelta(days=30))


def finished_days_ago(run: WorkflowRun, days: float) -> None:
    WorkflowRun.objects.filter(pk=run.pk).update(
        finished_at=timezone.now() - timedelta(days=days)
    )


def history(run: WorkflowRun) -> tuple[int, int]:
    return StepRecord.objects.filter(run=run).count(), Wait.objects.filter(run=run).count()


@pytest.fixture
def runs(queue_capture, tmp_path: Path, monkeypatch):
    """Runs in every state: completed, failed and cancelled 40 days ago, one completed
    yesterday, one suspended at a wait and one pending (never picked up)."""
    monkeypatch.setitem(BROKEN, "permanent", True)
    old = workflow_start("test.counting", {"steps": 3})
    failed = workflow_start("test.flaky", {"journal": str(tmp_path / "flaky"), "permanent": True})
    (tmp_path / "flaky").touch()
    suspended = workflow_start("test.approval", {"journal": str(tmp_path / "a")})
    recent = workflow_start("test.counting", {"steps": 2})
    queue_capture.drain()
    cancelled = workflow_start("test.counting", {"steps": 1})
    WorkflowRun.objects.filter(pk=cancelled.pk).update(
        status=RunStatus.CANCELLED, finished_at=timezone.now()
    )
    StepRecord.objects.create(
        run=cancelled,
        key="before-cancel",
        position=0,
        status="completed",
        started_at=timezone.now(),
        finished_at=timezone.now(),
    )
    pending = workflow_start("test.counting", {"steps": 1})
    for run in (old, failed, cancelled, suspended):
        finished_days_ago(run, 40)  # a suspended run has no finish: it stays None
    WorkflowRun.objects.filter(pk=suspended.pk).update(finished_at=None)
    finished_days_ago(recent, 1)
    states = {
        name: WorkflowRun.objects.get(pk=run.pk)
        for name, run in {
            "old": old,
            "failed": failed,
            "cancelled": cancelled,
            "recent": recent,
            "suspended": suspended,
            "pending": pending,
        }.items()
    }
    assert [states[n].status for n in ("old", "failed", "suspended", "pending")] == [
        "completed",
        "failed",
        "suspended",
        "pending",
    ]
    return states


def test_old_finished_runs_lose_their_history_and_keep_their_row(runs):
    before = {name: history(run) for name, run in runs.items()}
    assert before["old"][0] >= 3 and before["suspended"][1] == 1

    report = runs_prune(policy=MONTH, pause=lambda seconds: None)

    pruned = {runs[n].pk for n in ("old", "failed", "cancelled")}
    assert set(report.pruned) == pruned and report.kept == []
    for name in ("old", "failed", "cancelled"):
        run = WorkflowRun.objects.get(pk=runs[name].pk)
        assert history(run) == (0, 0)
        assert run.pruned_at is not None
        # The tombstone: the outcome and its times stay.
        assert (run.status, run.output, run.error, run.finished_at) == (
            runs[name].status,
            runs[name].output,
            runs[name].error,
            runs[name].finished_at,
        )
    assert report.steps_deleted == sum(before[n][0] for n in ("old", "failed", "cancelled"))
    for name in ("recent", "suspended", "pending"):
        run = WorkflowRun.objects.get(pk=runs[name].pk)
        assert history(run) == before[name] and run.pruned_at is None
        assert run.status == runs[name].status

    # A second pass finds nothing more: the tombstones are not pruned again.
    assert runs_prune(policy=MONTH).pruned == []


def test_the_rows_threshold_keeps_the_most_recently_finished(runs):
    # Finished: old, failed, cancelled (40 days), recent (1 day): keep the newest two.
    finished_days_ago(runs["cancelled"], 2)
    report = runs_prune(policy=RetentionPolicy(keep_rows=2), pause=lambda seconds: None)
    assert set(report.pruned) == {runs["old"].pk, runs["failed"].pk}
    assert history(runs["cancelled"])[0] == 1 and history(runs["recent"])[0] > 0


def test_a_dry_run_deletes_nothing(runs):
    before = StepRecord.objects.count(), Wait.objects.count()
    report = runs_prune(policy=MONTH, dry_run=True)
    assert len(report.pruned) == 3 and report.dry_run
    assert (StepRecord.objects.count(), Wait.objects.count()) == before
    assert not WorkflowRun.objects.filter(pruned_at__isnull=False).exists()


def test_the_configured_policy_and_its_off_switch(runs, settings):
    settings.WORKFLOWS_RETENTION_HOURS = 0
    settings.WORKFLOWS_RETENTION_ROWS = 0
    assert runs_prune_configured().pruned == []
    settings.WORKFLOWS_RETENTION_HOURS = 24 * 30
    assert len(runs_prune_configured().pruned) == 3


def test_a_veto_keeps_runs_and_the_archiver_reads_them_before_they_go(runs, hooks_registry):
    asked, archived = [], []

    def keep_failed(run_ids):
        asked.append(list(run_ids))
        return [i for i in run_ids if i == runs["failed"].pk]

    def archive(run_ids):
        # Called before the deletion, in the same transaction: the history is there.
        archived.append({i: StepRecord.objects.filter(run_id=i).count() for i in run_ids})

    hooks_registry.register_retention_veto("test.flaky", keep_failed)
    hooks_registry.register_history_archiver("test.counting", archive)
    report = runs_prune(policy=MONTH, pause=lambda seconds: None)

    assert asked == [[runs["failed"].pk]]  # asked once per batch, with its own runs only
    assert report.kept == [runs["failed"].pk]
    assert history(runs["failed"])[0] > 0
    assert archived == [{runs["old"].pk: 3, runs["cancelled"].pk: 1}]
    assert history(runs["old"]) == (0, 0)


def test_a_veto_that_fails_keeps_its_runs(runs, hooks_registry):
    def broken(run_ids):
        raise RuntimeError("orders database away")

    hooks_registry.register_retention_veto("test.counting", broken)
    report = runs_prune(policy=MONTH, pause=lambda seconds: None)
    assert report.pruned == [runs["failed"].pk]
    assert history(runs["old"])[0] == 3


def test_the_time_budget_stops_a_pass(runs):
    report = runs_prune(policy=MONTH, time_budget=0)
    assert report.out_of_time and report.pruned == []
    # One run per batch: three batches, each its own transaction.
    assert runs_prune(policy=MONTH, batch_size=1, pause=lambda s: None).batches == 3


def test_a_pruned_run_is_not_retried_forked_or_replayed(runs):
    runs_prune(policy=MONTH, pause=lambda seconds: None)
    with pytest.raises(RunStateError, match="pruned"):
        run_retry(runs["failed"].pk)
    assert WorkflowRun.objects.get(pk=runs["failed"].pk).status == RunStatus.FAILED
    with pytest.raises(RunStateError, match="pruned"):
        run_fork(runs["old"].pk, from_step="step-1")
    out = StringIO()
    call_command("replay_check", "--status", "completed", "--include-failed", stdout=out)
    # Only "recent" is left to replay (completed, not pruned).
    assert "1 run(s) replayed; 0 would diverge" in out.getvalue()


def test_the_trace_page_says_the_history_was_pruned(runs):
    runs_prune(policy=MONTH, pause=lambda seconds: None)
    client = Client()
    client.force_login(User.objects.create_superuser("root", "root@example.com", "x"))
    page = client.get(reverse("workflows:run_detail", args=[runs["old"].pk]))
    assert page.status_code == 200
    text = page.content.decode()
    assert "History pruned" in text and "completed" in text
    kept = client.get(reverse("workflows:run_detail", args=[runs["recent"].pk])).content
    assert b"History pruned" not in kept


# --- manage.py prune_runs --------------------------------------------------------------


def test_prune_runs_dry_run_then_with_export(runs, tmp_path: Path):
    out = StringIO()
    call_command("prune_runs", "--older-than", "30d", "--dry-run", stdout=out)
    text = out.getvalue()
    assert "Would prune the history of 3 run(s)." in text
    assert str(runs["old"].pk) in text and str(runs["recent"].pk) not in text
    assert history(runs["old"])[0] == 3

    archive = tmp_path / "runs.jsonl"
    out = StringIO()
    call_command(
        "prune_runs", "--older-than", "30d", "--workflow", "test.counting",
        "--export", str(archive), stdout=out,
    )  # fmt: skip
    text = out.getvalue()
    assert "Pruned the history of 2 run(s): 4 step(s) and 0 wait(s) deleted." in text
    lines = [json.loads(line) for line in archive.read_text().splitlines()]
    assert {line["run"]["id"] for line in lines} == {str(runs["old"].pk), str(runs["cancelled"].pk)}
    old = next(line for line in lines if line["run"]["id"] == str(runs["old"].pk))
    assert [s["key"] for s in old["steps"]] == ["step-0", "step-1", "step-2"]
    assert history(runs["old"]) == (0, 0) and history(runs["failed"])[0] > 0


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--older-than", "soon"], "not a duration"),
        (["--older-than", "0d"], "not a duration"),
        (["--workflow", "nope"], "No workflow 'nope'"),
        (["--older-than", "1d", "--dry-run", "--export", "x.jsonl"], "cannot go with --dry-run"),
    ],
)
def test_prune_runs_refuses_bad_arguments(runs, arguments, message):
    with pytest.raises(CommandError, match=message):
        call_command("prune_runs", *arguments)
    assert not WorkflowRun.objects.filter(pruned_at__isnull=False).exists()


def test_prune_runs_never_overwrites_an_export(runs, tmp_path: Path):
    archive = tmp_path / "runs.jsonl"
    archive.write_text("earlier archive\n")
    with pytest.raises(CommandError, match="exists"):
        call_command("prune_runs", "--older-than", "30d", "--export", str(archive))
    assert archive.read_text() == "earlier archive\n"
    assert history(runs["old"])[0] == 3


# --- the schedule ----------------------------------------------------------------------


@pytest.mark.django_db
def test_the_migration_schedules_a_pass_every_five_minutes():
    # Non-transactional: the database as `migrate` left it.
    [schedule] = Schedule.objects.filter(func="workflows.tasks.runs_prune_task")
    assert (schedule.schedule_type, schedule.minutes, schedule.repeats) == ("I", 5, -1)


def test_the_scheduled_task_prunes_what_the_settings_let_go(runs, settings):
    settings.WORKFLOWS_RETENTION_HOURS = 24 * 30
    settings.WORKFLOWS_RETENTION_ROWS = 0
    assert runs_prune_task() == 3
    assert history(runs["old"]) == (0, 0) and history(runs["recent"])[0] > 0
