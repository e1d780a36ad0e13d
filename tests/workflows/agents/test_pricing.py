"""What model calls cost: per call, per run, on the pages and in the commands; budgets."""

import json
from decimal import Decimal
from io import StringIO

import pytest
from django.contrib.auth.models import Permission, User
from django.core.management import call_command
from django.test import Client

from tests.support.openai_server import reply_text, reply_tool_calls
from workflows import workflow_start
from workflows.engine.pricing import call_cost_microusd, model_price, usd
from workflows.engine.selectors import runs_cost_total
from workflows.models import RunStatus, StepRecord, WorkflowRun

pytestmark = pytest.mark.django_db(transaction=True)

ANSWER = json.dumps({"total": 5, "note": "added"})


def test_prices_per_million_tokens_by_model_and_dated_model(settings):
    assert model_price("gpt-4o-mini") == (Decimal("0.15"), Decimal("0.60"))
    assert model_price("gpt-4o-mini-2024-07-18") == (Decimal("0.15"), Decimal("0.60"))
    assert model_price("gpt-4o-2024-08-06") == (Decimal("2.50"), Decimal("10.00"))
    # The simulated stand-ins have a price (the site's setting), so the demo shows cost;
    # a provider-qualified name takes its provider's entry.
    assert model_price("simulated:gpt-4o-mini") == (Decimal("0.15"), Decimal("0.60"))
    assert model_price("simulatedx:gpt-4o-mini") is None
    assert model_price("llama3") is None
    # 1,200 in at $0.15/M + 80 out at $0.60/M = $0.000180 + $0.000048
    assert call_cost_microusd(model="gpt-4o-mini", prompt_tokens=1200, completion_tokens=80) == 228
    assert usd(228) == Decimal("0.000228")
    settings.WORKFLOWS_MODEL_PRICES = {"llama3": {"input": "1", "output": "2"}}
    assert call_cost_microusd(model="llama3", prompt_tokens=10, completion_tokens=5) == 20


def test_cost_is_computed_from_recorded_usage_per_call_and_per_run(queue_capture, openai_server):
    openai_server.script(
        [
            reply_tool_calls(
                [("add", {"a": 2, "b": 3})],
                prompt_tokens=1000,
                completion_tokens=100,
                model="gpt-4o-mini-2024-07-18",
            ),
            reply_text(ANSWER, prompt_tokens=2000, completion_tokens=50, model="gpt-4o-2024-08-06"),
        ]
    )
    run = workflow_start("test.agent", {"question": "What is 2 + 3?"})
    queue_capture.drain()
    run.refresh_from_db()
    assert run.status == RunStatus.COMPLETED
    first, second = StepRecord.objects.filter(run=run, kind="llm").order_by("position")
    assert first.meta["usage"]["cost_microusd"] == 150 + 60  # 1000 * 0.15 + 100 * 0.60
    assert second.meta["usage"]["cost_microusd"] == 5000 + 500  # 2000 * 2.50 + 50 * 10
    assert run.usage["cost_microusd"] == 5710
    assert run.usage["prompt_tokens"] == 3000  # tokens stay tokens
    assert runs_cost_total() == (3150, Decimal("0.005710"))

    staff = User.objects.create_user("ops", password="ops-pass-123", is_staff=True)
    staff.user_permissions.add(Permission.objects.get(codename="view_workflowrun"))
    browser = Client()
    browser.force_login(staff)
    assert "$0.005710" in browser.get(f"/runs/{run.id}/").content.decode()
    assert "$0.005710" in browser.get("/runs/").content.decode()
    detail = browser.get(f"/runs/{run.id}/?step=ask/llm/1&fragment=detail").content.decode()
    assert "$0.000210" in detail
    out = StringIO()
    call_command("runs", stdout=out)
    assert "$0.005710" in out.getvalue() and " 3150 " in out.getvalue()


def test_a_run_over_its_budget_makes_no_further_model_call(queue_capture, openai_server):
    openai_server.script(
        [reply_tool_calls([("add", {"a": 2, "b": 3})]), reply_text(ANSWER)]  # 10 in, 5 out
    )
    run = workflow_start("test.budgeted", {"question": "What is 2 + 3?"})
    queue_capture.drain()
    run = WorkflowRun.objects.get(pk=run.pk)
    assert run.status == RunStatus.FAILED
    assert "its budget is $0.000004" in run.error and "has spent $0.000005" in run.error
    assert len(openai_server.chat_requests) == 1


def test_the_budget_setting_applies_to_workflows_without_their_own(
    queue_capture, openai_server, settings
):
    settings.WORKFLOWS_RUN_BUDGET_USD = "0.000001"
    openai_server.script([reply_tool_calls([("add", {"a": 2, "b": 3})]), reply_text(ANSWER)])
    run = workflow_start("test.agent", {"question": "What is 2 + 3?"})
    queue_capture.drain()
    run.refresh_from_db()
    assert run.status == RunStatus.FAILED and "WORKFLOWS_RUN_BUDGET_USD" in run.error
