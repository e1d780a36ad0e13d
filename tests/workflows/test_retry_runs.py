"""`manage.py retry_runs`: the bulk retry of failed runs after an outage, selected by
workflow, error text and time range, with a dry run; bad input is a usage error that
changes nothing."""

from datetime import timedelta
from io import StringIO
from pathlib import Path

import pytest
from django.core.management import CommandError, call_command
from django.utils import timezone

from tests.workflows.sample_workflows import BROKEN, DEPENDENCIES_DOWN
from workflows import workflow_start
from workflows.engine.services import runs_retry_failed
from workflows.models import RunStatus, WorkflowRun

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def failed_runs(queue_capture, tmp_path: Path, monkeypatch, settings):
    """Three failed runs: two that gave up on the mail hub (one 90 minutes ago), one whose
    card was declined; and a completed one."""
    settings.WORKFLOWS_CIRCUIT_FAILURES = 0
    monkeypatch.setitem(BROKEN, "permanent", True)
    DEPENDENCIES_DOWN["mailhub"] = True
    hub = [
        workflow_start(
            "test.dependent",
            {"journal": str(tmp_path / f"j{i}"), "dependency": "mailhub", "horizon": 0.01},
        )
        for i in range(2)
    ]
    declined = workflow_start(
        "test.flaky", {"journal": str(tmp_path / "flaky"), "permanent": True}
    )
    (tmp_path / "flaky").touch()
    done = workflow_start("test.counting", {"steps": 1})
    queue_capture.drain()
    DEPENDENCIES_DOWN.clear()
    WorkflowRun.objects.filter(pk=hub[1].pk).update(
        finished_at=timezone.now() - timedelta(minutes=90)
    )
    runs = {"mailhub": hub, "declined": declined, "done": done}
    assert [status(r) for r in (*hub, declined, done)] == ["failed"] * 3 + ["completed"]
    assert "mailhub stayed unavailable" in WorkflowRun.objects.get(pk=hub[0].pk).error
    yield runs
    DEPENDENCIES_DOWN.clear()


def status(run: WorkflowRun) -> str:
    return WorkflowRun.objects.get(pk=run.pk).status


def retry_runs(*args: str) -> str:
    out = StringIO()
    call_command("retry_runs", *args, stdout=out, stderr=StringIO())
    return out.getvalue()


def test_a_dry_run_lists_the_matching_runs_and_changes_nothing(failed_runs, queue_capture):
    out = retry_runs("--status", "failed", "--error-contains", "MAILHUB", "--dry-run")
    hub = failed_runs["mailhub"]
    assert str(hub[0].pk) in out and str(hub[1].pk) in out
    assert str(failed_runs["declined"].pk) not in out
    assert "Would retry 2 run(s)" in out
    assert queue_capture.sent == [] and status(hub[0]) == RunStatus.FAILED


def test_the_error_text_and_time_range_select_what_is_retried(failed_runs, queue_capture):
    hub = failed_runs["mailhub"]
    out = retry_runs("--error-contains", "mailhub", "--since", "1h", "--workflow", "test.dependent")
    assert "Queued again 1 run(s)" in out
    assert queue_capture.drain() == ["completed"]
    assert status(hub[0]) == RunStatus.COMPLETED
    assert status(hub[1]) == RunStatus.FAILED  # failed 90 minutes ago
    assert status(failed_runs["declined"]) == RunStatus.FAILED

    since = (timezone.now() - timedelta(hours=2)).strftime("%Y-%m-%dT%H:%M:%S")
    assert "Queued again 1 run(s)" in retry_runs("--error-contains", "MAILHUB", "--since", since)
    assert queue_capture.drain() == ["completed"]
    assert "No failed run matches." in retry_runs("--error-contains", "MAILHUB")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--since", "yesterday"], "neither a duration"),
        (["--since=3x"], "neither a duration"),
        (["--status", "completed", "--since", "1h"], "invalid choice"),
        ([], "at least one of"),
        (["--error-contains", "  "], "needs a text"),
        (["--workflow", "nope"], "No workflow 'nope'"),
        (["--since", "1h", "--until", "2h"], "--since is after --until"),
    ],
)
def test_bad_input_is_a_usage_error_that_changes_nothing(
    failed_runs, queue_capture, args, message
):
    with pytest.raises(CommandError, match=message):
        retry_runs(*args)
    assert queue_capture.sent == []
    assert WorkflowRun.objects.filter(status=RunStatus.FAILED).count() == 3


def test_the_service_refuses_chosen_runs_that_are_not_failed(failed_runs, queue_capture):
    done, declined = failed_runs["done"], failed_runs["declined"]
    result = runs_retry_failed(run_ids=[done.pk, declined.pk])
    assert [r.pk for r in result.retried] == [declined.pk]
    assert result.refused == [f"Run {done.pk} is completed; only failed runs can be retried"]
