"""The agent transcript's two formats (`workflows.agents.transcript`): a run recorded
before the lean format (format 1: the whole conversation, system prompt and tools in
every model call) still replays and renders as it did, and a run recorded now (format
2) keeps each thing once and reads back the same."""

import json
from io import StringIO

import pytest
from django.contrib.auth.models import Permission, User
from django.core.management import call_command
from django.test import Client
from django.urls import reverse

from workflows import workflow_start
from workflows.agents.contexts import records_expanded
from workflows.engine.replay import runs_replay_check
from workflows.models import AgentContext, RunStatus, StepRecord, WorkflowRun

pytestmark = pytest.mark.django_db(transaction=True)

SYSTEM_PROMPT = "Use the tools, then answer with JSON."


@pytest.fixture
def agent_run(queue_capture, settings) -> WorkflowRun:
    settings.LLM_PROVIDER = "simulated"
    run = workflow_start("test.agent", {"question": "What is 2 + 3?"})
    assert queue_capture.drain() == ["completed"]
    return run


def as_format_1(run: WorkflowRun) -> None:
    """Rewrite the run's records as the code before the lean format stored them."""
    for record in records_expanded(run.steps.order_by("position")):
        StepRecord.objects.filter(pk=record.pk).update(input=record.input, output=record.output)
    AgentContext.objects.all().delete()  # format 1 never needed them


def staff_page(run: WorkflowRun, step: str) -> str:
    user = User.objects.create_user("staff", password="x", is_staff=True)
    user.user_permissions.add(Permission.objects.get(codename="view_workflowrun"))
    client = Client()
    client.force_login(user)
    url = reverse("workflows:run_detail", args=[run.pk]) + f"?step={step}"
    return client.get(url).content.decode()


def test_a_lean_run_stores_the_context_once_and_nothing_twice(agent_run, queue_capture):
    workflow_start("test.agent", {"question": "What is 4 + 4?"})
    queue_capture.drain()
    [context] = AgentContext.objects.all()  # two runs, several model calls: one row
    assert context.content["system"] == SYSTEM_PROMPT
    stored = json.dumps(list(StepRecord.objects.filter(run=agent_run).values("input", "output")))
    assert SYSTEM_PROMPT not in stored
    assert stored.count("What is 2 + 3?") == 1  # the user's turn, once


def test_a_run_recorded_in_format_1_still_replays_and_renders(agent_run):
    as_format_1(agent_run)
    llm = StepRecord.objects.get(run=agent_run, key="ask/llm/2")
    assert llm.input["messages"][0] == {"role": "system", "content": SYSTEM_PROMPT}
    assert "format" not in llm.input

    [result] = runs_replay_check(statuses=[RunStatus.COMPLETED])
    assert result.ok, result
    page = staff_page(agent_run, "ask/llm/2")
    assert SYSTEM_PROMPT in page and "What is 2 + 3?" in page
    out = StringIO()
    call_command("trace", str(agent_run.pk), stdout=out)
    assert "ask/llm/2" in out.getvalue()


def test_a_lean_run_replays_and_renders_the_same(agent_run):
    [result] = runs_replay_check(statuses=[RunStatus.COMPLETED])
    assert result.ok, result
    page = staff_page(agent_run, "ask/llm/2")
    assert SYSTEM_PROMPT in page and "What is 2 + 3?" in page
    assert "msg role-tool" in page and "msg role-assistant" in page
