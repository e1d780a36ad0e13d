"""What one charge costs at Stripe and in the database on the real path (the official
`stripe` and `openai` SDKs against the local servers), counted, not timed: a first
attempt is one PaymentIntent request, with Stripe's risk evaluation in its answer; only
an attempt after one whose outcome is unknown looks for what that one created."""

import pytest
import stripe
from django.db import connection
from django.test.utils import CaptureQueriesContext

from orders.models import Order
from orders.payments import payment_gateway, payment_key
from orders.services.payments import order_charge
from tests.orders.test_flow_openai import answer, charge, send_email

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.usefixtures("reviewer_with_email"),
]

# Statements on the orders' own tables for one small order, from the agent's first
# model call to the run's end: the charge (its attempt mark, the payment's move with
# the risk, the cancel check), the confirmation (claim, record) and the snapshots.
# Today's count; a step that reads the same row twice again pushes it over.
ORDER_TABLE_STATEMENTS = 14


def payment_intent_requests(stripe_server) -> list[tuple[str, str]]:
    return [(r.method, r.path) for r in stripe_server.requests if r.path.startswith("/v1/payment_")]


def test_a_first_charge_is_one_payment_intent_request(
    openai_server, stripe_server, place_order, queue_capture
):
    stripe_server.risk_level, stripe_server.risk_score = "elevated", 61
    openai_server.script([charge("250.00"), send_email("ord-250-00", "250.00"), answer("email")])
    order = place_order("250.00")
    with CaptureQueriesContext(connection) as queries:
        queue_capture.drain()
    order.refresh_from_db()

    assert order.status == "completed" and order.charge_id
    # The customer's default card, then the create: no lookup, no second read for risk.
    assert [(r.method, r.path) for r in stripe_server.requests] == [
        ("GET", "/v1/customers/cus_good"),
        ("POST", "/v1/payment_intents"),
    ]
    [create] = [r for r in stripe_server.requests if r.method == "POST"]
    assert create.params["expand"] == ["latest_charge"] and create.status == 200
    assert (order.stripe_risk_level, order.stripe_risk_score) == ("elevated", 61)
    assert order.charge_attempted_at is not None

    on_orders = [q["sql"] for q in queries.captured_queries if '"orders_' in q["sql"]]
    assert len(on_orders) <= ORDER_TABLE_STATEMENTS, "\n".join(on_orders)


@pytest.fixture
def no_sdk_retries(settings, monkeypatch):
    """The SDK gives up at the first lost answer, so the service's own retry sees it."""
    settings.STRIPE_MAX_NETWORK_RETRIES = 0
    monkeypatch.setattr(stripe.HTTPClient, "INITIAL_DELAY", 0.01)
    monkeypatch.setattr(stripe.HTTPClient, "MAX_DELAY", 0.01)


def test_after_a_lost_answer_the_next_attempt_looks_and_charges_nobody_twice(
    stripe_server, place_order, no_sdk_retries
):
    """Stripe created the PaymentIntent and the answer was lost: the next attempt, which
    finds the order's attempt mark, lists the customer's PaymentIntents, finds that one
    and creates nothing, even with Stripe's memory of the key gone (after 24 h)."""
    order = place_order("250.00")
    stripe_server.fail_after_create_next(1, then_outage=0.0)
    with pytest.raises(Exception, match="Stripe unavailable"):
        order_charge(order=Order.objects.get(pk=order.pk))
    [created] = stripe_server.payment_intents.values()
    assert created["status"] == "succeeded"
    assert payment_intent_requests(stripe_server) == [("POST", "/v1/payment_intents")]

    stripe_server.forget_idempotency_keys()  # 24 h later: only the lookup can tell
    charged = order_charge(order=Order.objects.get(pk=order.pk))

    assert charged.charge_id == created["id"]
    assert list(stripe_server.payment_intents) == [created["id"]]
    assert payment_intent_requests(stripe_server)[1:] == [
        ("GET", "/v1/payment_intents"),  # the lookup
        ("GET", f"/v1/payment_intents/{created['id']}"),  # its risk, expanded
    ]
    order.refresh_from_db()
    assert order.charge_id == created["id"] and order.payment_status == "captured"
    assert order.stripe_risk_level == "normal"


def test_the_gateway_looks_only_when_told_the_outcome_is_unknown(stripe_server, place_order):
    """The gateway's own rule, both ways, under one key: a first attempt creates; an
    attempt after an unknown outcome finds the PaymentIntent and does not create."""
    order = place_order("120.00")
    gateway = payment_gateway()
    kwargs = dict(
        customer_id="cus_good",
        amount=order.amount,
        currency="usd",
        idempotency_key=f"charge:test-{order.pk}",
        metadata={"order_id": order.order_id, "order_pk": str(order.pk)},
        created_since=order.created_at,
    )
    first = gateway.charge(**kwargs, outcome_unknown=False)
    assert ("GET", "/v1/payment_intents") not in payment_intent_requests(stripe_server)
    assert first.risk_level == "normal" and first.risk_score == 20

    stripe_server.forget_idempotency_keys()
    again = gateway.charge(**kwargs, outcome_unknown=True)
    assert again.charge_id == first.charge_id
    assert list(stripe_server.payment_intents) == [first.charge_id]
    assert payment_intent_requests(stripe_server).count(("POST", "/v1/payment_intents")) == 1


def test_a_key_first_used_without_expand_is_sent_again_as_it_was(stripe_server, place_order):
    """A release before this one sent the create without `expand`, and Stripe stored a
    500 under the key. Stripe refuses the key with other parameters, so the request goes
    again as it was first sent, gets its stored 500 replayed, and the next key charges."""
    order = place_order("250.00")
    key = payment_key(operation="charge", order_pk=order.pk)
    then = {
        "amount": 25000,
        "currency": "usd",
        "customer": "cus_good",
        "payment_method": "pm_card_cus_good",
        "confirm": True,
        "off_session": True,
        "capture_method": "automatic",
        "metadata": {"order_id": order.order_id, "order_pk": str(order.pk)},
    }
    stripe_server.fail_stored_next(1)
    with pytest.raises(stripe.APIError):
        payment_gateway().client.v1.payment_intents.create(
            params=then, options={"idempotency_key": key}
        )

    charged = order_charge(order=Order.objects.get(pk=order.pk))

    posts = [
        r for r in stripe_server.requests if r.method == "POST" and r.path == "/v1/payment_intents"
    ]
    assert [(r.idempotency_key, r.status, "expand" in r.params) for r in posts] == [
        (key, 500, False),  # the earlier release's attempt
        (key, 400, True),  # refused: other parameters under that key
        (key, 500, False),  # sent as it was first: its stored 500, replayed
        (f"{key}:2", 200, True),  # the lookup found nothing: the next key
    ]
    assert posts[2].replayed and not posts[3].replayed
    assert list(stripe_server.payment_intents) == [charged.charge_id]
    assert charged.risk_level == "normal"
