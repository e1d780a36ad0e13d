"""Starting a run from the console needs `workflows.start_run` (issue 10, defect 1):
reading runs (`workflows.view_workflowrun`) does not let one start them."""

import json

import pytest
from django.contrib.auth.models import Group, Permission, User
from django.test import Client
from django.urls import reverse

from workflows.models import WorkflowRun

pytestmark = pytest.mark.django_db

START_URL = reverse("workflows:workflow_start", args=["test.counting"])
PAYLOAD = {"payload": json.dumps({"steps": 1})}


def logged_in(user: User) -> Client:
    client = Client()
    client.force_login(user)
    return client


def reader() -> User:
    """Staff who may read runs on the console, not start them."""
    user = User.objects.create_user("sam", password="x", is_staff=True)
    user.user_permissions.add(Permission.objects.get(codename="view_workflowrun"))
    return user


def test_staff_without_the_permission_get_403_and_start_nothing(queue_capture):
    staff = logged_in(reader())
    assert staff.get(START_URL).status_code == 403
    assert staff.post(START_URL, PAYLOAD).status_code == 403
    assert not WorkflowRun.objects.exists() and queue_capture.sent == []


def test_the_workflows_page_offers_the_start_form_only_to_those_who_may(queue_capture):
    staff = logged_in(reader())
    page = staff.get(reverse("workflows:workflow_list")).content.decode()
    assert "test.counting" in page and START_URL not in page and "Start a run" not in page

    root = logged_in(User.objects.create_superuser("root", "root@example.com", "x"))
    assert START_URL in root.get(reverse("workflows:workflow_list")).content.decode()


def test_the_operators_group_from_the_migration_may_start_runs(queue_capture):
    group = Group.objects.get(name="Workflow operators")
    assert {p.codename for p in group.permissions.all()} == {
        "start_run",
        "retry_run",
        "view_workflowrun",
    }
    user = User.objects.create_user("olga", password="x", is_staff=True)
    user.groups.add(group)
    operator = logged_in(user)
    assert operator.get(START_URL).status_code == 200
    response = operator.post(START_URL, PAYLOAD)
    run = WorkflowRun.objects.get()
    assert response.status_code == 302 and queue_capture.sent == [str(run.id)]


def test_superusers_may_start_runs(queue_capture):
    root = logged_in(User.objects.create_superuser("root", "root@example.com", "x"))
    assert root.post(START_URL, PAYLOAD).status_code == 302
    assert WorkflowRun.objects.count() == 1
