"""Every path of the order flow, in-process, with the simulated model and gateway."""

from datetime import timedelta

import pytest
from django.core import mail
from django.utils import timezone

from orders.errors import OrderActionRefusedError
from orders.models import FraudReview, Order, ReviewState
from orders.services.reviews import ReviewError, review_decide
from workflows.engine.services import waits_expire
from workflows.models import RunStatus, StepRecord

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.usefixtures("reviewer_with_email"),  # production's reviewers: alerted
]


@pytest.fixture(autouse=True)
def simulated(settings):
    settings.LLM_PROVIDER = "simulated"
    settings.PAYMENT_GATEWAY = "simulated"


def reload(order: Order) -> Order:
    order.refresh_from_db()
    order.run.refresh_from_db()
    return order


def test_small_order_is_charged_and_confirmed(queue_capture, place_order):
    order = place_order("250.00")
    assert queue_capture.drain() == ["completed"]
    order = reload(order)
    assert order.status == "completed" and order.charge_id.startswith("pi_sim")
    assert order.run.output["email_sent"] is True
    [message] = mail.outbox
    assert message.to == ["ada@example.com"]
    assert "250.00 USD" in message.body and order.charge_id in message.body
    keys = list(StepRecord.objects.filter(run=order.run).values_list("key", flat=True))
    assert keys[:6] == [
        "register_order",
        "start_order/llm/1",
        "start_order/tool/1/charge_stripe",
        "start_order/llm/2",
        "start_order/tool/2/send_confirmation_email",
        "start_order/llm/3",
    ]
    assert_the_agent_confirmed(order, "start_order")


def assert_the_agent_confirmed(order: Order, agent_key: str) -> None:
    """The agent's own email tool call succeeded, so the workflow's fallback did not run."""
    [email] = StepRecord.objects.filter(
        run=order.run,
        key__startswith=f"{agent_key}/tool/",
        key__endswith="/send_confirmation_email",
    )
    assert "error" not in email.output and email.output["output"]["sent"] is True
    assert not StepRecord.objects.filter(run=order.run, key="confirm").exists()


def test_the_workflow_confirms_when_the_email_tool_fails(queue_capture, place_order, monkeypatch):
    def refuse(**kwargs):
        raise RuntimeError("the mail relay is down")

    monkeypatch.setattr("orders.agents.order_confirm", refuse)  # the tool's, not the fallback's
    order = place_order("250.00")
    assert queue_capture.drain() == ["completed"]
    order = reload(order)
    assert order.status == "completed" and order.email_sent
    [email] = StepRecord.objects.filter(run=order.run, key__endswith="/send_confirmation_email")
    assert "the mail relay is down" in email.output["error"]
    assert StepRecord.objects.get(run=order.run, key="confirm").status == "completed"
    assert len(mail.outbox) == 1


def test_the_workflow_confirms_an_approved_order_when_the_email_tool_fails(
    queue_capture, place_order, reviewer, monkeypatch
):
    """The reviewers' alert went out for this order: it is no confirmation, so the
    fallback still sends one."""
    order = place_order("2500.00")
    assert queue_capture.drain() == ["suspended"]
    assert [m.to for m in mail.outbox] == [[reviewer.email]] and not reload(order).email_sent

    def refuse(**kwargs):
        raise OrderActionRefusedError("Refused: amount 15.00 is not the order's amount 2500.00.")

    monkeypatch.setattr("orders.agents.order_confirm", refuse)  # the tool's, not the fallback's
    review_decide(order=order, approved=True, by=reviewer)
    assert queue_capture.drain() == ["completed"]
    order = reload(order)
    assert order.status == "completed" and order.email_sent
    assert [m.to for m in mail.outbox] == [[reviewer.email], ["ada@example.com"]]
    assert StepRecord.objects.get(run=order.run, key="confirm").status == "completed"


def test_exactly_the_threshold_needs_no_review(queue_capture, place_order):
    order = reload(place_order("1000.00"))
    queue_capture.drain()
    order = reload(order)
    assert order.status == "completed" and not order.fraud_review_required
    assert len(mail.outbox) == 1


def test_above_threshold_waits_then_approval_confirms(queue_capture, place_order, reviewer):
    order = place_order("1000.01")
    assert queue_capture.drain() == ["suspended"]
    order = reload(order)
    assert order.status == "awaiting_review"
    assert [m.to for m in mail.outbox] == [[reviewer.email]]  # the customer is not told yet
    review = FraudReview.objects.get(run=order.run)
    assert review.data["amount"] == "1000.01" and review.data["charge_id"] == order.charge_id

    review_decide(order=order, approved=True, by=reviewer, note="known customer")
    assert queue_capture.drain() == ["completed"]
    order = reload(order)
    assert order.status == "completed" and order.fraud_approved is True
    assert_the_agent_confirmed(order, "send_confirmation")
    assert [m.to for m in mail.outbox] == [[reviewer.email], ["ada@example.com"]]
    assert order.payment_status == "captured" and order.refund_id == ""
    review.refresh_from_db()
    assert review.state == ReviewState.APPROVED and review.note == "known customer"


def test_rejection_releases_the_hold_and_sends_nothing(queue_capture, place_order, reviewer):
    order = place_order("2500.00")
    queue_capture.drain()
    review_decide(order=order, approved=False, by=reviewer)
    queue_capture.drain()
    order = reload(order)
    assert order.status == "rejected" and order.payment_status == "canceled"
    assert order.refund_id == ""  # a hold is cancelled, never refunded
    assert order.failure_reason == "review_rejected"
    assert [m.to for m in mail.outbox] == [[reviewer.email]]
    with pytest.raises(ReviewError, match="already decided"):
        review_decide(order=order, approved=True, by=reviewer)


def test_review_timeout_releases_the_hold(queue_capture, place_order, reviewer):
    order = place_order("5000.00")
    queue_capture.drain()
    waits_expire(now=timezone.now() + timedelta(days=1, seconds=1))
    queue_capture.drain()
    order = reload(order)
    assert order.status == "rejected" and order.failure_reason == "review_timeout"
    assert order.payment_status == "canceled" and order.refund_id == ""
    assert [m.to for m in mail.outbox] == [[reviewer.email]] and not order.email_sent


def test_decline_fails_the_order_without_email(queue_capture, place_order):
    order = place_order("42.13")
    queue_capture.drain()
    order = reload(order)
    assert order.run.status == RunStatus.COMPLETED
    assert order.status == "failed" and order.charge_id == ""
    assert "insufficient_funds" in order.failure_reason and mail.outbox == []


def test_run_started_outside_the_api_creates_its_order(queue_capture):
    from workflows import workflow_start

    payload = {
        "order_id": "from-form-1",
        "customer_id": "cus_good",
        "customer_email": "bo@example.com",
        "amount": "99.50",
    }
    run = workflow_start("order_processing", payload)
    assert queue_capture.drain() == ["completed"]
    order = Order.objects.get(order_id="from-form-1")
    assert order.run_id == run.id and order.status == "completed"

    # The same order id in another run is refused rather than charged twice.
    second = workflow_start("order_processing", payload)
    assert queue_capture.drain() == ["failed"]
    second.refresh_from_db()
    assert "already exists and belongs to run" in second.error
    assert len(mail.outbox) == 1
