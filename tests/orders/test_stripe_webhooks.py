"""Stripe's signed webhooks at `POST /webhooks/stripe/`: the signature, redelivery, and
each event type updating the order. Orders are charged through the real `stripe` SDK
against the local Stripe-compatible server, whose own objects the events describe, and
the real `stripe` library verifies every delivery."""

import json
import logging
import time
from decimal import Decimal
from typing import Any

import pytest
import stripe
from django.contrib.auth.models import Permission, User
from django.test import Client

from orders.models import Order, StripeEvent
from orders.services.payments import order_payment_release
from orders.services.reviews import review_decide
from tests.support.api import api_client_for
from tests.support.stripe_server import StripeServer

pytestmark = pytest.mark.django_db(transaction=True)

URL = "/webhooks/stripe/"
SECRET = "whsec_test_orders_webhooks"


@pytest.fixture(autouse=True)
def parts(settings, stripe_server):
    settings.LLM_PROVIDER = "simulated"
    settings.STRIPE_WEBHOOK_SECRET = SECRET
    return stripe_server


@pytest.fixture
def stripe_client() -> Client:
    # Stripe sends no CSRF token: the endpoint must not need one.
    return Client(enforce_csrf_checks=True)


def deliver(client: Client, payload: bytes, header: str | None):
    extra = {} if header is None else {"HTTP_STRIPE_SIGNATURE": header}
    return client.post(URL, data=payload, content_type="application/json", **extra)


def send(client: Client, type_: str, obj: dict, **kwargs):
    payload, header = StripeServer.signed_event(type_, obj, SECRET, **kwargs)
    return deliver(client, payload, header)


def placed(place_order, queue_capture, amount: str, **kwargs) -> Order:
    order = place_order(amount, **kwargs)
    queue_capture.drain()
    order.refresh_from_db()
    return order


@pytest.fixture
def captured(place_order, queue_capture) -> Order:
    order = placed(place_order, queue_capture, "250.00")
    assert (order.status, order.payment_status) == ("completed", "captured")
    return order


@pytest.fixture
def held(place_order, queue_capture) -> Order:
    order = placed(place_order, queue_capture, "1500.00")
    assert (order.status, order.payment_status) == ("awaiting_review", "authorized")
    return order


# --- the signature -----------------------------------------------------------------


def _missing(payload: bytes) -> tuple[bytes, str | None]:
    return payload, None


def _wrong_secret(payload: bytes) -> tuple[bytes, str | None]:
    return payload, StripeServer.sign(payload, "whsec_someone_else")


def _tampered(payload: bytes) -> tuple[bytes, str | None]:
    header = StripeServer.sign(payload, SECRET)
    return payload.replace(b'"amount_refunded": 25000', b'"amount_refunded": 100'), header


def _too_old(payload: bytes) -> tuple[bytes, str | None]:
    # Stripe's library refuses signatures older than 5 minutes (replayed deliveries).
    return payload, StripeServer.sign(payload, SECRET, timestamp=int(time.time()) - 600)


def _garbage(payload: bytes) -> tuple[bytes, str | None]:
    return payload, "v1=deadbeef"


@pytest.mark.parametrize("forge", [_missing, _wrong_secret, _tampered, _too_old, _garbage])
def test_a_bad_or_missing_signature_answers_400_and_writes_nothing(
    stripe_server, stripe_client, captured, forge, caplog
):
    charge = stripe_server.refund_from_dashboard(captured.charge_id)
    payload, _ = StripeServer.signed_event("charge.refunded", charge, SECRET)
    assert b'"amount_refunded": 25000' in payload
    body, header = forge(payload)
    with caplog.at_level(logging.INFO):
        response = deliver(stripe_client, body, header)
    assert response.status_code == 400
    assert StripeEvent.objects.count() == 0
    captured.refresh_from_db()
    assert captured.payment_status == "captured"
    assert SECRET not in caplog.text and (header is None or header not in caplog.text)


def test_without_a_secret_no_event_is_accepted(
    settings, stripe_server, stripe_client, captured, caplog
):
    settings.STRIPE_WEBHOOK_SECRET = ""
    charge = stripe_server.refund_from_dashboard(captured.charge_id)
    with caplog.at_level(logging.ERROR):
        response = send(stripe_client, "charge.refunded", charge)
    assert response.status_code == 503
    assert "STRIPE_WEBHOOK_SECRET is not set" in caplog.text
    assert StripeEvent.objects.count() == 0
    captured.refresh_from_db()
    assert captured.payment_status == "captured"


def test_only_post(stripe_client):
    assert stripe_client.get(URL).status_code == 405


# --- each event once -----------------------------------------------------------------


def test_a_redelivered_event_changes_nothing(stripe_server, stripe_client, captured):
    charge = stripe_server.refund_from_dashboard(captured.charge_id, amount=5000)
    payload, header = StripeServer.signed_event("charge.refunded", charge, SECRET)
    first = deliver(stripe_client, payload, header)
    assert first.status_code == 200 and first.json()["duplicate"] is False
    captured.refresh_from_db()
    assert captured.payment_status == "partially_refunded"

    dispute = stripe_server.open_dispute(captured.charge_id)
    assert send(stripe_client, "charge.dispute.created", dispute).status_code == 200
    captured.refresh_from_db()
    assert captured.payment_status == "disputed"
    updated_at = captured.updated_at

    # Stripe redelivers the refund (signed again, later): the table would allow
    # disputed → partially_refunded, so only storing the event once keeps it disputed.
    again = deliver(stripe_client, payload, StripeServer.sign(payload, SECRET))
    assert again.status_code == 200 and again.json()["duplicate"] is True
    captured.refresh_from_db()
    assert captured.payment_status == "disputed" and captured.updated_at == updated_at
    assert StripeEvent.objects.count() == 2
    event = StripeEvent.objects.get(type="charge.refunded")
    assert event.order == captured and event.outcome == "payment captured → partially_refunded"
    assert event.payload["data"]["object"]["amount_refunded"] == 5000
    assert event.processed_at is not None


# --- each event type -----------------------------------------------------------------


def test_a_dashboard_refund_partial_then_full(stripe_server, stripe_client, captured):
    partial = stripe_server.refund_from_dashboard(captured.charge_id, amount=100)
    assert send(stripe_client, "charge.refunded", partial).status_code == 200
    captured.refresh_from_db()
    assert captured.payment_status == "partially_refunded"

    full = stripe_server.refund_from_dashboard(captured.charge_id)
    assert send(stripe_client, "charge.refunded", full).status_code == 200
    captured.refresh_from_db()
    assert captured.payment_status == "refunded"
    # A late copy of the partial refund's event cannot move it back.
    assert send(stripe_client, "charge.refunded", partial).status_code == 200
    captured.refresh_from_db()
    assert captured.payment_status == "refunded"
    assert StripeEvent.objects.first().outcome == (
        "payment stays refunded: not moved to partially_refunded"
    )


def test_a_dispute_won_gives_the_money_back(stripe_server, stripe_client, captured):
    dispute = stripe_server.open_dispute(captured.charge_id)
    send(stripe_client, "charge.dispute.created", dispute)
    captured.refresh_from_db()
    assert captured.payment_status == "disputed"

    closed = stripe_server.close_dispute(dispute["id"], "won")
    assert send(stripe_client, "charge.dispute.closed", closed).status_code == 200
    captured.refresh_from_db()
    assert captured.payment_status == "captured"


@pytest.mark.parametrize(
    ("disputed_amount", "expected"), [(None, "refunded"), (10000, "partially_refunded")]
)
def test_a_dispute_lost_withdraws_the_funds(
    stripe_server, stripe_client, captured, disputed_amount, expected
):
    dispute = stripe_server.open_dispute(captured.charge_id, amount=disputed_amount)
    send(stripe_client, "charge.dispute.created", dispute)
    closed = stripe_server.close_dispute(dispute["id"], "lost")
    assert send(stripe_client, "charge.dispute.closed", closed).status_code == 200
    captured.refresh_from_db()
    assert captured.payment_status == expected


def test_an_authorization_that_expires_during_review(
    stripe_server, stripe_client, held, queue_capture, reviewer
):
    [expired] = stripe_server.expire_authorization(held.charge_id)
    intent = stripe_server.payment_intents[expired]
    assert send(stripe_client, "payment_intent.canceled", intent).status_code == 200
    held.refresh_from_db()
    assert (held.status, held.payment_status) == ("awaiting_review", "canceled")
    assert "authorization canceled at Stripe" in held.failure_reason
    assert StripeEvent.objects.get().outcome == "payment authorized → canceled"

    # Rejecting it releases nothing more: the hold is gone already.
    review_decide(order=held, approved=False, by=reviewer)
    queue_capture.drain()
    held.refresh_from_db()
    assert (held.status, held.payment_status) == ("rejected", "canceled")
    assert stripe_server.refunds == {}


def test_approving_a_review_whose_authorization_expired_fails_the_order_cleanly(
    stripe_server, stripe_client, held, queue_capture, reviewer, smtp_server
):
    [expired] = stripe_server.expire_authorization(held.charge_id)
    send(stripe_client, "payment_intent.canceled", stripe_server.payment_intents[expired])
    review_decide(order=held, approved=True, by=reviewer)
    assert queue_capture.drain() == ["completed"]  # the run ends; nothing is stuck
    held.refresh_from_db()
    assert (held.status, held.payment_status) == ("failed", "canceled")
    assert held.failure_reason.startswith("capture_failed: the authorization was canceled")
    assert stripe_server.successful_charges() == [] and smtp_server.messages == []


def test_a_payment_failure_is_found_through_the_intents_metadata(
    stripe_server, stripe_client, place_order
):
    # The order has not recorded a PaymentIntent (its answer was lost, say): the
    # metadata the service puts on it names the order.
    order = place_order("250.00")
    client = stripe.StripeClient("sk_test_local", base_addresses={"api": stripe_server.base_url})
    with pytest.raises(stripe.CardError) as declined:
        client.v1.payment_intents.create(
            params={
                "amount": 25000,
                "currency": "usd",
                "customer": "cus_declined",
                "payment_method": "pm_card",
                "confirm": True,
                "off_session": True,
                "metadata": {"order_id": order.order_id, "order_pk": str(order.pk)},
            }
        )
    intent = stripe_server.payment_intents[declined.value.error.payment_intent.id]
    assert send(stripe_client, "payment_intent.payment_failed", intent).status_code == 200
    order.refresh_from_db()
    assert order.payment_status == "failed"
    assert StripeEvent.objects.get().order == order


def test_events_about_nothing_of_ours_are_stored_and_acknowledged(
    stripe_server, stripe_client, captured, place_order
):
    other = place_order("99.00", order_id="other")
    stranger = {
        "id": "pi_not_ours",
        "object": "payment_intent",
        # An order id alone (unique per client only) never identifies an order, nor
        # does an order_pk whose order holds its money on another PaymentIntent.
        "metadata": {"order_id": captured.order_id, "order_pk": str(captured.pk)},
        "cancellation_reason": "requested_by_customer",
    }
    assert send(stripe_client, "payment_intent.canceled", stranger).status_code == 200
    by_order_id = {**stranger, "id": "pi_other", "metadata": {"order_id": other.order_id}}
    assert send(stripe_client, "payment_intent.canceled", by_order_id).status_code == 200
    assert send(stripe_client, "customer.created", {"id": "cus_1"}).status_code == 200

    assert [(e.type, e.order, e.outcome) for e in StripeEvent.objects.order_by("pk")] == [
        ("payment_intent.canceled", None, "no matching order"),
        ("payment_intent.canceled", None, "no matching order"),
        ("customer.created", None, "ignored: not handled"),
    ]
    captured.refresh_from_db()
    assert captured.payment_status == "captured"


def test_radar_reviews_are_recorded_and_shown_in_the_admin(
    stripe_server, stripe_client, held, admin_client
):
    opened = stripe_server.radar_review(held.charge_id)
    assert send(stripe_client, "review.opened", opened).status_code == 200
    held.refresh_from_db()
    assert held.radar_review == "open: rule"

    closed = stripe_server.radar_review(held.charge_id, open=False, reason="approved")
    assert send(stripe_client, "review.closed", closed).status_code == 200
    held.refresh_from_db()
    assert held.radar_review == "closed: approved"
    # A late copy of the opening does not reopen it.
    send(stripe_client, "review.opened", opened)
    held.refresh_from_db()
    assert held.radar_review == "closed: approved"
    assert held.payment_status == "authorized"  # Radar moves no money

    page = admin_client.get(f"/admin/orders/order/{held.pk}/change/")
    assert page.status_code == 200
    assert "closed: approved" in page.content.decode()
    assert "3 received" in page.content.decode()

    events = admin_client.get("/admin/orders/stripeevent/")
    text = events.content.decode()
    assert events.status_code == 200
    assert "review.opened" in text and "review.closed" in text and held.order_id in text
    assert "radar review closed: approved" in text
    event = StripeEvent.objects.filter(type="review.closed").get()
    detail = admin_client.get(f"/admin/orders/stripeevent/{event.pk}/change/")
    assert detail.status_code == 200 and "prv_" in detail.content.decode()
    assert admin_client.get("/admin/orders/stripeevent/add/").status_code == 403


# --- a refund is never forgotten -------------------------------------------------------


def test_a_dispute_won_after_the_services_refund_leaves_it_refunded(
    stripe_server, stripe_client, place_order, queue_capture
):
    intake = User.objects.create_user("intake")
    intake.user_permissions.add(Permission.objects.get(codename="view_order"))
    captured = placed(place_order, queue_capture, "250.00", client=intake)
    order_payment_release(order=captured)  # the service's own refund, in full
    captured.refresh_from_db()
    refund_id = captured.refund_id
    assert (captured.payment_status, captured.refunded_amount) == ("refunded", Decimal("250.00"))
    assert refund_id == stripe_server.refunds_for(captured.charge_id)[0]["id"]

    dispute = stripe_server.open_dispute(captured.charge_id)
    closed = stripe_server.close_dispute(dispute["id"], "won")
    for type_, obj in (
        ("charge.refunded", stripe_server.charge(captured.charge_id)),
        ("charge.dispute.created", dispute),
        ("charge.dispute.closed", closed),
    ):
        assert send(stripe_client, type_, obj).status_code == 200
    captured.refresh_from_db()
    assert captured.payment_status == "refunded"
    assert (captured.refund_id, captured.refunded_amount) == (refund_id, Decimal("250.00"))
    assert [e.outcome for e in StripeEvent.objects.order_by("pk")] == [
        "payment already refunded",
        "payment refunded → disputed",
        "payment disputed → refunded",
    ]
    shown = api_client_for(intake).get(f"/api/orders/{captured.order_id}/").json()
    assert (shown["payment_status"], shown["refund_id"], shown["refunded_amount"]) == (
        "refunded",
        refund_id,
        "250.00",
    )


def test_a_dispute_won_after_a_dashboard_refund_leaves_it_refunded(
    stripe_server, stripe_client, captured
):
    refunded = stripe_server.refund_from_dashboard(captured.charge_id)
    dispute = stripe_server.open_dispute(captured.charge_id)
    send(stripe_client, "charge.refunded", refunded)
    send(stripe_client, "charge.dispute.created", dispute)
    captured.refresh_from_db()
    assert captured.payment_status == "disputed"
    send(stripe_client, "charge.dispute.closed", stripe_server.close_dispute(dispute["id"], "won"))
    captured.refresh_from_db()
    assert captured.payment_status == "refunded"
    assert captured.refunded_amount == Decimal("250.00") and captured.refunded_at is not None


def test_a_dispute_won_after_a_partial_refund_keeps_the_partial_refund(
    stripe_server, stripe_client, captured
):
    partial = stripe_server.refund_from_dashboard(captured.charge_id, amount=5000)
    dispute = stripe_server.open_dispute(captured.charge_id, amount=20000)
    send(stripe_client, "charge.refunded", partial)
    send(stripe_client, "charge.dispute.created", dispute)
    send(stripe_client, "charge.dispute.closed", stripe_server.close_dispute(dispute["id"], "won"))
    captured.refresh_from_db()
    assert captured.payment_status == "partially_refunded"
    assert captured.refunded_amount == Decimal("50.00")
    # A late copy of that refund's event, or a smaller one, shrinks nothing.
    send(stripe_client, "charge.refunded", {**partial, "amount_refunded": 100})
    captured.refresh_from_db()
    assert (captured.payment_status, captured.refunded_amount) == (
        "partially_refunded",
        Decimal("50.00"),
    )


@pytest.mark.parametrize(
    ("disputed", "expected"), [(20000, "refunded"), (10000, "partially_refunded")]
)
def test_a_dispute_lost_after_a_partial_refund_adds_the_withdrawal_to_it(
    stripe_server, stripe_client, captured, disputed, expected
):
    partial = stripe_server.refund_from_dashboard(captured.charge_id, amount=5000)
    dispute = stripe_server.open_dispute(captured.charge_id, amount=disputed)
    send(stripe_client, "charge.refunded", partial)
    send(stripe_client, "charge.dispute.created", dispute)
    send(stripe_client, "charge.dispute.closed", stripe_server.close_dispute(dispute["id"], "lost"))
    captured.refresh_from_db()
    assert (captured.payment_status, captured.refunded_amount) == (expected, Decimal("50.00"))


# --- signed but malformed ---------------------------------------------------------------


def _event(type_: str, obj: Any) -> dict:
    event = StripeServer.event(type_, {})
    event["data"]["object"] = obj
    return event


def _malformed(case: str, captured: Order, charge: dict) -> Any:
    """A signed body that is not a well-formed event, by `case`."""
    refunded = _event("charge.refunded", charge)
    stranger = {"id": "pi_unknown", "object": "payment_intent"}
    return {
        "data as a list": {**refunded, "data": [charge]},
        "data as a string": {**refunded, "data": "charge"},
        "data.object as a list": _event("charge.refunded", [charge]),
        "data.object as a string": _event("charge.refunded", captured.charge_id),
        "data without object": {**refunded, "data": {}},
        "metadata as a list": _event(
            "payment_intent.payment_failed",
            {**stranger, "metadata": ["order_pk", str(captured.pk)]},
        ),
        "metadata value not a string": _event(
            "payment_intent.payment_failed", {**stranger, "metadata": {"order_pk": captured.pk}}
        ),
        "amount as a string": _event("charge.refunded", {**charge, "amount": "25000"}),
        "amount_refunded as a float": _event(
            "charge.refunded", {**charge, "amount_refunded": 25000.0}
        ),
        "amount as a boolean": _event("charge.refunded", {**charge, "amount": True}),
        "a negative amount": _event("charge.refunded", {**charge, "amount_refunded": -1}),
        "payment_intent as a number": _event("charge.refunded", {**charge, "payment_intent": 12}),
        "last_payment_error as a string": _event(
            "payment_intent.payment_failed",
            {"id": captured.charge_id, "object": "payment_intent", "last_payment_error": "x"},
        ),
        "a type over 100 characters": {**refunded, "type": "charge.refunded" + "x" * 90},
        "an id over 255 characters": {**refunded, "id": "evt_" + "x" * 252},
        "no id": {k: v for k, v in refunded.items() if k != "id"},
        "the type as a number": {**refunded, "type": 7},
        "the event as a list": [refunded],
        "the event as a string": "charge.refunded",
        # PostgreSQL's JSON cannot hold it: it is refused, and kept without it.
        "a NUL character": {**refunded, "id": "evt_\x00", "type": "charge.refunded\x00"},
    }[case]


MALFORMED = [
    "data as a list",
    "data as a string",
    "data.object as a list",
    "data.object as a string",
    "data without object",
    "metadata as a list",
    "metadata value not a string",
    "amount as a string",
    "amount_refunded as a float",
    "amount as a boolean",
    "a negative amount",
    "payment_intent as a number",
    "last_payment_error as a string",
    "a type over 100 characters",
    "an id over 255 characters",
    "no id",
    "the type as a number",
    "the event as a list",
    "the event as a string",
    "a NUL character",
]


@pytest.mark.parametrize("case", MALFORMED)
def test_a_signed_malformed_event_answers_400_and_is_stored_as_rejected(
    stripe_server, stripe_client, captured, case
):
    charge = stripe_server.refund_from_dashboard(captured.charge_id)
    payload = json.dumps(_malformed(case, captured, charge)).encode()
    header = StripeServer.sign(payload, SECRET)
    response = deliver(stripe_client, payload, header)
    assert response.status_code == 400, response.content
    assert response.content.decode().startswith("Malformed event")
    [record] = StripeEvent.objects.all()
    assert record.outcome.startswith("rejected: ") and record.order is None
    assert len(record.event_id) <= 255 and len(record.type) <= 100
    captured.refresh_from_db()
    assert captured.payment_status == "captured"
    # Stripe retries it: the same answer, and still one record.
    again = deliver(stripe_client, payload, StripeServer.sign(payload, SECRET))
    assert again.status_code == 400 and StripeEvent.objects.count() == 1


def test_a_rejected_event_says_what_is_wrong(stripe_server, stripe_client, captured):
    charge = stripe_server.refund_from_dashboard(captured.charge_id)
    payload, header = StripeServer.signed_event(
        "charge.refunded", {**charge, "amount": "25000"}, SECRET, event_id="evt_amount"
    )
    response = deliver(stripe_client, payload, header)
    assert response.status_code == 400
    assert "data.object.amount" in response.content.decode()
    record = StripeEvent.objects.get(event_id="evt_amount")
    assert record.type == "charge.refunded" and "data.object.amount" in record.outcome
    assert record.payload["data"]["object"]["amount"] == "25000"


def test_an_unhandled_event_type_needs_only_a_well_formed_envelope(stripe_client, captured):
    # Fields the handlers read are checked on the events they handle only: another
    # type's object may use the same names differently.
    invoice = {"id": "in_1", "object": "invoice", "amount": "n/a", "metadata": []}
    assert send(stripe_client, "invoice.created", invoice).status_code == 200
    assert StripeEvent.objects.get().outcome == "ignored: not handled"


def test_the_debug_error_page_never_shows_the_webhook_secret(
    settings, stripe_server, captured, monkeypatch
):
    """With DJANGO_DEBUG=1 an exception inside the verification renders Django's
    technical 500 page, with every frame's variables: the secret is not among them."""
    settings.DEBUG = True

    def exploding(payload, header, secret, tolerance=None):
        raise RuntimeError("verification blew up")

    monkeypatch.setattr(stripe.WebhookSignature, "verify_header", exploding)
    charge = stripe_server.refund_from_dashboard(captured.charge_id)
    payload, header = StripeServer.signed_event("charge.refunded", charge, SECRET)
    client = Client(raise_request_exception=False)
    for accept in ("text/html", "text/plain"):
        response = client.post(
            URL,
            data=payload,
            content_type="application/json",
            HTTP_STRIPE_SIGNATURE=header,
            HTTP_ACCEPT=accept,
        )
        page = response.content.decode()
        assert response.status_code == 500
        assert "verification blew up" in page and "exploding" in page  # the frames are shown
        assert SECRET not in page


def test_an_order_pk_that_is_no_number_of_ours_matches_no_order(stripe_client, captured):
    for order_pk in ("\u00b2", "9" * 40, "", f" {captured.pk}"):
        intent = {
            "id": "pi_unknown",
            "object": "payment_intent",
            "metadata": {"order_pk": order_pk},
        }
        assert send(stripe_client, "payment_intent.canceled", intent).status_code == 200
    assert set(StripeEvent.objects.values_list("outcome", flat=True)) == {"no matching order"}


def test_nan_is_not_json(stripe_client, captured):
    payload = json.dumps(StripeServer.event("charge.refunded", {"amount": float("nan")})).encode()
    assert b"NaN" in payload
    response = deliver(stripe_client, payload, StripeServer.sign(payload, SECRET))
    assert response.status_code == 400 and not StripeEvent.objects.exists()
