"""Fixtures shared by the whole suite, and the Hypothesis profiles."""

import os
from datetime import timedelta
from importlib import import_module

import pytest
from hypothesis import Phase
from hypothesis import settings as hypothesis_settings

from tests.support.cluster import TEST_WORKFLOW_MODULES
from workflows.engine import hooks, queue
from workflows.engine.circuits import circuits_forget
from workflows.engine.executor import run_execute

# Importing registers the test workflows in this process; qcluster subprocesses import
# them through WORKFLOWS_EXTRA_MODULES (see tests/support/cluster.py).
for module in TEST_WORKFLOW_MODULES:
    import_module(module)


# Hypothesis: a failure must be reported in seconds, not after minutes of shrinking (a
# failing example of the review fuzz once shrank for over 5 minutes). "ci" (CI=true, so
# scripts/test.sh under .ci/run) bounds the examples and each one's time, and reports the
# first failing example as found, unshrunk, with the blob to reproduce it
# (`@reproduce_failure`); "dev" (the default elsewhere) shrinks, one bug at a time;
# HYPOTHESIS_PROFILE=shrink shrinks everything Hypothesis finds, for a local hunt.
# A test's own @settings (max_examples, deadline) take precedence over the profile.
hypothesis_settings.register_profile(
    "ci",
    max_examples=25,
    deadline=timedelta(seconds=10),
    phases=[Phase.explicit, Phase.reuse, Phase.generate],
    report_multiple_bugs=False,
    print_blob=True,
)
hypothesis_settings.register_profile(
    "dev", max_examples=25, deadline=timedelta(seconds=10), report_multiple_bugs=False
)
hypothesis_settings.register_profile("shrink", report_multiple_bugs=True)
_ON_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
hypothesis_settings.load_profile(
    os.environ.get("HYPOTHESIS_PROFILE") or ("ci" if _ON_CI else "dev")
)


def pytest_configure(config: pytest.Config) -> None:
    # Under pytest-xdist the controller runs no test, but it imported the settings, which
    # put its metrics directory in the environment its workers inherit: without it, each
    # worker names its own after its queue name (polos_site/settings.py), so one
    # worker's counters never show in another's scrape.
    if getattr(config.option, "numprocesses", None) and not hasattr(config, "workerinput"):
        os.environ.pop("PROMETHEUS_MULTIPROC_DIR", None)


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


@pytest.fixture(autouse=True)
def fast_password_hashing(settings):
    """Django's own advice for test suites: a production hasher spends 0.4 s of CPU per
    password on purpose, and the suite makes and checks hundreds of them."""
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture(autouse=True)
def circuits_unknown():
    """Each test starts without this process's view of the circuits (a previous test's
    rows are gone with its database)."""
    circuits_forget()


@pytest.fixture
def hooks_registry(monkeypatch: pytest.MonkeyPatch) -> hooks.Hooks:
    """A copy of the hooks in use, in use for one test: what the test registers goes
    with it."""
    registry = hooks.registry.copy()
    monkeypatch.setattr(hooks, "registry", registry)
    return registry


@pytest.fixture
def queue_capture(monkeypatch: pytest.MonkeyPatch) -> QueueCapture:
    capture = QueueCapture()
    monkeypatch.setattr(queue, "_send", capture.sent.append)
    return capture


@pytest.fixture(scope="session")
def openai_server_session():
    from tests.support.openai_server import OpenAITestServer

    with OpenAITestServer(api_key="sk-test-not-a-real-key") as server:
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


@pytest.fixture(scope="session")
def stripe_server_session():
    from tests.support.stripe_server import StripeServer

    with StripeServer() as server:
        yield server


@pytest.fixture
def stripe_server(stripe_server_session, settings):
    """A Stripe-compatible server, with the service's `stripe` gateway pointed at it."""
    stripe_server_session.reset()
    settings.PAYMENT_GATEWAY = "stripe"
    settings.STRIPE_API_KEY = "sk_test_local"
    settings.STRIPE_API_BASE = stripe_server_session.base_url
    return stripe_server_session


@pytest.fixture(scope="session")
def smtp_server_session():
    from tests.support.smtp_server import SMTPTestServer

    server = SMTPTestServer().start()
    yield server
    server.stop()


@pytest.fixture
def smtp_server(smtp_server_session, settings):
    """A local SMTP server, with Django's SMTP backend pointed at it."""
    smtp_server_session.reset()
    settings.EMAIL_BACKEND = "orders.mail.SMTPEmailBackend"
    settings.EMAIL_HOST = "127.0.0.1"
    settings.EMAIL_PORT = smtp_server_session.port
    return smtp_server_session
