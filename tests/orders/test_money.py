"""Currencies and money (issue 10, defect 3): minor units per currency at Stripe, the
fraud threshold as an amount of money per currency, and amounts shown with the
currency's decimals."""

from decimal import Decimal

import pytest
from django.core import mail
from django.test import override_settings

from orders import payments
from orders.agents import SYSTEM_PROMPT, start_prompt
from orders.models import Order
from orders.money import (
    CurrencyError,
    amount_display,
    amount_grouped,
    from_minor_units,
    to_minor_units,
)
from orders.policy import check_currencies, fraud_review_required, fraud_review_threshold
from orders.schemas import OrderPayload
from orders.services.intake import order_create
from orders.services.reviews import review_decide
from tests.support.api import api_client_for
from workflows.models import RunStatus

JPY = {"ORDER_CURRENCIES": ["usd", "jpy"], "FRAUD_REVIEW_THRESHOLDS": {"jpy": Decimal(150000)}}


@pytest.mark.parametrize(
    ("amount", "currency", "minor"),
    [
        ("12.34", "usd", 1234),
        ("0.50", "eur", 50),
        ("500", "jpy", 500),
        ("500.00", "jpy", 500),
        ("150000", "krw", 150000),
        ("999999.99", "usd", 99999999),
        ("10", "vnd", 10),
    ],
)
def test_minor_units_follow_the_currency(amount, currency, minor):
    assert to_minor_units(Decimal(amount), currency) == minor
    assert from_minor_units(minor, currency) == Decimal(amount)
    # The gateway's own helpers delegate to the same table.
    assert payments.to_minor_units(Decimal(amount), currency) == minor
    assert payments.from_minor_units(minor, currency) == Decimal(amount)


def test_zero_decimal_table_is_stripes():
    from orders.money import ZERO_DECIMAL_CURRENCIES

    assert ZERO_DECIMAL_CURRENCIES == set(
        "bif clp djf gnf jpy kmf krw mga pyg rwf ugx vnd vuv xaf xof xpf".split()
    )


@pytest.mark.parametrize(("amount", "currency"), [("1.5", "jpy"), ("0.001", "usd")])
def test_fractions_of_a_minor_unit_are_refused(amount, currency):
    with pytest.raises(ValueError, match="not a whole number"):
        to_minor_units(Decimal(amount), currency)


@pytest.mark.parametrize("currency", ["bhd", "jod", "kwd", "omr", "tnd", "isk", "us", "usd!"])
def test_three_decimal_and_unknown_currencies_are_refused(currency):
    with pytest.raises(CurrencyError):
        to_minor_units(Decimal("1"), currency)


def test_amounts_are_displayed_with_the_currencys_decimals():
    assert amount_display(Decimal("500"), "jpy") == "500 JPY"
    assert amount_display(Decimal("49.9"), "usd") == "49.90 USD"
    assert amount_grouped(Decimal("150000"), "jpy") == "150,000"
    assert amount_grouped(Decimal("2500"), "usd") == "2,500.00"
    # A row the service cannot handle still displays.
    assert amount_display(Decimal("10.00"), "xxx-bad") == "10.00 XXX-BAD"


# --- the fraud threshold is money -------------------------------------------------------


@override_settings(FRAUD_REVIEW_THRESHOLD=Decimal("1000"), FRAUD_REVIEW_THRESHOLDS={})
def test_the_single_threshold_is_usds_default():
    assert fraud_review_threshold(currency="usd") == Decimal("1000")
    assert not fraud_review_required(amount=Decimal("1000.00"), currency="usd")
    assert fraud_review_required(amount=Decimal("1000.01"), currency="USD")
    # Yen have no default: without a threshold every yen order is reviewed.
    assert fraud_review_threshold(currency="jpy") is None
    assert fraud_review_required(amount=Decimal("100"), currency="jpy")


@override_settings(**JPY, FRAUD_REVIEW_THRESHOLD=Decimal("1000"))
def test_thresholds_per_currency():
    assert not fraud_review_required(amount=Decimal("5000"), currency="jpy")
    assert not fraud_review_required(amount=Decimal("150000"), currency="jpy")
    assert fraud_review_required(amount=Decimal("150001"), currency="jpy")
    assert fraud_review_required(amount=Decimal("5000"), currency="usd")
    assert check_currencies() == []


@override_settings(ORDER_CURRENCIES=["usd", "jpy", "kwd"], FRAUD_REVIEW_THRESHOLDS={})
def test_check_reports_unhandled_currencies_and_missing_thresholds():
    ids = sorted(message.id for message in check_currencies())
    assert ids == ["orders.E001", "orders.W001"]


@override_settings(**JPY)
def test_the_prompt_states_each_orders_threshold_not_a_global_one():
    assert "1000" not in SYSTEM_PROMPT and "$" not in SYSTEM_PROMPT
    prompt = start_prompt(
        order_id="o", customer_id="c", amount="5000", currency="jpy", email="a@example.com"
    )
    assert prompt.endswith("The fraud review threshold is 150000 JPY.")


@override_settings(**JPY)
def test_minimum_amounts_are_per_currency():
    with pytest.raises(ValueError, match=r"at least 50 \(JPY\)"):
        OrderPayload(
            order_id="o", customer_id="c", customer_email="a@example.com", amount=49, currency="jpy"
        )
    with pytest.raises(ValueError, match="no decimal places"):
        OrderPayload(
            order_id="o",
            customer_id="c",
            customer_email="a@example.com",
            amount="500.5",
            currency="jpy",
        )


# --- through the workflow, with the real stripe SDK -------------------------------------


@pytest.fixture
def yen(settings):
    settings.LLM_PROVIDER = "simulated"
    settings.SIMULATED_MODEL_LATENCY = 0
    settings.ORDER_CURRENCIES = ["usd", "jpy"]
    settings.FRAUD_REVIEW_THRESHOLDS = {"jpy": Decimal(150000)}


def place_yen(amount: str, order_id: str) -> Order:
    order, _ = order_create(
        payload=OrderPayload(
            order_id=order_id,
            customer_id="cus_yen",
            customer_email="hana@example.com",
            amount=Decimal(amount),
            currency="JPY",
        )
    )
    return order


@pytest.mark.django_db(transaction=True)
def test_500_jpy_is_sent_to_stripe_as_500(yen, stripe_server, queue_capture):
    order = place_yen("500", "yen-500")
    assert queue_capture.drain() == ["completed"]
    order.refresh_from_db()
    [intent] = stripe_server.successful_charges()
    assert (intent["amount"], intent["currency"]) == (500, "jpy")
    assert order.status == "completed" and not order.fraud_review_required
    assert order.charged_amount == Decimal("500")
    [message] = mail.outbox
    assert "500 JPY" in message.body and "50,000" not in message.body


@pytest.mark.django_db(transaction=True)
def test_5000_jpy_does_not_go_to_review(yen, queue_capture, settings):
    settings.PAYMENT_GATEWAY = "simulated"
    order = place_yen("5000", "yen-5000")
    assert queue_capture.drain() == ["completed"]
    order.refresh_from_db()
    assert order.status == "completed" and not order.fraud_review_required
    assert order.run.output["fraud_review_required"] is False


@pytest.mark.django_db(transaction=True)
def test_a_rejected_yen_order_is_reversed_in_yen(yen, stripe_server, queue_capture, reviewer):
    order = place_yen("200000", "yen-200000")
    assert queue_capture.drain() == ["suspended"]
    order.refresh_from_db()
    assert order.status == "awaiting_review"
    assert order.run.waits.get().data["amount"] == "200000"
    review_decide(order=order, approved=False, by=reviewer)
    queue_capture.drain()
    order.refresh_from_db()
    assert order.run.status == RunStatus.COMPLETED and order.status == "rejected"
    # Charged then refunded, or (holds) authorized then cancelled: in yen, either way.
    [intent] = stripe_server.payment_intents.values()
    assert (intent["amount"], intent["currency"]) == (200000, "jpy")
    assert all(r["amount"] == 200000 for r in stripe_server.refunds_for(intent["id"]))


@pytest.mark.django_db
def test_the_api_shows_yen_without_decimals(yen, settings, queue_capture):
    from django.contrib.auth.models import User

    settings.PAYMENT_GATEWAY = "simulated"
    api = api_client_for(User.objects.create_user("yen-client"))
    body = {
        "order_id": "yen-api",
        "customer_id": "cus_yen",
        "customer_email": "hana@example.com",
        "amount": 500,
        "currency": "jpy",
    }
    created = api.post("/api/orders/", body, format="json")
    assert created.status_code == 201, created.content
    assert created.json()["amount"] == "500"
    refused = api.post("/api/orders/", {**body, "order_id": "yen-2", "amount": "0.5"})
    assert refused.status_code == 400 and list(refused.json()) == ["amount"]
