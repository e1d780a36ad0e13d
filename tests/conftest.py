"""Fixtures shared by the whole suite."""

from importlib import import_module

import pytest

from tests.support.cluster import TEST_WORKFLOW_MODULES
from workflows import queue
from workflows.executor import run_execute

# Importing registers the test workflows in this process; qcluster subprocesses import
# them through WORKFLOWS_EXTRA_MODULES (see tests/support/cluster.py).
for module in TEST_WORKFLOW_MODULES:
    import_module(module)


class QueueCapture:
    """Stands in for django-q2 where a test drives execution itself."""

    def __init__(self) -> None:
        self.sent: list[str] = []

    def drain(self, limit: int = 50) -> list[str]:
        """Execute queued segments (and those they queue) until none is left."""
        outcomes = []
        while self.sent and len(outcomes) < limit:
            outcomes.append(run_execute(self.sent.pop(0)))
        return outcomes


@pytest.fixture
def queue_capture(monkeypatch: pytest.MonkeyPatch) -> QueueCapture:
    capture = QueueCapture()
    monkeypatch.setattr(queue, "_send", capture.sent.append)
    return capture


@pytest.fixture(scope="session")
def openai_server_session():
    from tests.support.openai_server import OpenAITestServer

    with OpenAITestServer() as server:
        yield server


@pytest.fixture
def openai_server(openai_server_session, settings):
    """A scripted OpenAI-compatible server, with the service pointed at it."""
    openai_server_session.reset()
    settings.LLM_PROVIDER = "openai"
    settings.OPENAI_API_KEY = "sk-test-not-a-real-key"
    settings.OPENAI_BASE_URL = openai_server_session.base_url
    settings.OPENAI_MAX_RETRIES = 0
    return openai_server_session
