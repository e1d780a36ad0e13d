"""Stripe faults at the order level: lost answers, 500s (stored under their key, as
Stripe does), and outages, through the real `stripe` SDK against the local
Stripe-compatible server and the scripted OpenAI-compatible model.

Whoever charges (the agent's tool, a second tool call, the workflow's fallback), one
order's charge is one operation: each case ends with exactly one PaymentIntent (one
refund) for the order, and the order knows it.
"""

import json
from datetime import timedelta
from decimal import Decimal

import pytest
import stripe
from django.core import mail
from django.utils import timezone

from orders.models import Order
from orders.payments import StripeGateway, TransientPaymentError, payment_key
from orders.services.reviews import review_decide
from tests.support.cluster import QCluster, wait_until
from tests.support.openai_server import reply_text, reply_tool_calls
from workflows.engine.retry import RetryPolicy
from workflows.engine.services import retry_waits_wake
from workflows.models import RunStatus

pytestmark = pytest.mark.django_db(transaction=True)

EMAIL = "ada@example.com"


@pytest.fixture
def fast_retries(monkeypatch):
    """The SDK's, the tool's and the workflow's retries, without their real waits."""
    monkeypatch.setattr(stripe.HTTPClient, "INITIAL_DELAY", 0.01)
    monkeypatch.setattr(stripe.HTTPClient, "MAX_DELAY", 0.01)
    monkeypatch.setattr(RetryPolicy, "delay", lambda self, attempt, exc=None: 0.01)


@pytest.fixture
def model(openai_server, stripe_server):
    return openai_server


def charge(amount: str):
    return reply_tool_calls(
        [("charge_stripe", {"customer_id": "cus_good", "amount": amount, "currency": "usd"})]
    )


def send_email(order_id: str, amount: str):
    return reply_tool_calls(
        [("send_confirmation_email", {"email": EMAIL, "order_id": order_id, "amount": amount})]
    )


def answer(action: str, requested: str | None = None):
    details = {"charge_id": None, "amount": None, "email_sent_to": None, "message_id": None}
    return reply_text(
        json.dumps(
            {
                "action": action,
                "action_details": details,
                "action_requested": requested,
                "status_message": f"did {action}",
            }
        )
    )


def ending_outage(stripe_server, reply):
    """The model's next turn, by which time Stripe is reachable again."""

    def respond(request):
        stripe_server.end_outage()
        return reply

    return respond


def tool_results(openai_server) -> list[dict]:
    seen: dict[str, dict] = {}
    for request in openai_server.chat_requests:
        for message in request.json["messages"]:
            if message["role"] == "tool":
                seen[message["tool_call_id"]] = json.loads(message["content"])
    return list(seen.values())


def run_order(place_order, queue_capture, amount: str) -> Order:
    order = place_order(amount)
    queue_capture.drain()
    order.refresh_from_db()
    return order


def charged_once(order: Order, stripe_server) -> dict:
    """The order's only PaymentIntent at Stripe, which the order records."""
    intents = [
        pi
        for pi in stripe_server.payment_intents.values()
        if pi["metadata"].get("order_id") == order.order_id
    ]
    assert [pi["status"] for pi in intents] == ["succeeded"], intents
    [intent] = intents
    assert intent["id"] == order.charge_id
    return intent


def assert_completed(order: Order) -> None:
    order.run.refresh_from_db()
    assert order.run.status == RunStatus.COMPLETED, order.run.error
    assert order.status == "completed"
    assert [m.to for m in mail.outbox] == [[EMAIL]]


def test_lost_answer_then_outage_charges_once(
    model, stripe_server, place_order, queue_capture, fast_retries
):
    """The reproduction: the PaymentIntent is created, its answer lost, and Stripe is
    unreachable until the tool call has failed. The workflow's fallback must find that
    PaymentIntent, not create a second one."""
    stripe_server.fail_after_create_next(1, then_outage=None)
    model.script([charge("250.00"), ending_outage(stripe_server, answer("charge"))])
    order = run_order(place_order, queue_capture, "250.00")

    assert "Stripe unavailable" in tool_results(model)[0]["error"]
    charged_once(order, stripe_server)
    assert_completed(order)


def test_500_after_create_then_success_charges_once(
    model, stripe_server, place_order, queue_capture, fast_retries
):
    """Stripe creates the PaymentIntent but answers 500, and stores that 500 under the
    key: a retry with the key only replays it. The tool's next attempt recovers the
    PaymentIntent, and the model sees the real charge."""
    stripe_server.fail_after_create_next(1, status=500)
    model.script([charge("250.00"), send_email("ord-250-00", "250.00"), answer("email")])
    order = run_order(place_order, queue_capture, "250.00")

    charged_once(order, stripe_server)
    assert tool_results(model)[0]["charge_id"] == order.charge_id
    assert_completed(order)


def test_outage_window_after_a_lost_answer_charges_once(
    model, stripe_server, place_order, queue_capture, monkeypatch
):
    """Real retry timings (the tool's, the workflow's): a lost answer, then a 2.5 s
    outage that outlasts the tool's attempts; the fallback's retries ride it out."""
    monkeypatch.setattr(stripe.HTTPClient, "INITIAL_DELAY", 0.01)
    monkeypatch.setattr(stripe.HTTPClient, "MAX_DELAY", 0.01)
    stripe_server.fail_after_create_next(1, then_outage=2.5)
    model.script([charge("250.00"), answer("charge")])
    order = run_order(place_order, queue_capture, "250.00")

    def settled() -> bool:
        # On a loaded machine the worker's own attempts can end before the outage does,
        # and the step then waits durably for Stripe: wake it as a worker's tick would.
        retry_waits_wake(now=timezone.now() + timedelta(seconds=60))
        queue_capture.drain()
        order.refresh_from_db()
        return order.status == "completed"

    wait_until(settled, timeout=30, interval=0.2)
    charged_once(order, stripe_server)
    assert_completed(order)
    assert any(r.status == 0 for r in stripe_server.requests[1:])  # the outage was seen


def test_second_charge_tool_call_after_a_lost_answer_charges_once(
    model, stripe_server, place_order, queue_capture, fast_retries
):
    """The model calls the tool again after its first call failed: a new tool call,
    the same order, the same charge."""
    stripe_server.fail_after_create_next(1, then_outage=None)
    model.script(
        [
            charge("250.00"),
            ending_outage(stripe_server, charge("250.00")),
            send_email("ord-250-00", "250.00"),
            answer("email"),
        ]
    )
    order = run_order(place_order, queue_capture, "250.00")

    first, second = tool_results(model)[:2]
    assert "error" in first and second["charge_id"] == order.charge_id
    charged_once(order, stripe_server)
    assert_completed(order)


def test_cancel_after_a_lost_answer_cancels_once(
    model, stripe_server, place_order, queue_capture, reviewer, fast_retries
):
    """The rejected order's hold is cancelled, but Stripe's answer is a 500 stored under
    the key. The cancel step finds the hold cancelled instead of failing the run."""
    model.script([charge("1500.00"), answer("charge", "fraud_review")])
    order = run_order(place_order, queue_capture, "1500.00")
    assert order.status == "awaiting_review"

    stripe_server.fail_after_create_next(1, status=500)
    review_decide(order=order, approved=False, by=reviewer)
    queue_capture.drain()
    order.refresh_from_db()

    [intent] = stripe_server.payment_intents.values()
    assert (intent["id"], intent["status"]) == (order.charge_id, "canceled")
    cancels = [r for r in stripe_server.requests if r.path.endswith("/cancel")]
    key = payment_key(operation="cancel", order_pk=order.pk)
    assert [r.idempotency_key for r in cancels] == [key]
    assert order.status == "rejected" and order.payment_status == "canceled"
    assert stripe_server.refunds == {} and mail.outbox == []


def test_stored_500_does_not_wedge_the_charge(
    model, stripe_server, place_order, queue_capture, fast_retries
):
    """The model does not charge; the fallback's first create fails inside Stripe and
    the 500 is stored under the order's key. Once Stripe replays it and the lookup
    shows no PaymentIntent, the next key goes through."""
    stripe_server.fail_stored_next(1)
    model.script([answer("charge")])
    order = run_order(place_order, queue_capture, "250.00")

    charged_once(order, stripe_server)
    assert_completed(order)
    key = payment_key(operation="charge", order_pk=order.pk)
    creates = [
        (r.idempotency_key, r.status, r.replayed)
        for r in stripe_server.requests
        if r.method == "POST" and r.path == "/v1/payment_intents"
    ]
    assert creates == [(key, 500, False), (key, 500, True), (f"{key}:2", 200, False)]


@pytest.mark.qcluster
def test_qcluster_lost_answer_then_outage_charges_once(
    stripe_server, smtp_server, place_order, settings
):
    """A real cluster with the simulated agent: the create's answer is lost, then
    Stripe is down for 3 s. One PaymentIntent, and the order completes."""
    settings.LLM_PROVIDER = "simulated"
    env = {
        "LLM_PROVIDER": "simulated",
        "PAYMENT_GATEWAY": "stripe",
        "STRIPE_API_KEY": "sk_test_local",
        "STRIPE_API_BASE": stripe_server.base_url,
        "STRIPE_MAX_NETWORK_RETRIES": "0",
        "EMAIL_HOST": "127.0.0.1",
        "EMAIL_PORT": str(smtp_server.port),
    }
    stripe_server.fail_after_create_next(1, then_outage=3.0)
    with QCluster(env={**env, "LOG_LEVEL": "INFO"}) as cluster:
        order = place_order("250.00")
        try:
            wait_until(
                lambda: Order.objects.filter(
                    pk=order.pk, run__status__in=["completed", "failed"]
                ).exists(),
                timeout=60,
            )
        finally:
            print(cluster.output()[-5000:])
    order.refresh_from_db()
    assert order.status == "completed", (order.run.status, order.run.error)
    assert [r.status for r in stripe_server.requests].count(0) >= 2  # lost, then down
    charged_once(order, stripe_server)
    assert len(smtp_server.messages) == 1


def test_capture_and_cancel_after_a_lost_answer_are_done_once(stripe_server, fast_retries):
    """An authorization captured (or released) by an attempt whose answer was a 500 is
    found by retrieving the intent: the retry sends no second capture."""
    gateway = StripeGateway()
    client = gateway.client

    def hold(key: str) -> str:
        return client.v1.payment_intents.create(
            params={
                "amount": 5000,
                "currency": "usd",
                "customer": "cus_good",
                "payment_method": "pm_card_visa",
                "confirm": True,
                "capture_method": "manual",
            },
            options={"idempotency_key": key},
        ).id

    held, released = hold("hold-1"), hold("hold-2")
    for intent_id in (held, released):
        stripe_server.fail_after_create_next(1, status=500)
        with pytest.raises(TransientPaymentError):
            if intent_id == held:
                gateway.capture(
                    charge_id=held, amount=Decimal("50.00"), currency="usd", idempotency_key="c"
                )
            else:
                gateway.cancel(charge_id=released, idempotency_key="x")

    captured = gateway.capture(
        charge_id=held, amount=Decimal("50.00"), currency="usd", idempotency_key="c"
    )
    gateway.cancel(charge_id=released, idempotency_key="x")
    assert (captured.charge_id, captured.amount) == (held, Decimal("50.00"))
    assert stripe_server.payment_intents[held]["status"] == "succeeded"
    assert stripe_server.payment_intents[released]["status"] == "canceled"
    actions = [r.path.rsplit("/", 1)[-1] for r in stripe_server.requests if r.method == "POST"]
    assert actions == ["payment_intents", "payment_intents", "capture", "cancel"]
