"""Fast checks of the model call's own limits, beside the slow end-to-end storm
(`tests/workflows/test_runtime.py -k rate_limit_storm`): a 429 that says when to come back
is waited out within the same attempt, and a run over its budget makes no model call."""

import json
import time
from decimal import Decimal

import pytest

from tests.support.openai_server import reply_error, reply_text
from workflows import workflow_start
from workflows.engine.errors import NonRetryableError
from workflows.engine.pricing import budget_check
from workflows.models import RunStatus, StepRecord, WorkflowRun

ANSWER = json.dumps({"total": 5, "note": "added"})


@pytest.mark.django_db
def test_a_429_with_retry_after_is_waited_out_not_failed(queue_capture, openai_server, settings):
    settings.WORKFLOWS_RATE_LIMIT_PATIENCE_SECONDS = 60
    openai_server.script(
        [
            reply_error(429, "Rate limit reached", retry_after_ms=20),
            reply_error(429, "Rate limit reached", retry_after_ms=20),
            reply_text(ANSWER),
        ]
    )
    started = time.monotonic()
    run = workflow_start("test.agent", {"question": "What is 2 + 3?"})
    queue_capture.drain()
    elapsed = time.monotonic() - started
    run = WorkflowRun.objects.get(pk=run.pk)
    assert run.status == RunStatus.COMPLETED, run.error
    call = StepRecord.objects.get(run=run, key="ask/llm/1")
    # Both 429s were waited out inside the first attempt: none counted as a failure
    # (the step's policy allows two attempts: counted, they would have failed the run).
    assert call.attempt == 1
    assert call.meta["rate_limited"] == 2
    assert len(openai_server.chat_requests) == 3
    assert elapsed < 5


@pytest.mark.django_db
def test_a_429_past_the_patience_is_a_failed_attempt(queue_capture, openai_server, settings):
    settings.WORKFLOWS_RATE_LIMIT_PATIENCE_SECONDS = 0
    openai_server.script(
        [reply_error(429, "Rate limit reached", retry_after_ms=20), reply_text(ANSWER)]
    )
    run = workflow_start("test.agent", {"question": "What is 2 + 3?"})
    queue_capture.drain()
    run = WorkflowRun.objects.get(pk=run.pk)
    assert run.status == RunStatus.COMPLETED, run.error
    assert StepRecord.objects.get(run=run, key="ask/llm/1").attempt == 2


def test_the_budget_stops_the_call_that_would_overspend():
    budget_check(spent_microusd=3, budget_usd=Decimal("0.000004"), run_id="r")  # under it
    budget_check(spent_microusd=10**9, budget_usd=None, run_id="r")  # no budget
    for spent in (4, 5):  # at it, over it
        with pytest.raises(NonRetryableError, match=r"its budget is \$0.000004"):
            budget_check(spent_microusd=spent, budget_usd=Decimal("0.000004"), run_id="r")
