"""One model client per provider configuration per event loop: every agent invocation
on a worker's loop shares it (kept-alive connections, no new SSL context and pool per
call), and it is closed when the loop's owner stops; inline, when its loop ends."""

import json

import openai
import pytest

from tests.support.cluster import wait_until
from tests.support.openai_server import reply_text, reply_tool_calls
from workflows import workflow_start
from workflows.models import RunStatus, WorkflowRun
from workflows.worker.runtime import WorkerRuntime

pytestmark = pytest.mark.django_db(transaction=True)

ANSWER = json.dumps({"total": 5, "note": "added"})
RUNS = 3


def completed(run: WorkflowRun) -> bool:
    return WorkflowRun.objects.get(pk=run.id).status == RunStatus.COMPLETED


@pytest.fixture
def clients_made(monkeypatch: pytest.MonkeyPatch) -> list[openai.AsyncOpenAI]:
    """Every `AsyncOpenAI` the providers construct, in order."""
    made: list[openai.AsyncOpenAI] = []

    class CountedAsyncOpenAI(openai.AsyncOpenAI):
        def __init__(self, **kwargs: object) -> None:
            super().__init__(**kwargs)  # type: ignore[arg-type]
            made.append(self)

    monkeypatch.setattr(openai, "AsyncOpenAI", CountedAsyncOpenAI)
    return made


def test_agent_invocations_on_one_loop_share_one_client_closed_on_stop(
    queue_capture, openai_server, clients_made
):
    runtime = WorkerRuntime(concurrency=2, sync_threads=1)
    try:
        for _ in range(RUNS):  # one at a time: the server's script is one conversation
            openai_server.script(
                [reply_tool_calls([("add", {"a": 2, "b": 3})]), reply_text(ANSWER)]
            )
            run = workflow_start("test.agent", {"question": "What is 2 + 3?"})
            queue_capture.sent.clear()
            assert runtime.submit(run.id, wait_seconds=5)
            wait_until(lambda run=run: completed(run), timeout=20)
        assert len(openai_server.chat_requests) == 2 * RUNS
        assert len(clients_made) == 1
        assert not clients_made[0].is_closed()  # kept for the next call
    finally:
        runtime.stop(drain_seconds=5)
    assert clients_made[0].is_closed()

    # Inline, each `run_execute` has a loop of its own: its client goes with it.
    openai_server.script([reply_tool_calls([("add", {"a": 2, "b": 3})]), reply_text(ANSWER)])
    run = workflow_start("test.agent", {"question": "What is 2 + 3?"})
    queue_capture.drain()
    assert completed(run)
    assert len(clients_made) == 2
    assert clients_made[1].is_closed()
