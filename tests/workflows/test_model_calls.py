"""Model calls as the real API takes them: what the agent sends back after a refused
tool call or an empty answer, and replies slower than OPENAI_TIMEOUT."""

import json

import pytest

from tests.support.openai_server import ChatReply, reply_text, reply_tool_calls
from workflows import workflow_start
from workflows.models import RunStatus, StepRecord, WorkflowRun

pytestmark = pytest.mark.django_db(transaction=True)

ANSWER = json.dumps({"total": 5, "note": "added"})


def run_agent(queue_capture) -> WorkflowRun:
    run = workflow_start("test.agent", {"question": "What is 2 + 3?"})
    queue_capture.drain()
    run.refresh_from_db()
    return run


def test_an_empty_answer_after_a_refused_tool_call_is_sent_back_as_the_api_accepts(
    queue_capture, openai_server
):
    openai_server.script(
        [
            reply_tool_calls([("launch_rockets", {})]),  # refused: no such tool
            ChatReply(content=None),  # the model answers nothing (or refuses)
            reply_text(ANSWER),  # after the corrective turn
        ]
    )
    run = run_agent(queue_capture)

    assert run.status == RunStatus.COMPLETED, run.error
    assert openai_server.errors == []
    last = openai_server.chat_requests[-1].json["messages"]
    empty_turn = last[-2]
    assert empty_turn["role"] == "assistant" and empty_turn["content"] == ""
    assert "tool_calls" not in empty_turn
    assert last[-1]["role"] == "user" and "does not match" in last[-1]["content"]


def test_a_reply_slower_than_the_timeout_is_retried_as_transient(
    queue_capture, openai_server, settings
):
    settings.OPENAI_TIMEOUT = 0.5
    openai_server.script([reply_text(ANSWER, delay=2.0), reply_text(ANSWER)])

    run = run_agent(queue_capture)

    assert run.status == RunStatus.COMPLETED, run.error
    step = StepRecord.objects.get(run=run, key="ask/llm/1")
    assert step.attempt == 2  # the slow reply was abandoned, the step retried
    assert len(openai_server.chat_requests) == 2


def test_replies_slower_than_the_timeout_fail_the_run_as_a_timeout(
    queue_capture, openai_server, settings
):
    settings.OPENAI_TIMEOUT = 0.5
    openai_server.script([reply_text(ANSWER, delay=2.0)] * 2)  # test.calculator: 2 attempts

    run = run_agent(queue_capture)

    assert run.status == RunStatus.FAILED
    step = StepRecord.objects.get(run=run, key="ask/llm/1")
    assert step.status == "failed" and step.attempt == 2
    assert "TransientModelError: APITimeoutError" in step.error
