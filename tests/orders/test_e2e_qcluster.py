"""Every path of the order flow end to end: a real `qcluster` subprocess, the real
`stripe` SDK against a local Stripe-compatible server, Django's SMTP backend against a
local SMTP server, and the simulated order agent."""

from datetime import timedelta

import pytest
from django.db.models import Q
from django.utils import timezone

from orders.models import Order
from orders.payments import payment_key
from orders.services.reviews import review_decide
from tests.support.cluster import QCluster, wait_until
from workflows.engine.services import waits_expire

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.qcluster,
    pytest.mark.usefixtures("reviewer_with_email"),  # production's reviewers: alerted
    pytest.mark.db_engine,
    pytest.mark.broker,
]


@pytest.fixture
def cluster(stripe_server, smtp_server, settings):
    settings.LLM_PROVIDER = "simulated"
    env = {
        "LLM_PROVIDER": "simulated",
        "PAYMENT_GATEWAY": "stripe",
        "STRIPE_API_KEY": "sk_test_local",
        "STRIPE_API_BASE": stripe_server.base_url,
        "EMAIL_HOST": "127.0.0.1",
        "EMAIL_PORT": str(smtp_server.port),
    }
    with QCluster(env={**env, "LOG_LEVEL": "INFO"}) as running:
        yield running
    print(running.output()[-5000:])


def settled(order: Order, status: str, timeout: float = 30) -> Order:
    """Wait for the order to reach `status` with its run at rest (done or suspended)."""
    try:
        wait_until(
            lambda: (
                Order.objects.filter(pk=order.pk)
                .filter(
                    Q(status=status, run__status__in=["completed", "suspended"])
                    | Q(run__status="failed")
                )
                .exists()
            ),
            timeout=timeout,
        )
    finally:
        order.refresh_from_db()
        order.run.refresh_from_db()
    assert order.status == status, (order.status, order.run.status, order.run.error)
    return order


def recipients(smtp_server) -> list[str]:
    return [m["To"] for m in smtp_server.messages]


def charge_requests(stripe_server):
    return [
        r for r in stripe_server.requests if r.method == "POST" and r.path == "/v1/payment_intents"
    ]


def test_small_order_one_charge_one_email(cluster, stripe_server, smtp_server, place_order):
    order = settled(place_order("250.00", email="ada@example.com"), "completed")

    [intent] = stripe_server.successful_charges()
    assert intent["amount"] == 25000 and intent["currency"] == "usd"
    assert intent["customer"] == "cus_good" and intent["metadata"]["order_id"] == order.order_id
    assert intent["id"] == order.charge_id
    [request] = charge_requests(stripe_server)
    assert request.params["off_session"] == "true" and request.params["confirm"] == "true"
    assert request.idempotency_key == payment_key(operation="charge", order_pk=order.pk)

    [message] = smtp_server.messages
    assert message["To"] == "ada@example.com"
    assert message["Subject"] == f"Your order {order.order_id} is confirmed"
    body = message.get_body(preferencelist=("plain",)).get_content()
    assert "250.00 USD" in body and order.charge_id in body
    assert message["Message-ID"].strip() == order.emails.get().message_id


def test_threshold_exactly_needs_no_review(cluster, stripe_server, smtp_server, place_order):
    order = settled(place_order("1000.00"), "completed")
    assert not order.fraud_review_required
    assert [c["amount"] for c in stripe_server.successful_charges()] == [100000]
    assert len(smtp_server.messages) == 1


def test_large_order_approved(cluster, stripe_server, smtp_server, place_order, reviewer):
    order = settled(place_order("1000.01"), "awaiting_review")
    [held] = stripe_server.payment_intents.values()
    assert (held["status"], held["amount_capturable"]) == ("requires_capture", 100001)
    assert stripe_server.successful_charges() == []
    assert recipients(smtp_server) == [reviewer.email]  # the alert; the customer waits

    review_decide(order=order, approved=True, by=reviewer)
    order = settled(order, "completed")
    assert order.fraud_approved is True and order.payment_status == "captured"
    assert [c["amount"] for c in stripe_server.successful_charges()] == [100001]
    assert recipients(smtp_server) == [reviewer.email, order.customer_email]
    assert order.email_sent and stripe_server.refunds == {}


def test_large_order_rejected_is_released(
    cluster, stripe_server, smtp_server, place_order, reviewer
):
    order = settled(place_order("2500.00"), "awaiting_review")
    review_decide(order=order, approved=False, by=reviewer, note="stolen card")
    order = settled(order, "rejected")
    assert order.payment_status == "canceled" and stripe_server.refunds == {}
    assert stripe_server.payment_intents[order.charge_id]["status"] == "canceled"
    cancel_request = next(
        r for r in stripe_server.requests if r.method == "POST" and r.path.endswith("/cancel")
    )
    assert cancel_request.idempotency_key == payment_key(operation="cancel", order_pk=order.pk)
    assert recipients(smtp_server) == [reviewer.email] and not order.email_sent


def test_review_timeout_releases_the_hold(
    cluster, stripe_server, smtp_server, place_order, reviewer
):
    order = settled(place_order("3000.00"), "awaiting_review")
    waits_expire(now=timezone.now() + timedelta(days=1, minutes=1))
    order = settled(order, "rejected")
    assert order.failure_reason == "review_timeout"
    assert order.payment_status == "canceled" and stripe_server.refunds == {}
    assert recipients(smtp_server) == [reviewer.email] and not order.email_sent


def test_declined_card_fails_without_email(cluster, stripe_server, smtp_server, place_order):
    order = settled(place_order("80.00", customer_id="cus_declined"), "failed")
    assert "insufficient_funds" in order.failure_reason
    assert stripe_server.successful_charges() == [] and smtp_server.messages == []
