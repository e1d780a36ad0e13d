"""The confirmation email through a real SMTP server that fails: a transient refusal is
retried and the customer gets one message; a server that stays down fails the run, and
`retry` sends the confirmation once it is back."""

import pytest

from tests.support.smtp_server import PERMANENT_FAILURE
from workflows import run_retry
from workflows.models import RunStatus, StepRecord

pytestmark = pytest.mark.django_db(transaction=True)

EMAIL = "ada@example.com"


@pytest.fixture(autouse=True)
def offline(settings):
    settings.LLM_PROVIDER = "simulated"
    settings.PAYMENT_GATEWAY = "simulated"


def test_a_refused_message_is_retried_and_sent_once(smtp_server, place_order, queue_capture):
    smtp_server.fail_next(1)  # 451: try again later
    order = place_order("250.00")
    assert queue_capture.drain() == ["completed"]
    order.refresh_from_db()
    assert order.status == "completed" and order.email_sent
    assert smtp_server.refused == 1 and len(smtp_server.messages_to(EMAIL)) == 1
    # The agent's tool retried it: its call succeeded and the fallback did not run.
    [tool] = StepRecord.objects.filter(run=order.run, key__endswith="/send_confirmation_email")
    assert "error" not in tool.output
    assert not StepRecord.objects.filter(run=order.run, key="confirm").exists()


def test_a_mail_server_down_fails_the_run_and_retry_sends_once(
    smtp_server, place_order, queue_capture
):
    smtp_server.fail_next(100, reply=PERMANENT_FAILURE)
    order = place_order("250.00")
    assert queue_capture.drain() == ["failed"]
    order.refresh_from_db()
    run = order.run
    assert run.status == RunStatus.FAILED and "SMTPDataError" in run.error
    assert smtp_server.messages_to(EMAIL) == [] and not order.email_sent
    refused = smtp_server.refused
    assert refused >= 2  # the tool's attempts, then the workflow's own

    smtp_server.fail_next(0)  # the mail server is back
    run_retry(run.id)
    assert queue_capture.drain() == ["completed"]
    order.refresh_from_db()
    assert order.status == "completed" and order.email_sent
    assert len(smtp_server.messages_to(EMAIL)) == 1 and smtp_server.refused == refused
