"""Payments as Stripe recommends for manual review: orders that go to review are held
(`capture_method=manual`), captured on approval, released on rejection or timeout.
Through the real `stripe` SDK against the local Stripe-compatible server."""

from datetime import timedelta
from decimal import Decimal

import pytest
import stripe
from django.core import mail
from django.core.management import call_command
from django.core.management.base import SystemCheckError
from django.utils import timezone

from orders.models import Order
from orders.payments import CaptureFailedError, SimulatedGateway, payment_key
from orders.services.reviews import review_decide
from workflows.engine.services import waits_expire
from workflows.models import StepRecord

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.usefixtures("reviewer_with_email"),  # production's reviewers: alerted
]


@pytest.fixture(autouse=True)
def parts(settings, stripe_server):
    settings.LLM_PROVIDER = "simulated"  # the model's part is tested in test_flow_openai
    return stripe_server


def placed(place_order, queue_capture, amount: str) -> Order:
    order = place_order(amount)
    queue_capture.drain()
    order.refresh_from_db()
    return order


def intent_of(stripe_server, order: Order) -> dict:
    [intent] = stripe_server.payment_intents.values()
    assert intent["id"] == order.charge_id
    return intent


def requests_to(stripe_server, suffix: str) -> list:
    return [r for r in stripe_server.requests if r.method == "POST" and r.path.endswith(suffix)]


def test_small_order_is_captured_at_once(stripe_server, place_order, queue_capture):
    order = placed(place_order, queue_capture, "250.00")
    intent = intent_of(stripe_server, order)
    assert (intent["capture_method"], intent["status"]) == ("automatic", "succeeded")
    assert order.status == "completed" and order.payment_status == "captured"
    assert len(mail.outbox) == 1


def test_hold_then_capture_on_approval(stripe_server, place_order, queue_capture, reviewer):
    order = placed(place_order, queue_capture, "1500.00")
    intent = intent_of(stripe_server, order)
    assert (intent["capture_method"], intent["status"]) == ("manual", "requires_capture")
    assert order.status == "awaiting_review" and order.payment_status == "authorized"
    assert [m.to for m in mail.outbox] == [[reviewer.email]]

    review_decide(order=order, approved=True, by=reviewer)
    assert queue_capture.drain() == ["completed"]
    order.refresh_from_db()
    intent = intent_of(stripe_server, order)
    assert (intent["status"], intent["amount_received"]) == ("succeeded", 150000)
    assert order.status == "completed" and order.payment_status == "captured"
    key = payment_key(operation="capture", order_pk=order.pk)
    assert [r.idempotency_key for r in requests_to(stripe_server, "/capture")] == [key]
    assert [m.to for m in mail.outbox] == [[reviewer.email], [order.customer_email]]
    assert stripe_server.refunds == {}


def test_hold_then_cancel_on_rejection(stripe_server, place_order, queue_capture, reviewer):
    order = placed(place_order, queue_capture, "1500.00")
    review_decide(order=order, approved=False, by=reviewer)
    queue_capture.drain()
    order.refresh_from_db()
    assert intent_of(stripe_server, order)["status"] == "canceled"
    assert order.status == "rejected" and order.payment_status == "canceled"
    assert stripe_server.refunds == {} and [m.to for m in mail.outbox] == [[reviewer.email]]
    assert StepRecord.objects.filter(run=order.run, key="cancel").exists()


def test_hold_then_cancel_on_review_timeout(stripe_server, place_order, queue_capture):
    order = placed(place_order, queue_capture, "1500.00")
    waits_expire(now=timezone.now() + timedelta(days=1, seconds=1))
    queue_capture.drain()
    order.refresh_from_db()
    assert intent_of(stripe_server, order)["status"] == "canceled"
    assert order.status == "rejected" and order.failure_reason == "review_timeout"
    assert order.payment_status == "canceled" and stripe_server.refunds == {}


def test_expired_authorization_fails_the_order_on_approval(
    stripe_server, place_order, queue_capture, reviewer
):
    order = placed(place_order, queue_capture, "1500.00")
    stripe_server.expire_authorization(order.charge_id)
    review_decide(order=order, approved=True, by=reviewer)
    queue_capture.drain()
    order.refresh_from_db()
    assert order.status == "failed" and order.payment_status == "failed"
    assert order.failure_reason.startswith("capture_failed: ")
    assert "expired" in order.failure_reason
    assert [m.to for m in mail.outbox] == [[reviewer.email]] and stripe_server.refunds == {}
    assert order.run.status == "completed"  # the workflow settled it: nothing to retry


def test_a_run_suspended_before_holds_is_refunded_on_rejection(
    stripe_server, place_order, queue_capture, reviewer
):
    """A live run from before this change: its charge was captured at once and its
    recorded snapshots know no payment status. Rejection refunds it, under `refund`."""
    order = placed(place_order, queue_capture, "1500.00")
    client = stripe.StripeClient("sk_test_local", base_addresses={"api": stripe_server.base_url})
    client.v1.payment_intents.capture(order.charge_id)  # as the old code charged it
    Order.objects.filter(pk=order.pk).update(payment_status="captured")  # as migrated
    for step in StepRecord.objects.filter(run=order.run, key__in=["check_order", "charge"]):
        step.output.pop("payment_status", None)
        step.save(update_fields=["output"])

    review_decide(order=order, approved=False, by=reviewer)
    queue_capture.drain()
    order.refresh_from_db()
    [refund] = stripe_server.refunds_for(order.charge_id)
    assert order.status == "rejected" and order.payment_status == "refunded"
    assert order.refund_id == refund["id"] and refund["amount"] == 150000
    assert StepRecord.objects.filter(run=order.run, key="refund").exists()
    assert not StepRecord.objects.filter(run=order.run, key="cancel").exists()


def test_a_review_longer_than_an_authorization_is_refused(settings):
    settings.PAYMENT_AUTHORIZATION_DAYS = 7
    settings.FRAUD_REVIEW_TIMEOUT = 7 * 86_400
    call_command("check")
    settings.FRAUD_REVIEW_TIMEOUT = 7 * 86_400 + 1
    with pytest.raises(SystemCheckError, match=r"orders\.E002"):
        call_command("check")


def test_the_simulated_gateway_holds_and_lets_old_holds_lapse(settings):
    settings.PAYMENT_AUTHORIZATION_DAYS = 7
    gateway = SimulatedGateway()
    held = gateway.charge(
        customer_id="cus_good",
        amount=Decimal("1500.00"),
        currency="usd",
        idempotency_key="k",
        metadata={},
        capture=False,
    )
    assert held.status == "requires_capture" and not held.captured
    now = timezone.now()
    captured = gateway.capture(
        charge_id=held.charge_id,
        amount=held.amount,
        currency="usd",
        idempotency_key="c",
        authorized_at=now - timedelta(days=6),
    )
    assert captured.captured
    with pytest.raises(CaptureFailedError, match="expired"):
        gateway.capture(
            charge_id=held.charge_id,
            amount=held.amount,
            currency="usd",
            idempotency_key="c2",
            authorized_at=now - timedelta(days=8),
        )
