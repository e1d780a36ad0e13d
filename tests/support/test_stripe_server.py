"""Tests of the local Stripe server through the real ``stripe`` SDK (plain pytest)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import stripe

from tests.support.stripe_server import StripeServer, parse_form

ClientFactory = Callable[..., stripe.StripeClient]

CHARGE: dict[str, Any] = {
    "amount": 1999,
    "currency": "eur",
    "customer": "cus_123",
    "payment_method": "pm_card_visa",
    "confirm": True,
    "off_session": True,
    "metadata": {"order_id": "42", "kind": "deposit"},
}


@pytest.fixture(autouse=True)
def fast_sdk_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    """The SDK sleeps max(INITIAL_DELAY, backoff) >= 0.5 s between retries."""
    monkeypatch.setattr(stripe.HTTPClient, "INITIAL_DELAY", 0.01)
    monkeypatch.setattr(stripe.HTTPClient, "MAX_DELAY", 0.01)


@pytest.fixture
def server() -> Iterator[StripeServer]:
    with StripeServer() as srv:
        yield srv


@pytest.fixture
def make_client(server: StripeServer) -> ClientFactory:
    def factory(retries: int = 0, api_key: str = "sk_test_local") -> stripe.StripeClient:
        return stripe.StripeClient(
            api_key,
            base_addresses={"api": server.base_url},
            max_network_retries=retries,
        )

    return factory


def charge(client: stripe.StripeClient, key: str, **overrides: Any) -> stripe.PaymentIntent:
    return client.v1.payment_intents.create(
        params={**CHARGE, **overrides},  # type: ignore[typeddict-item]
        options={"idempotency_key": key},
    )


def test_off_session_charge_in_cents_with_metadata(
    server: StripeServer, make_client: ClientFactory
) -> None:
    client = make_client()
    intent = charge(client, "order-42-charge")

    assert intent.id.startswith("pi_")
    assert intent.status == "succeeded"
    assert intent.amount == 1999
    assert intent.currency == "eur"
    assert intent.customer == "cus_123"
    assert intent.metadata.to_dict() == {"order_id": "42", "kind": "deposit"}
    assert isinstance(intent.latest_charge, str)
    assert intent.latest_charge.startswith("ch_")
    assert intent.last_response is not None
    assert intent.last_response.request_id is not None

    (request,) = server.requests
    assert (request.method, request.path, request.status) == (
        "POST",
        "/v1/payment_intents",
        200,
    )
    assert request.headers["authorization"] == "Bearer sk_test_local"
    assert request.idempotency_key == "order-42-charge"
    assert request.params == {
        "amount": "1999",
        "currency": "eur",
        "customer": "cus_123",
        "payment_method": "pm_card_visa",
        "confirm": "true",
        "off_session": "true",
        "metadata": {"order_id": "42", "kind": "deposit"},
    }
    assert [pi["id"] for pi in server.successful_charges()] == [intent.id]

    fetched = client.v1.payment_intents.retrieve(intent.id)
    assert (fetched.id, fetched.status) == (intent.id, "succeeded")
    with pytest.raises(stripe.InvalidRequestError) as missing:
        client.v1.payment_intents.retrieve("pi_nope")
    assert (missing.value.http_status, missing.value.code) == (404, "resource_missing")


def test_same_idempotency_key_replays_first_response(
    server: StripeServer, make_client: ClientFactory
) -> None:
    client = make_client()
    first = charge(client, "same-key")
    second = charge(client, "same-key")

    assert second.id == first.id
    assert second.last_response is not None
    assert second.last_response.headers["Idempotent-Replayed"] == "true"
    assert len(server.payment_intents) == 1
    assert len(server.successful_charges()) == 1
    assert [r.replayed for r in server.requests] == [False, True]

    with pytest.raises(stripe.IdempotencyError):
        charge(client, "same-key", amount=2500)
    assert len(server.payment_intents) == 1


def test_currencies_and_minimum_amounts_are_stripes(
    server: StripeServer, make_client: ClientFactory
) -> None:
    client = make_client()
    with pytest.raises(stripe.InvalidRequestError) as unknown:
        charge(client, "xyz", currency="xyz")
    assert unknown.value.param == "currency"
    for key, currency, amount in (("usd-49", "usd", 49), ("jpy-49", "jpy", 49), ("gbp", "gbp", 29)):
        with pytest.raises(stripe.InvalidRequestError) as small:
            charge(client, key, currency=currency, amount=amount)
        assert small.value.code == "amount_too_small"
    # 50 yen is 50 yen: zero-decimal amounts are whole units.
    assert charge(client, "jpy-50", currency="jpy", amount=50).amount == 50
    assert server.successful_charges()[0]["currency"] == "jpy"


def test_decline_raises_card_error_with_decline_code(
    server: StripeServer, make_client: ClientFactory
) -> None:
    client = make_client(retries=2)
    server.decline_customers.add("cus_broke")

    for customer in ("cus_declined", "cus_broke"):
        with pytest.raises(stripe.CardError) as declined:
            charge(client, f"charge-{customer}", customer=customer)
        err = declined.value
        assert err.http_status == 402
        assert err.code == "card_declined"
        assert err.error is not None
        assert err.error.decline_code == "insufficient_funds"
        assert err.error.payment_intent is not None
        assert err.error.payment_intent.status == "requires_payment_method"
        assert err.user_message == "Your card has insufficient funds."

    assert server.successful_charges() == []
    assert len(server.requests) == 2  # a 402 is not retried
    # The decline is stored under the key: retrying the same key replays it.
    with pytest.raises(stripe.CardError):
        charge(client, "charge-cus_broke", customer="cus_broke")
    assert len(server.payment_intents) == 2


def test_refunds(server: StripeServer, make_client: ClientFactory) -> None:
    client = make_client()
    intent = charge(client, "to-refund")

    partial = client.v1.refunds.create(
        params={"payment_intent": intent.id, "amount": 500, "metadata": {"r": "1"}},
        options={"idempotency_key": "refund-1"},
    )
    assert partial.id.startswith("re_")
    assert (partial.status, partial.amount) == ("succeeded", 500)
    assert partial.payment_intent == intent.id

    rest = client.v1.refunds.create(params={"payment_intent": intent.id})
    assert rest.amount == 1499
    assert [r["id"] for r in server.refunds_for(intent.id)] == [partial.id, rest.id]

    with pytest.raises(stripe.InvalidRequestError) as again:
        client.v1.refunds.create(params={"payment_intent": intent.id, "amount": 1})
    assert (again.value.http_status, again.value.code) == (
        400,
        "charge_already_refunded",
    )

    with pytest.raises(stripe.InvalidRequestError) as unknown:
        client.v1.refunds.create(params={"payment_intent": "pi_unknown"})
    assert (unknown.value.http_status, unknown.value.code) == (404, "resource_missing")
    assert len(server.refunds) == 2


def test_refund_larger_than_amount_is_rejected(
    server: StripeServer, make_client: ClientFactory
) -> None:
    client = make_client()
    intent = charge(client, "small")
    with pytest.raises(stripe.InvalidRequestError) as too_big:
        client.v1.refunds.create(params={"payment_intent": intent.id, "amount": 5000})
    assert too_big.value.http_status == 400
    assert server.refunds == {}


def test_fail_next_is_retried_by_the_sdk_and_creates_one_intent(
    server: StripeServer, make_client: ClientFactory
) -> None:
    server.fail_next(1)
    intent = charge(make_client(retries=2), "retry-me")

    assert intent.status == "succeeded"
    assert list(server.payment_intents) == [intent.id]
    requests = server.requests
    assert [r.status for r in requests] == [500, 200]
    assert {r.idempotency_key for r in requests} == {"retry-me"}


def test_fail_next_without_retries_raises_api_error_and_creates_nothing(
    server: StripeServer, make_client: ClientFactory
) -> None:
    server.fail_next(1)
    with pytest.raises(stripe.APIError) as failed:
        charge(make_client(), "no-retry")
    assert failed.value.http_status == 500
    assert server.payment_intents == {}


def test_stripe_should_retry_false_stops_sdk_retries(
    server: StripeServer, make_client: ClientFactory
) -> None:
    server.fail_next(1, status=503, should_retry=False)
    with pytest.raises(stripe.APIError):
        charge(make_client(retries=3), "do-not-retry")
    assert len(server.requests) == 1


def test_lost_answer_drops_the_connection_and_the_key_replays_the_success(
    server: StripeServer, make_client: ClientFactory
) -> None:
    server.fail_after_create_next(1)
    intent = charge(make_client(retries=2), "answer-lost")

    assert intent.status == "succeeded"
    assert list(server.payment_intents) == [intent.id]
    assert len(server.successful_charges()) == 1
    assert [(r.status, r.replayed) for r in server.requests] == [
        (0, False),  # no answer at all
        (200, True),
    ]


def test_lost_answer_without_key_reuse_would_double_charge(
    server: StripeServer, make_client: ClientFactory
) -> None:
    client = make_client()
    server.fail_after_create_next(1)
    with pytest.raises(stripe.APIConnectionError):
        charge(client, "attempt-1")
    charge(client, "attempt-2")
    assert len(server.successful_charges()) == 2


def test_a_500_after_create_is_what_the_key_stores(
    server: StripeServer, make_client: ClientFactory
) -> None:
    """As at Stripe: the 500 is stored and replayed for the key, whatever was created."""
    client = make_client(retries=2)
    server.fail_after_create_next(1, status=500)
    for _ in range(2):
        with pytest.raises(stripe.APIError) as failed:
            charge(client, "stored-500")
        assert failed.value.http_status == 500
    assert len(server.successful_charges()) == 1  # it was created all the same
    # Stripe-Should-Retry: false, so the SDK sends each call once.
    assert [(r.status, r.replayed) for r in server.requests] == [(500, False), (500, True)]
    assert failed.value.headers["idempotent-replayed"] == "true"


def test_fail_stored_creates_nothing_and_replays_the_500(
    server: StripeServer, make_client: ClientFactory
) -> None:
    client = make_client(retries=2)
    server.fail_stored_next(1)
    for _ in range(2):
        with pytest.raises(stripe.APIError):
            charge(client, "wedged")
    assert server.payment_intents == {}
    assert [(r.status, r.replayed) for r in server.requests] == [(500, False), (500, True)]
    assert charge(client, "wedged:2").status == "succeeded"  # another key goes through


def test_outage_until_ended_then_for_a_window(
    server: StripeServer, make_client: ClientFactory
) -> None:
    client = make_client(retries=1)
    server.outage()
    with pytest.raises(stripe.APIConnectionError):
        charge(client, "during-outage")
    server.end_outage()
    server.outage(status=503)
    with pytest.raises(stripe.APIError) as unavailable:
        charge(client, "during-outage")
    assert unavailable.value.http_status == 503
    assert server.payment_intents == {}
    server.outage(0.2)
    assert server.in_outage
    time.sleep(0.25)
    assert not server.in_outage
    assert charge(client, "during-outage").status == "succeeded"
    assert [r.status for r in server.requests] == [0, 0, 503, 503, 200]


def test_lost_answer_then_outage(server: StripeServer, make_client: ClientFactory) -> None:
    client = make_client(retries=2)
    server.fail_after_create_next(1, then_outage=None)
    with pytest.raises(stripe.APIConnectionError):
        charge(client, "lost-then-down")
    assert [r.status for r in server.requests] == [0, 0, 0]
    server.end_outage()
    assert charge(client, "lost-then-down").last_response.headers["Idempotent-Replayed"] == "true"
    assert len(server.successful_charges()) == 1


def test_list_payment_intents_by_customer_newest_first_with_pages(
    server: StripeServer, make_client: ClientFactory
) -> None:
    client = make_client()
    mine = [charge(client, f"mine-{i}").id for i in range(3)]
    charge(client, "theirs", customer="cus_other")

    page = client.v1.payment_intents.list(params={"customer": "cus_123", "limit": 2})
    assert page.object == "list" and page.url == "/v1/payment_intents"
    assert [pi.id for pi in page.data] == mine[::-1][:2] and page.has_more
    assert [pi.id for pi in page.auto_paging_iter()] == mine[::-1]
    after = client.v1.payment_intents.list(
        params={"customer": "cus_123", "starting_after": mine[1]}
    )
    assert [pi.id for pi in after.data] == [mine[0]] and not after.has_more
    now = int(time.time())
    assert client.v1.payment_intents.list(params={"created": {"gt": now + 60}}).data == []
    assert len(client.v1.payment_intents.list(params={"created": {"gte": now - 60}}).data) == 4
    with pytest.raises(stripe.InvalidRequestError):
        client.v1.payment_intents.list(params={"limit": 101})


def test_list_refunds_of_a_payment_intent(server: StripeServer, make_client: ClientFactory) -> None:
    client = make_client()
    intent = charge(client, "to-list")
    other = charge(client, "other")
    first = client.v1.refunds.create(params={"payment_intent": intent.id, "amount": 100})
    client.v1.refunds.create(params={"payment_intent": other.id})
    second = client.v1.refunds.create(params={"payment_intent": intent.id, "amount": 200})
    listed = client.v1.refunds.list(params={"payment_intent": intent.id})
    assert [r.id for r in listed.data] == [second.id, first.id]


def test_manual_capture_and_cancel(server: StripeServer, make_client: ClientFactory) -> None:
    client = make_client()
    held = charge(client, "hold", capture_method="manual")
    assert (held.status, held.amount_capturable, held.amount_received) == (
        "requires_capture",
        1999,
        0,
    )
    with pytest.raises(stripe.InvalidRequestError):  # nothing captured to refund yet
        client.v1.refunds.create(params={"payment_intent": held.id})
    captured = client.v1.payment_intents.capture(held.id, options={"idempotency_key": "cap"})
    assert (captured.status, captured.amount_received) == ("succeeded", 1999)
    with pytest.raises(stripe.InvalidRequestError) as again:
        client.v1.payment_intents.capture(held.id)
    assert again.value.code == "payment_intent_unexpected_state"

    released = charge(client, "hold-2", capture_method="manual")
    canceled = client.v1.payment_intents.cancel(released.id)
    assert (canceled.status, canceled.amount_capturable) == ("canceled", 0)
    with pytest.raises(stripe.InvalidRequestError):
        client.v1.payment_intents.capture(released.id)


def test_an_expired_authorization_cannot_be_captured(
    server: StripeServer, make_client: ClientFactory
) -> None:
    client = make_client()
    held = charge(client, "hold-1", capture_method="manual")
    other = charge(client, "hold-2", capture_method="manual")
    assert server.expire_authorization(held.id) == [held.id]
    expired = client.v1.payment_intents.retrieve(held.id)
    assert (expired.status, expired.cancellation_reason) == ("canceled", "automatic")
    with pytest.raises(stripe.InvalidRequestError) as caught:
        client.v1.payment_intents.capture(held.id)
    assert caught.value.code == "payment_intent_unexpected_state"
    assert client.v1.payment_intents.retrieve(other.id).status == "requires_capture"
    assert server.expire_authorization() == [other.id]


def test_signed_events_verify_with_the_stripe_library() -> None:
    secret = "whsec_test_secret"
    payload, header = StripeServer.signed_event(
        "charge.refunded", {"id": "ch_1", "object": "charge"}, secret, event_id="evt_1"
    )
    event = stripe.Webhook.construct_event(payload, header, secret)
    assert (event.id, event.type, event.data.object.id) == ("evt_1", "charge.refunded", "ch_1")
    assert header == stripe.WebhookSignature.generate_signature_header(
        payload.decode(), secret, timestamp=int(header.split(",")[0].removeprefix("t="))
    )
    with pytest.raises(stripe.SignatureVerificationError):
        stripe.Webhook.construct_event(payload, header, "whsec_other")
    with pytest.raises(stripe.SignatureVerificationError):
        stripe.Webhook.construct_event(payload + b" ", header, secret)
    stale = StripeServer.sign(payload, secret, timestamp=int(time.time()) - 3600)
    with pytest.raises(stripe.SignatureVerificationError):
        stripe.Webhook.construct_event(payload, stale, secret)


def test_events_from_the_fakes_own_objects(
    server: StripeServer, make_client: ClientFactory
) -> None:
    client = make_client()
    intent = charge(client, "order-42-charge")
    assert server.charge(intent.id)["amount_refunded"] == 0

    partial = server.refund_from_dashboard(intent.id, amount=500)
    assert (partial["amount_refunded"], partial["refunded"]) == (500, False)
    assert partial["payment_intent"] == intent.id and partial["metadata"]["order_id"] == "42"
    full = server.refund_from_dashboard(intent.id)
    assert (full["amount_refunded"], full["refunded"]) == (1999, True)
    listed = client.v1.refunds.list(params={"payment_intent": intent.id})
    assert sorted(r.amount for r in listed.data) == [500, 1499]
    with pytest.raises(ValueError, match="already been refunded"):
        server.refund_from_dashboard(intent.id)

    dispute = server.open_dispute(intent.id)
    assert (dispute["status"], dispute["amount"]) == ("needs_response", 1999)
    assert server.charge(intent.id)["disputed"] is True
    assert server.close_dispute(dispute["id"], "lost")["status"] == "lost"
    review = server.radar_review(intent.id, open=False, reason="refunded_as_fraud")
    assert (review["open"], review["reason"], review["payment_intent"]) == (
        False,
        "refunded_as_fraud",
        intent.id,
    )


@pytest.mark.parametrize("api_key", ["sk_live_abcdef123456", "pk_test_abcdef"])
def test_non_test_secret_key_is_rejected(
    server: StripeServer, make_client: ClientFactory, api_key: str
) -> None:
    with pytest.raises(stripe.AuthenticationError) as denied:
        charge(make_client(api_key=api_key), "auth")
    assert denied.value.http_status == 401
    assert server.payment_intents == {}


@pytest.mark.parametrize("amount", [0, -5])
def test_amount_must_be_a_positive_integer(
    server: StripeServer, make_client: ClientFactory, amount: int
) -> None:
    with pytest.raises(stripe.InvalidRequestError) as invalid:
        charge(make_client(), f"amount-{amount}", amount=amount)
    assert (invalid.value.http_status, invalid.value.param) == (400, "amount")
    assert server.payment_intents == {}


def test_parse_form_nested_keys() -> None:
    body = (
        "amount=1999&metadata[order_id]=42&metadata[note]=a%20b"
        "&expand[0]=latest_charge&expand[1]=customer&tags[]=x&tags[]=y"
        "&shipping[address][city]=Paris"
    )
    assert parse_form(body) == {
        "amount": "1999",
        "metadata": {"order_id": "42", "note": "a b"},
        "expand": ["latest_charge", "customer"],
        "tags": ["x", "y"],
        "shipping": {"address": {"city": "Paris"}},
    }
