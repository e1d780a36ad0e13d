"""`workflows.engine.hooks`: a second application (not orders) plugs into the engine with one hook
of each kind, registered in its `AppConfig.ready()`; importing registers nothing."""

import doctest
import importlib
import sys
from datetime import timedelta
from html import unescape

import pytest
from django.apps import apps
from django.contrib.auth.models import Permission, User
from django.core.exceptions import ImproperlyConfigured
from django.core.management import CommandError, call_command
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from workflows.engine import hooks
from workflows.engine.errors import RunStateError
from workflows.engine.retry import dependency_label
from workflows.engine.services import run_cancel_requested, run_fork, waits_expire, workflow_start
from workflows.models import RunStatus, Wait, WaitStatus, WorkflowRun

pytestmark = pytest.mark.django_db

APP_MODULE = "tests.workflows.hooks_app"


@pytest.fixture
def app(hooks_registry):
    """The second application, its `ready()` run as Django runs it at start-up."""
    module = importlib.import_module(APP_MODULE)
    module.FORKS.clear()
    module.SWEEPS.clear()
    config = module.ApprovalsConfig("tests.workflows", importlib.import_module("tests.workflows"))
    config.ready()
    return module


@pytest.fixture
def staff() -> Client:
    user = User.objects.create_user("staff", password="x", is_staff=True)
    user.user_permissions.add(Permission.objects.get(codename="view_workflowrun"))
    client = Client()
    client.force_login(user)
    return client


@pytest.fixture
def suspended(queue_capture) -> WorkflowRun:
    run = workflow_start("test.approval", {"timeout": 3600})
    assert queue_capture.drain() == ["suspended"]
    return run


def page(client: Client, run: WorkflowRun) -> str:
    response = client.get(reverse("workflows:run_detail", args=[run.id]))
    assert response.status_code == 200
    return unescape(response.content.decode())


def test_the_module_docstring_example_runs():
    result = doctest.testmod(hooks, raise_on_error=False)
    assert result.attempted >= 9 and result.failed == 0


def test_importing_an_application_registers_nothing_its_ready_does(monkeypatch):
    empty = hooks.Hooks()
    monkeypatch.setattr(hooks, "registry", empty)
    monkeypatch.delitem(sys.modules, APP_MODULE, raising=False)
    module = importlib.import_module(APP_MODULE)
    importlib.reload(importlib.import_module("orders.apps"))
    assert empty == hooks.Hooks()

    module.ApprovalsConfig("tests.workflows", importlib.import_module("tests.workflows")).ready()
    assert set(empty.wait_links) == {"approval"}
    assert set(empty.run_facts) == set(empty.run_cancellers) == {"test.approval"}
    assert empty.fork_hooks == [module.counting_follow_fork]
    assert empty.wait_sweep_hooks == [module.sweep_record]
    assert [type(c) for c in empty.metrics_collectors] == [module.ApprovalsCollector]
    assert empty.dependency_names == {"inventory": "the inventory service"}


def test_the_orders_hooks_come_from_its_ready_alone(monkeypatch):
    from orders.models import FRAUD_REVIEW_KEY, ORDER_WORKFLOW_ID

    empty = hooks.Hooks()
    monkeypatch.setattr(hooks, "registry", empty)
    apps.get_app_config("orders").ready()
    assert set(empty.wait_links) == {FRAUD_REVIEW_KEY}
    assert set(empty.run_facts) == set(empty.run_cancellers) == {ORDER_WORKFLOW_ID}
    assert len(empty.fork_hooks) == len(empty.wait_sweep_hooks) == 1
    assert len(empty.metrics_collectors) == 1
    assert empty.dependency_names["stripe"] == "Stripe"

    before = empty.copy()
    apps.get_app_config("orders").ready()  # a second ready() changes nothing
    assert empty.wait_links == before.wait_links
    assert empty.run_facts == before.run_facts
    assert empty.run_cancellers == before.run_cancellers
    assert empty.fork_hooks == before.fork_hooks
    assert empty.wait_sweep_hooks == before.wait_sweep_hooks
    assert empty.dependency_names == before.dependency_names
    assert [type(c) for c in empty.metrics_collectors] == [
        type(c) for c in before.metrics_collectors
    ]


def test_a_second_hook_for_a_taken_key_is_refused(app):
    with pytest.raises(ImproperlyConfigured, match=r"'test\.approval' is already registered"):
        hooks.register_run_canceller("test.approval", lambda run_id, by: None)
    with pytest.raises(ImproperlyConfigured, match="'inventory'"):
        hooks.register_dependency_name("inventory", "the stock service")


def test_wait_link_and_run_facts_show_on_the_run_page(app, staff, suspended):
    text = page(staff, suspended)
    wait = suspended.waits.get()
    assert f'href="/approvals/{wait.pk}/"' in text and "Open the approval" in text
    assert "Approver" in text and '<a href="/people/rm/">the release manager</a>' in text


def test_the_run_canceller_decides_an_operators_cancel(app, suspended):
    with pytest.raises(RunStateError, match="cancelled by a person"):
        run_cancel_requested(suspended.id)
    with pytest.raises(CommandError, match="cancelled by a person"):
        call_command("cancel_run", str(suspended.id))
    suspended.refresh_from_db()
    assert suspended.status == RunStatus.SUSPENDED

    person = User.objects.create_user("rm")
    assert run_cancel_requested(suspended.id, by=person).status == RunStatus.CANCELLED
    assert suspended.waits.get().status == WaitStatus.CANCELLED


def test_a_fork_hook_follows_forks_and_may_refuse_one(app, queue_capture):
    run = workflow_start("test.counting", {"steps": 2})
    unlucky = workflow_start("test.counting", {"steps": app.UNLUCKY_STEPS})
    assert queue_capture.drain() == ["completed", "completed"]

    fork = run_fork(run.id, from_step="step-1")
    assert app.FORKS == [(run.pk, fork.pk)]

    runs = WorkflowRun.objects.count()
    with pytest.raises(RunStateError, match="may not be forked"):
        run_fork(unlucky.id, from_step="step-1")
    assert WorkflowRun.objects.count() == runs  # the fork was rolled back
    assert not WorkflowRun.objects.filter(forked_from=unlucky).exists()


def test_wait_sweep_hooks_run_after_each_sweep_and_cannot_stop_it(app, suspended, hooks_registry):
    def broken(*, now):
        raise RuntimeError("boom")

    hooks_registry.wait_sweep_hooks.insert(0, broken)
    later = timezone.now() + timedelta(hours=2)
    expired = waits_expire(now=later)
    assert [w.run_id for w in expired] == [suspended.id]
    assert Wait.objects.get(run=suspended).status == WaitStatus.EXPIRED
    assert app.SWEEPS == [later]


def test_a_metrics_collector_reports_on_the_scrape(app, client, settings, suspended):
    settings.METRICS_TOKEN = "hooks-test-token"
    response = client.get("/metrics", HTTP_AUTHORIZATION="Bearer hooks-test-token")
    text = response.content.decode()
    assert "test_approvals_waiting 1.0" in text
    assert 'workflows_metrics_collector_up{collector="ApprovalsCollector"} 1.0' in text


def test_a_dependency_name_is_what_messages_call_it(app):
    assert dependency_label("inventory") == "the inventory service (inventory)"
    assert dependency_label("warehouse") == "warehouse"
