"""The staff console: runs list, trace, workflows and agents, start form."""

import json
import re
import uuid
from datetime import timedelta
from html import unescape

import pytest
import time_machine
from django.contrib.auth.models import Permission, User
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from tests.workflows.sample_workflows import BROKEN
from workflows.console.presenters import run_trace
from workflows.engine.services import workflow_start
from workflows.models import RunStatus, StepKind, StepRecord, StepStatus, WorkflowRun

pytestmark = pytest.mark.django_db


@pytest.fixture
def staff() -> Client:
    """Staff who may read runs (`workflows.view_workflowrun`)."""
    user = User.objects.create_user("staff", password="x", is_staff=True)
    user.user_permissions.add(Permission.objects.get(codename="view_workflowrun"))
    client = Client()
    client.force_login(user)
    return client


@pytest.fixture
def operator() -> Client:
    """Staff who may also start runs (`workflows.start_run`)."""
    user = User.objects.create_user("operator", password="x", is_staff=True)
    user.user_permissions.add(
        *Permission.objects.filter(codename__in=["view_workflowrun", "start_run"])
    )
    client = Client()
    client.force_login(user)
    return client


@pytest.fixture
def agent_run(queue_capture, settings) -> WorkflowRun:
    settings.LLM_PROVIDER = "simulated"
    run = workflow_start("test.agent", {"question": "What is 2 + 3?"})
    assert queue_capture.drain() == ["completed"]
    return run


@pytest.fixture
def suspended_run(queue_capture) -> WorkflowRun:
    run = workflow_start("test.approval", {"timeout": 3600})
    assert queue_capture.drain() == ["suspended"]
    return run


def text(response) -> str:
    return unescape(response.content.decode())


def trace_url(run: WorkflowRun, **params: str) -> str:
    url = reverse("workflows:run_detail", args=[run.id])
    return url + ("?" + "&".join(f"{k}={v}" for k, v in params.items()) if params else "")


# --- access -------------------------------------------------------------------------------


PAGES = [
    ("workflows:run_list", []),
    ("workflows:run_detail", [uuid.uuid4()]),
    ("workflows:workflow_list", []),
    ("workflows:workflow_start", ["test.counting"]),
]


@pytest.mark.parametrize(("name", "args"), PAGES)
def test_anonymous_users_are_sent_to_the_admin_login(client, name, args):
    url = reverse(name, args=args)
    response = client.get(url)
    assert response.status_code == 302
    assert response["Location"] == f"/admin/login/?next={url}"


@pytest.mark.parametrize(("name", "args"), PAGES)
def test_non_staff_users_are_refused(name, args):
    client = Client()
    client.force_login(User.objects.create_user("customer", password="x"))
    response = client.get(reverse(name, args=args))
    assert response.status_code in (302, 403)
    if response.status_code == 302:
        assert response["Location"].startswith("/admin/login/")


def test_root_redirects_to_the_runs_list(staff):
    response = staff.get("/")
    assert response.status_code == 302
    assert response["Location"] == "/runs/"


def test_trace_lives_at_the_path_orders_link_to(agent_run):
    assert reverse("workflows:run_detail", args=[agent_run.id]) == f"/runs/{agent_run.id}/"


def test_unknown_run_is_404(staff):
    assert staff.get(f"/runs/{uuid.uuid4()}/").status_code == 404


# --- runs list ----------------------------------------------------------------------------


def test_runs_list_shows_runs_and_filters(staff, queue_capture, suspended_run):
    counting = workflow_start("test.counting", {"steps": 2})
    queue_capture.drain()
    pending = workflow_start("test.counting", {"steps": 1})  # never executed

    response = staff.get("/runs/")
    page = text(response)
    for run in (counting, suspended_run, pending):
        assert str(run.id)[:8] in page
        assert f"/runs/{run.id}/" in page
    chips = {c["value"]: c["count"] for c in response.context["status_chips"]}
    assert chips == {
        "all": 3, "pending": 1, "running": 0, "suspended": 1,
        "completed": 1, "failed": 0, "cancelled": 0,
    }  # fmt: skip
    assert 'data-live="true"' in page  # a pending run is listed

    suspended_only = text(staff.get("/runs/?status=suspended"))
    assert str(suspended_run.id)[:8] in suspended_only
    assert str(counting.id)[:8] not in suspended_only
    assert str(pending.id)[:8] not in suspended_only
    assert 'data-live="false"' in suspended_only

    by_workflow = text(staff.get("/runs/?workflow=test.counting"))
    assert str(counting.id)[:8] in by_workflow and str(pending.id)[:8] in by_workflow
    assert str(suspended_run.id)[:8] not in by_workflow

    by_prefix = text(staff.get(f"/runs/?q={str(counting.id)[:6]}"))
    assert str(counting.id)[:8] in by_prefix
    assert str(suspended_run.id)[:8] not in by_prefix

    by_name = text(staff.get("/runs/?q=approv"))
    assert str(suspended_run.id)[:8] in by_name
    assert str(counting.id)[:8] not in by_name

    fragment = text(staff.get("/runs/?fragment=1&status=completed"))
    assert "<html" not in fragment
    assert fragment.lstrip().startswith('<div class="live-region" id="run-results"')
    assert str(counting.id)[:8] in fragment


def test_runs_list_status_counts_and_unknown_status(staff, queue_capture):
    workflow_start("test.counting", {"steps": 1})
    queue_capture.drain()
    response = staff.get("/runs/?status=bogus")
    assert response.status_code == 200
    chips = {c["value"]: c["count"] for c in response.context["status_chips"]}
    assert chips["all"] == 1 and chips["completed"] == 1 and chips["failed"] == 0


# --- trace --------------------------------------------------------------------------------


def test_trace_shows_every_step_nested_under_its_agent(staff, agent_run):
    keys = list(StepRecord.objects.filter(run=agent_run).values_list("key", flat=True))
    assert set(keys) == {"ask/llm/1", "ask/tool/1/add", "ask/llm/2", "ask"}

    page = text(staff.get(trace_url(agent_run)))
    rows = re.findall(r'<a role="listitem" class="tl-row ([^"]*)"[^>]*data-step="([^"]+)"', page)
    assert [key for _, key in rows] == ["ask", "ask/llm/1", "ask/tool/1/add", "ask/llm/2"]
    classes = dict((key, cls) for cls, key in rows)
    assert "depth-0" in classes["ask"] and "kind-agent" in classes["ask"]
    assert "depth-1" in classes["ask/tool/1/add"] and "kind-tool" in classes["ask/tool/1/add"]
    assert "depth-1" in classes["ask/llm/1"] and "kind-llm" in classes["ask/llm/1"]
    assert "completed" in page and '"total": 5' in page


def test_trace_shows_a_selected_llm_steps_messages(staff, agent_run):
    page = text(staff.get(trace_url(agent_run, step="ask/llm/2")))
    detail = page[page.index('id="step-detail"') :]
    assert "Messages sent" in detail
    for role in ("system", "user", "assistant", "tool"):
        assert f"msg role-{role}" in detail
    assert "Use the tools, then answer with JSON." in detail  # the system prompt
    assert "What is 2 + 3?" in detail
    assert "add" in detail and '"a": 2' in detail  # the assistant's tool call
    assert '"sum": 5' in detail  # the tool's answer sent back
    assert "simulated:gpt-4o-mini" in detail
    assert "Latency" in detail and "Tokens" in detail
    assert "selected" in re.search(r'class="tl-row [^"]*"[^>]*data-step="ask/llm/2"', page)[0]

    fragment = text(staff.get(trace_url(agent_run, step="ask/llm/1", fragment="detail")))
    assert fragment.lstrip().startswith("<aside")
    assert "What is 2 + 3?" in fragment


def test_trace_shows_a_tool_steps_arguments_and_result(staff, agent_run):
    detail = text(staff.get(trace_url(agent_run, step="ask/tool/1/add")))
    detail = detail[detail.index('id="step-detail"') :]
    assert "Arguments" in detail and '"b": 3' in detail
    assert "Result" in detail and '"sum": 5' in detail


def test_trace_of_a_suspended_run_shows_its_wait(staff, suspended_run, hooks_registry):
    # The page is read 30 s after the wait began, however long the set-up took.
    deadline = suspended_run.waits.get().deadline
    with time_machine.travel(deadline - timedelta(minutes=59, seconds=30), tick=False):
        page = text(staff.get(trace_url(suspended_run)))
    assert "Waiting for" in page and "approval" in page
    assert "ship it?" in page
    assert re.search(r"59\xa0minutes left|59 minutes left", page)
    assert reverse("admin:workflows_workflowrun_change", args=[suspended_run.id]) in page
    assert 'data-step="approval"' in page and "waiting" in page
    assert 'data-live="false"' in page  # suspended runs do not poll

    hooks_registry.register_wait_link("approval", lambda wait: f"/decide/{wait.pk}/")
    page = text(staff.get(trace_url(suspended_run)))
    wait = suspended_run.waits.get()
    assert f'href="/decide/{wait.pk}/"' in page and "Open the approval" in page

    def broken(wait):
        raise RuntimeError("boom")

    hooks_registry.wait_links["approval"] = broken
    assert staff.get(trace_url(suspended_run)).status_code == 200


def test_trace_of_a_failed_run_shows_the_error(staff, queue_capture, tmp_path, monkeypatch):
    monkeypatch.setitem(BROKEN, "permanent", True)
    run = workflow_start("test.flaky", {"journal": str(tmp_path / "j"), "permanent": True})
    assert queue_capture.drain() == ["failed"]
    page = text(staff.get(trace_url(run)))
    assert "card declined" in page and "Traceback" in page
    # The failed step is flagged and selected when nothing else is.
    row = re.search(r'class="tl-row ([^"]*)"[^>]*data-step="provider"', page)[1]
    assert "is-error" in row and "selected" in row


def test_live_trace_polls_and_fragment(staff, queue_capture):
    run = workflow_start("test.counting", {"steps": 1})
    page = text(staff.get(trace_url(run)))
    assert 'data-live="true"' in page and "No steps yet" in page
    fragment = text(staff.get(trace_url(run, fragment="1")))
    assert fragment.lstrip().startswith('<div class="live-region" id="run-trace"')


def test_run_trace_nests_steps_and_places_bars():
    now = timezone.now()
    run = WorkflowRun.objects.create(
        workflow_id="x", input={}, status=RunStatus.COMPLETED, started_at=now,
        finished_at=now + timedelta(seconds=10),
    )  # fmt: skip

    def step(key, position, kind, start, end, **extra):
        StepRecord.objects.create(
            run=run, key=key, position=position, kind=kind, status=StepStatus.COMPLETED,
            started_at=now + timedelta(seconds=start), finished_at=now + timedelta(seconds=end),
            **extra,
        )  # fmt: skip

    step("first", 0, StepKind.STEP, 0, 1)
    step("a/llm/1", 1, StepKind.LLM, 1, 3, meta={"usage": {"prompt_tokens": 7}})
    step("a/tool/1/t", 2, StepKind.TOOL, 3, 4, meta={"error": True}, output={"error": "no"})
    step("a/llm/2", 3, StepKind.LLM, 4, 5)
    step("a", 4, StepKind.AGENT, 5, 5)  # the agent commits last
    step("b/llm/1", 5, StepKind.LLM, 6, 10)  # an agent without its own record yet

    trace = run_trace(run_id=run.id)
    assert [(r.key, r.depth) for r in trace.rows] == [
        ("first", 0),
        ("a", 0),
        ("a/llm/1", 1),
        ("a/tool/1/t", 1),
        ("a/llm/2", 1),
        ("b", 0),
        ("b/llm/1", 1),
    ]
    agent = trace.step("a")
    assert agent.offset_pct == 10 and agent.width_pct == 40  # spans its children
    assert trace.step("a/llm/1").tokens == 7
    assert trace.step("a/tool/1/t").is_error
    assert trace.step("b").is_open and trace.step("b").record is None
    assert all(
        0 <= r.offset_pct <= 100 and r.offset_pct + r.width_pct <= 100.001 for r in trace.rows
    )


# --- start form ---------------------------------------------------------------------------


def test_start_form_is_prefilled_from_the_input_schema(operator):
    response = operator.get(reverse("workflows:workflow_start", args=["test.counting"]))
    assert response.status_code == 200
    payload = json.loads(response.context["form"]["payload"].value())
    assert payload["steps"] == 3 and "step_seconds" in payload
    assert "csrfmiddlewaretoken" in text(response)


def test_start_form_example_for_required_fields(operator):
    response = operator.get(reverse("workflows:workflow_start", args=["test.agent"]))
    payload = json.loads(response.context["form"]["payload"].value())
    assert isinstance(payload["question"], str) and payload["agent"] == "test.calculator"


def test_start_form_rejects_invalid_json(operator):
    url = reverse("workflows:workflow_start", args=["test.counting"])
    response = operator.post(url, {"payload": '{"steps": 2,'})
    assert response.status_code == 200
    assert "not valid JSON" in text(response)
    assert not WorkflowRun.objects.exists()

    response = operator.post(url, {"payload": "[1, 2]"})
    assert "must be a JSON object" in text(response)
    assert not WorkflowRun.objects.exists()


def test_start_form_shows_field_errors_and_writes_nothing(operator, queue_capture):
    url = reverse("workflows:workflow_start", args=["test.counting"])
    response = operator.post(url, {"payload": '{"steps": "many"}'})
    assert response.status_code == 200
    page = text(response)
    assert "Input should be a valid integer" in page
    assert re.search(r'<span class="mono">steps</span>: Input should be a valid integer', page)
    assert 'class="has-error"' in page
    assert not WorkflowRun.objects.exists() and queue_capture.sent == []


def test_start_form_starts_a_run_and_redirects_to_its_trace(operator, queue_capture):
    url = reverse("workflows:workflow_start", args=["test.counting"])
    response = operator.post(url, {"payload": '{"steps": 2}'})
    run = WorkflowRun.objects.get()
    assert response.status_code == 302
    assert response["Location"] == f"/runs/{run.id}/"
    assert run.workflow_id == "test.counting" and run.input["steps"] == 2
    assert queue_capture.sent == [str(run.id)]


def test_start_form_of_an_unknown_workflow_is_404(operator):
    assert operator.get("/workflows/no.such.workflow/start/").status_code == 404
    assert operator.post("/workflows/no.such.workflow/start/", {"payload": "{}"}).status_code == 404


# --- workflows and agents -----------------------------------------------------------------


def test_workflows_page_lists_workflows_and_agents(operator, settings):
    settings.LLM_PROVIDER = "simulated"
    page = text(operator.get(reverse("workflows:workflow_list")))
    assert "test.counting" in page and "K steps, each journaled when it runs." in page
    assert reverse("workflows:workflow_start", args=["test.counting"]) in page
    assert "CountingInput" in page and "step_seconds" in page and "CountingOutput" in page

    assert "test.calculator" in page
    assert "openai → simulated" in page
    assert "gpt-4o-mini" in page
    assert "Add two integers" in page and "Charge an amount; journals each real charge" in page
    assert "amount_cents" in page  # a tool's input field
    assert "Use the tools, then answer with JSON." in page  # the system prompt
    assert "<details" in page
