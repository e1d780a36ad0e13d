"""The orders side of `GET /metrics`, after a mixed set of orders run in-process with the
simulated model and gateway: payment operations and failures, the review queue, model
calls, runs; and the webhook counters the Stripe webhook will call."""

from collections import Counter
from typing import Any

import pytest

from orders import metrics
from orders.models import Order
from orders.payments import SimulatedGateway, payment_gateway
from orders.services.reviews import review_decide
from tests.workflows.test_metrics import Scrape, scrape
from workflows.models import StepRecord

pytestmark = pytest.mark.django_db(transaction=True)

TOKEN = "metrics-test-token-0123456789"


@pytest.fixture(autouse=True)
def simulated(settings):
    settings.LLM_PROVIDER = "simulated"
    settings.PAYMENT_GATEWAY = "simulated"
    settings.METRICS_TOKEN = TOKEN


@pytest.fixture
def gateway_calls(monkeypatch) -> Counter:
    """What the gateway itself saw, (operation, outcome) → calls: the reference the
    metrics are checked against (the flow decides how many calls an order makes)."""
    calls: Counter = Counter()
    for operation in metrics.OPERATIONS:
        original = getattr(SimulatedGateway, operation)

        def spy(self: Any, *args: Any, _original: Any = original, _op: str = operation, **kw):
            try:
                result = _original(self, *args, **kw)
            except Exception as exc:
                calls[(_op, type(exc).__name__)] += 1
                raise
            calls[(_op, "ok")] += 1
            return result

        monkeypatch.setattr(SimulatedGateway, operation, spy)
    return calls


def delta(before: Scrape, after: Scrape, name: str, **labels: str) -> float:
    return after.value(name, **labels) - before.value(name, **labels)


def test_scrape_after_a_mixed_set_of_orders(
    client, queue_capture, place_order, reviewer, gateway_calls
):
    assert payment_gateway().name == "simulated"
    before = scrape(client)

    small = place_order("250.00")
    declined = place_order("42.13")  # insufficient funds at the simulated gateway
    approved = place_order("1000.01", order_id="ord-approved")
    rejected = place_order("2500.00", order_id="ord-rejected")
    queue_capture.drain()
    waiting = scrape(client)
    assert waiting.value("orders_fraud_reviews_open") == 2
    assert 0 <= waiting.value("orders_fraud_review_oldest_age_seconds") < 120
    assert waiting.value("workflows_runs", workflow="order_processing", status="suspended") == 2

    review_decide(order=approved, approved=True, by=reviewer)
    review_decide(order=rejected, approved=False, by=reviewer)
    queue_capture.drain()
    after = scrape(client)
    statuses = {o.order_id: o.status for o in Order.objects.all()}
    assert statuses == {
        small.order_id: "completed",
        declined.order_id: "failed",
        "ord-approved": "completed",
        "ord-rejected": "rejected",
    }

    # The review queue is empty again.
    assert after.value("orders_fraud_reviews_open") == 0
    assert after.value("orders_fraud_review_oldest_age_seconds") == 0
    assert after.value("workflows_metrics_collector_up", collector="OrdersCollector") == 1
    # Runs, from the database.
    assert after.value("workflows_runs", workflow="order_processing", status="completed") == 4

    # Payments: every call the gateway saw, by operation, and the failures by error.
    attempts = Counter()
    for (operation, _), calls in gateway_calls.items():
        attempts[operation] += calls
    assert attempts["charge"] >= 4 and attempts["capture"] >= 1 and attempts["cancel"] >= 1
    for operation in metrics.OPERATIONS:
        seen = delta(
            before,
            after,
            "orders_payment_operations_total",
            operation=operation,
            gateway="simulated",
        )
        assert seen == attempts[operation], operation
    assert gateway_calls[("charge", "PaymentDeclinedError")] >= 1
    for (operation, outcome), calls in gateway_calls.items():
        if outcome != "ok":
            failures = delta(
                before, after, "orders_payment_failures_total", operation=operation, error=outcome
            )
            assert failures == calls, (operation, outcome)
    assert delta(before, after, "orders_payment_failures_total") == sum(
        calls for (_, outcome), calls in gateway_calls.items() if outcome != "ok"
    )

    # Model calls: one per executed `llm` step, though the approved and rejected runs
    # replayed theirs when they resumed.
    llm_steps = StepRecord.objects.filter(kind="llm", run__workflow_id="order_processing")
    assert llm_steps.count() >= 4
    model = {"provider": "simulated"}
    assert delta(before, after, "workflows_model_calls_total", **model) == llm_steps.count()
    prompt_tokens = sum(s.meta["usage"]["prompt_tokens"] for s in llm_steps)
    assert delta(before, after, "workflows_model_tokens_total", type="prompt") == prompt_tokens


def test_webhook_counters(client):
    before = scrape(client)
    metrics.stripe_webhook_counted("payment_intent.succeeded", True)
    metrics.stripe_webhook_counted("payment_intent.succeeded", True)
    metrics.stripe_webhook_counted("charge.dispute.created", False, reason="unknown_object")
    metrics.stripe_webhook_counted(None, False, reason="signature")
    metrics.stripe_webhook_counted("<script>", False, reason="malformed")
    after = scrape(client)

    received = "orders_stripe_webhook_events_received_total"
    rejected = "orders_stripe_webhook_events_rejected_total"
    assert delta(before, after, received, event_type="payment_intent.succeeded") == 2
    assert delta(before, after, rejected, event_type="payment_intent.succeeded") == 0
    assert delta(before, after, received, event_type="charge.dispute.created") == 1
    assert (
        delta(before, after, rejected, event_type="charge.dispute.created", reason="unknown_object")
        == 1
    )
    # A request refused before its signature was verified chooses no label value.
    assert delta(before, after, rejected, event_type="unverified", reason="signature") == 1
    assert delta(before, after, rejected, event_type="other", reason="malformed") == 1
    assert delta(before, after, received) == 5 and delta(before, after, rejected) == 3
    assert delta(before, after, received, event_type="<script>") == 0
