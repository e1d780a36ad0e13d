"""The run admin's cancel and retry actions, as an operator uses them: each needs its own
permission (cancel: change, retry: `workflows.retry_run`)."""

from pathlib import Path

import pytest
from django.contrib.auth.models import Permission, User
from django.contrib.messages import get_messages
from django.test import Client
from django.urls import reverse

from tests.workflows.sample_workflows import BROKEN, journal_lines
from workflows import workflow_start
from workflows.models import RunStatus, Wait, WaitStatus, WorkflowRun

pytestmark = pytest.mark.django_db(transaction=True)

CHANGELIST = "admin:workflows_workflowrun_changelist"


@pytest.fixture
def operator() -> Client:
    user = User.objects.create_user("olga", password="operator-pass-1", is_staff=True)
    user.user_permissions.add(
        *Permission.objects.filter(
            codename__in=["view_workflowrun", "change_workflowrun", "retry_run"],
            content_type__app_label="workflows",
        )
    )
    client = Client()
    client.force_login(user)
    return client


def act(client: Client, action: str, *runs: WorkflowRun) -> list[str]:
    response = client.post(
        reverse(CHANGELIST),
        {"action": action, "_selected_action": [str(r.pk) for r in runs]},
        follow=True,
    )
    assert response.status_code == 200
    return [str(m) for m in get_messages(response.wsgi_request)]


def status_of(run: WorkflowRun) -> str:
    run.refresh_from_db()
    return run.status


def test_cancel_stops_a_suspended_run_and_refuses_a_finished_one(operator, queue_capture):
    waiting = workflow_start("test.approval", {})
    finished = workflow_start("test.counting", {"steps": 1})
    assert sorted(queue_capture.drain()) == ["completed", "suspended"]

    messages = act(operator, "cancel_selected", waiting, finished)

    assert "Cancelled 1 run(s)." in messages
    assert any(str(finished.pk) in m and "completed" in m for m in messages), messages
    assert status_of(waiting) == RunStatus.CANCELLED
    assert Wait.objects.get(run=waiting).status == WaitStatus.CANCELLED
    assert status_of(finished) == RunStatus.COMPLETED
    assert queue_capture.sent == []  # nothing left to execute


def test_retry_continues_a_failed_run_from_its_failed_step(
    operator, queue_capture, tmp_path: Path, monkeypatch
):
    journal = tmp_path / "journal.txt"
    journal.touch()
    monkeypatch.setitem(BROKEN, "permanent", True)
    failed = workflow_start(
        "test.flaky", {"journal": str(journal), "permanent": True, "failures": 0}
    )
    done = workflow_start("test.counting", {"steps": 1})
    assert sorted(queue_capture.drain()) == ["completed", "failed"]

    monkeypatch.setitem(BROKEN, "permanent", False)  # the cause is fixed
    messages = act(operator, "retry_selected", failed, done)

    assert "Queued again 1 run(s)." in messages
    assert any(str(done.pk) in m for m in messages), messages  # refused: not failed
    assert queue_capture.drain() == ["completed"]
    assert status_of(failed) == RunStatus.COMPLETED and failed.error == ""
    assert journal_lines(journal) == ["first", "provider", "provider"]  # "first" not repeated


def test_the_actions_need_the_change_permission(queue_capture):
    run = workflow_start("test.approval", {})
    queue_capture.drain()
    viewer = User.objects.create_user("vic", password="viewer-pass-1", is_staff=True)
    viewer.user_permissions.add(Permission.objects.get(codename="view_workflowrun"))
    client = Client()
    client.force_login(viewer)
    page = client.get(reverse(CHANGELIST)).content.decode()
    assert "cancel_selected" not in page and "retry_selected" not in page
    client.post(reverse(CHANGELIST), {"action": "cancel_selected", "_selected_action": [run.pk]})
    assert status_of(run) == RunStatus.SUSPENDED


def test_retrying_needs_the_retry_permission(queue_capture, tmp_path: Path, monkeypatch):
    monkeypatch.setitem(BROKEN, "permanent", True)
    journal = tmp_path / "journal.txt"
    journal.touch()
    failed = workflow_start("test.flaky", {"journal": str(journal), "permanent": True})
    assert queue_capture.drain() == ["failed"]
    editor = User.objects.create_user("ed", password="editor-pass-1", is_staff=True)
    editor.user_permissions.add(
        *Permission.objects.filter(codename__in=["view_workflowrun", "change_workflowrun"])
    )
    client = Client()
    client.force_login(editor)
    page = client.get(reverse(CHANGELIST)).content.decode()
    assert "cancel_selected" in page and "retry_selected" not in page
    client.post(reverse(CHANGELIST), {"action": "retry_selected", "_selected_action": [failed.pk]})
    assert status_of(failed) == RunStatus.FAILED and queue_capture.sent == []

    editor.user_permissions.add(Permission.objects.get(codename="retry_run"))
    client.force_login(User.objects.get(pk=editor.pk))
    assert "Queued again 1 run(s)." in act(client, "retry_selected", failed)
    assert status_of(failed) == RunStatus.PENDING


def test_the_runs_a_bulk_retry_is_after_are_found_by_their_error(operator, queue_capture, tmp_path):
    """After an outage: search the failed runs by error text, select them all, retry."""
    journal = tmp_path / "journal.txt"
    journal.touch()
    failed = workflow_start("test.flaky", {"journal": str(journal), "failures": 10})
    done = workflow_start("test.counting", {"steps": 1})
    assert sorted(queue_capture.drain()) == ["completed", "failed"]
    page = operator.get(reverse(CHANGELIST), {"q": "provider unavailable"}).content.decode()
    assert str(failed.pk) in page and str(done.pk) not in page
