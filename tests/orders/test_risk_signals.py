"""Risk signals for fraud reviewers: the figures, on the review page and in the queue,
at a query count that does not grow with the customer's history, and Stripe's own risk
evaluation when the gateway returns it."""

import re
from datetime import timedelta
from decimal import Decimal

import pytest
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from orders.models import FraudReview, Order, OrderStatus, PaymentStatus
from orders.risk import order_risk_signals, review_risk_signals

pytestmark = pytest.mark.django_db(transaction=True)

CHANGELIST = reverse("admin:orders_fraudreview_changelist")
CUSTOMER = "cus_risky"
EMAIL = "eve@fresh.example"


@pytest.fixture(autouse=True)
def simulated(settings):
    settings.LLM_PROVIDER = "simulated"
    settings.PAYMENT_GATEWAY = "simulated"


def past_order(
    order_id: str,
    *,
    ago: timedelta,
    amount: str = "100.00",
    status: str = OrderStatus.COMPLETED,
    payment_status: str = PaymentStatus.CAPTURED,
    customer_id: str = CUSTOMER,
    email: str = EMAIL,
    currency: str = "usd",
) -> Order:
    order = Order.objects.create(
        order_id=order_id,
        customer_id=customer_id,
        customer_email=email,
        amount=Decimal(amount),
        currency=currency,
        status=status,
        payment_status=payment_status,
        request_fingerprint="-",
    )
    Order.objects.filter(pk=order.pk).update(created_at=timezone.now() - ago)  # auto_now_add
    return order


def history(count: int, *, prefix: str = "old") -> None:
    """`count` completed 100.00 USD orders of the customer, a month and more ago."""
    for n in range(count):
        past_order(f"{prefix}-{n}", ago=timedelta(days=30 + n))


@pytest.fixture
def review_of(queue_capture, place_order):
    def review_of(amount: str = "2500.00", **kwargs) -> tuple[Order, FraudReview]:
        order = place_order(amount, customer_id=CUSTOMER, email=EMAIL, **kwargs)
        assert queue_capture.drain() == ["suspended"]
        order.refresh_from_db()
        return order, FraudReview.objects.get(run_id=order.run_id)

    return review_of


def cell(html: str, name: str) -> str:
    match = re.search(rf'class="risk-{name}">(.*?)</td>', html, re.S)
    assert match, name
    return re.sub(r"<[^>]+>", "", match.group(1)).strip()


def test_figures_for_a_customer_with_history(review_of, reviewer):
    past_order("paid-1", ago=timedelta(days=40), amount="400.00")
    past_order("paid-2", ago=timedelta(days=20), amount="600.00")
    past_order("paid-3", ago=timedelta(hours=2), amount="500.00")  # within 24 h
    past_order("eur", ago=timedelta(days=10), amount="9000.00", currency="eur")
    past_order(
        "rejected", ago=timedelta(days=5), status=OrderStatus.REJECTED,
        payment_status=PaymentStatus.CANCELED,
    )  # fmt: skip
    past_order("refunded", ago=timedelta(days=4), payment_status=PaymentStatus.REFUNDED)
    past_order("part", ago=timedelta(days=3), payment_status=PaymentStatus.PARTIALLY_REFUNDED)
    past_order("disputed", ago=timedelta(days=2), payment_status=PaymentStatus.DISPUTED)
    # Same email, another customer id, an hour ago; same domain, long ago.
    past_order("alias", ago=timedelta(hours=1), customer_id="cus_alias")
    past_order("domain", ago=timedelta(days=90), customer_id="cus_other", email="bob@Fresh.example")
    past_order("stranger", ago=timedelta(hours=1), customer_id="cus_x", email="x@elsewhere.test")
    order, review = review_of("2500.00")

    risk = order_risk_signals(order=order)
    assert risk.orders == 8  # every earlier order of cus_risky, any status and currency
    assert (risk.rejections, risk.refunds, risk.disputes) == (1, 2, 1)
    # Completed USD orders: 400 + 600 + 500 + refunded 100 + part 100 + disputed 100.
    assert risk.paid_orders == 6 and risk.paid_total == Decimal("1800.00")
    assert risk.average == Decimal("300.00") and risk.amount_ratio == Decimal("8.3")
    assert (risk.customer_24h, risk.email_24h) == (1, 2)
    assert risk.email_domain == "fresh.example" and not risk.domain_new
    assert risk.domain_first_seen.date() == (timezone.now() - timedelta(days=90)).date()
    assert risk == review_risk_signals(review=review)

    client = Client()
    client.force_login(reviewer)
    html = client.get(reverse("admin:orders_fraudreview_change", args=[review.pk])).text
    assert cell(html, "orders") == "8"
    assert cell(html, "paid") == "6 completed, 1800.00 USD in total, 300.00 USD on average"
    assert cell(html, "ratio") == "8.3x the customer's average"
    assert (cell(html, "rejections"), cell(html, "refunds"), cell(html, "disputes")) == (
        "1",
        "2",
        "1",
    )
    assert cell(html, "velocity") == "1 by this customer, 2 by this email"
    first_seen = risk.domain_first_seen.strftime("%Y-%m-%d")
    assert cell(html, "domain") == f"fresh.example: first seen {first_seen}"
    assert cell(html, "stripe") == "—"  # the simulated gateway has no risk evaluation

    # The queue shows the same flags as short chips, their details in the chips' titles.
    queue = client.get(CHANGELIST).text
    assert "1 rejected: 8 earlier orders" in queue and "2 refunded, 1 disputed" in queue
    assert "8.3\u00d7" in queue and "1 by customer, 2 by email" in queue
    assert f"fresh.example: first seen {first_seen}" in queue


def test_a_first_order_from_a_new_domain(review_of, reviewer):
    past_order("other", ago=timedelta(days=1), customer_id="cus_x", email="x@elsewhere.test")
    order, review = review_of("2500.00")
    risk = order_risk_signals(order=order)
    assert (risk.orders, risk.paid_orders, risk.average, risk.amount_ratio) == (0, 0, None, None)
    assert (risk.customer_24h, risk.email_24h) == (0, 0)
    assert risk.domain_new and risk.domain_first_seen == order.created_at

    client = Client()
    client.force_login(reviewer)
    html = client.get(reverse("admin:orders_fraudreview_change", args=[review.pk])).text
    assert cell(html, "domain") == "fresh.example: new (this is its first order)"
    assert cell(html, "ratio") == "no completed order to compare with"
    queue = client.get(CHANGELIST).text
    assert "new: fresh.example" in queue and "its first order" in queue


def queries(client: Client, url: str) -> int:
    with CaptureQueriesContext(connection) as captured:
        assert client.get(url).status_code == 200
    return len(captured)


def test_query_count_does_not_grow_with_history(review_of, reviewer, queue_capture, place_order):
    history(3)
    order, review = review_of("2500.00")
    client = Client()
    client.force_login(reviewer)
    page = reverse("admin:orders_fraudreview_change", args=[review.pk])
    client.get(page), client.get(CHANGELIST)  # warm the session and caches
    small = (queries(client, page), queries(client, CHANGELIST))

    history(27, prefix="more")
    assert order_risk_signals(order=order).orders == 30
    assert (queries(client, page), queries(client, CHANGELIST)) == small

    # Nor with the rows of the queue's page: two more reviews, their own histories.
    for n, customer in enumerate(("cus_b", "cus_c")):
        for k in range(5):
            past_order(f"{customer}-{k}", ago=timedelta(days=3 + k), customer_id=customer)
        place_order("3000.00", order_id=f"big-{n}", customer_id=customer)
    assert queue_capture.drain() == ["suspended", "suspended"]
    html = client.get(CHANGELIST).text
    assert html.count(": 5 earlier orders") == 2 and ": 30 earlier orders" in html
    assert queries(client, CHANGELIST) == small[1]


def test_stripe_risk_evaluation_is_shown(stripe_server, review_of, reviewer):
    stripe_server.risk_level, stripe_server.risk_score = "elevated", 67
    order, review = review_of("2500.00")
    assert (order.stripe_risk_level, order.stripe_risk_score) == ("elevated", 67)
    # Read from the create's own answer, its latest charge expanded: no second request.
    [create] = [r for r in stripe_server.requests if r.path == "/v1/payment_intents"]
    assert create.method == "POST" and create.params.get("expand") == ["latest_charge"]
    assert not [r for r in stripe_server.requests if r.path.startswith("/v1/payment_intents/")]

    client = Client()
    client.force_login(reviewer)
    html = client.get(reverse("admin:orders_fraudreview_change", args=[review.pk])).text
    assert cell(html, "stripe") == "elevated (67)"
    assert "elevated (67)" in client.get(CHANGELIST).text
