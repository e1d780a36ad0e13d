"""Reading runs on the console needs `workflows.view_workflowrun` (issue 18, item 8):
staff status alone shows no run, no trace, no step and no search result. The "Workflow
operators" group holds it."""

import json

import pytest
from django.contrib.auth.models import Group, Permission, User
from django.test import Client

from workflows.engine.services import workflow_start
from workflows.models import WorkflowRun

pytestmark = pytest.mark.django_db

# What only a run's trace shows: its input, as a customer's data would be (here the
# name of the file the sample workflow journals to).
SECRET_INPUT = "tango-sierra-417"


@pytest.fixture
def run(queue_capture, tmp_path) -> WorkflowRun:
    journal = str(tmp_path / SECRET_INPUT)
    run = workflow_start("test.counting", {"steps": 2, "journal": journal})
    assert queue_capture.drain() == ["completed"]
    return run


def console_urls(run: WorkflowRun) -> list[str]:
    """Every page and fragment of the console, the live refreshes and the search."""
    return [
        "/runs/",
        "/runs/?fragment=1",
        "/runs/?status=completed&workflow=test.counting",
        f"/runs/?q={str(run.id)[:8]}",
        f"/runs/?q={str(run.id)[:8]}&fragment=1",
        f"/runs/{run.id}/",
        f"/runs/{run.id}/?fragment=1",
        f"/runs/{run.id}/?step=step-1",
        f"/runs/{run.id}/?step=step-1&fragment=detail",
        "/workflows/",
        "/workflows/test.counting/start/",
        "/dashboard/",
    ]


def staff_with(*codenames: str) -> Client:
    user = User.objects.create_user("sam", password="x", is_staff=True)
    user.user_permissions.add(*Permission.objects.filter(codename__in=codenames))
    client = Client()
    client.force_login(user)
    return client


def test_staff_without_the_permission_get_403_and_not_the_data(run, queue_capture):
    # Even with the start permission: starting is not reading.
    staff = staff_with("start_run")
    for url in console_urls(run):
        response = staff.get(url)
        page = response.content.decode()
        assert response.status_code == 403, url
        assert str(run.id)[:8] not in page and SECRET_INPUT not in page, url
    started = staff.post("/workflows/test.counting/start/", {"payload": json.dumps({"steps": 1})})
    assert started.status_code == 403 and WorkflowRun.objects.count() == 1
    assert queue_capture.sent == []


def test_staff_with_the_permission_read_every_page(run):
    reader = staff_with("view_workflowrun", "start_run")
    for url in console_urls(run):
        assert reader.get(url).status_code == 200, url
    assert SECRET_INPUT in reader.get(f"/runs/{run.id}/").content.decode()
    assert str(run.id) in reader.get(f"/runs/?q={str(run.id)[:8]}&fragment=1").content.decode()


def test_the_workflow_operators_group_may_read_runs(run):
    user = User.objects.create_user("olga", password="x", is_staff=True)
    user.groups.add(Group.objects.get(name="Workflow operators"))
    operator = Client()
    operator.force_login(user)
    page = operator.get(f"/runs/{run.id}/")
    assert page.status_code == 200 and SECRET_INPUT in page.content.decode()
