"""The orders side of `GET /metrics` (the engine's side and the endpoint itself are in
`workflows/observability/`, whose docstrings say how the two sources combine).

Process-local counters (prometheus-client multiprocess mode: counted in whichever web or
worker process the event happens, merged at scrape time):

- `orders_payment_operations_total{operation,gateway}` and
  `orders_payment_failures_total{operation,gateway,error}`: every call of
  charge/refund/capture/cancel on the gateway that `orders.payments.payment_gateway()`
  returns, through `InstrumentedGateway`; `error` is the exception's class name
  (`PaymentDeclinedError`, `CaptureFailedError`, `TransientPaymentError`, ...). A call is
  counted where it happens, so a retried step counts each attempt (what the gateway saw).
- `orders_stripe_webhook_events_received_total{event_type}` and
  `orders_stripe_webhook_events_rejected_total{event_type,reason}`: counted by the
  webhook view through `stripe_webhook_counted`.

Database-backed, read at scrape time by `OrdersCollector` (a metrics collector hook,
registered in `orders/apps.py`): they are the state of the review queue, which no process
could count.

- `orders_fraud_reviews_open`: reviews waiting for a decision.
- `orders_fraud_review_oldest_age_seconds`: how long the oldest of them has waited (0
  when none): one query for both.
"""

import re
import threading
import time
from collections.abc import Iterator
from typing import Any

from prometheus_client import Counter
from prometheus_client.core import GaugeMetricFamily, Metric

PAYMENT_OPERATIONS = Counter(
    "orders_payment_operations",
    "Payment gateway operations attempted, by operation (charge, refund, capture, cancel).",
    ["operation", "gateway"],
)
PAYMENT_FAILURES = Counter(
    "orders_payment_failures",
    "Payment gateway operations that raised, by operation and error class.",
    ["operation", "gateway", "error"],
)
WEBHOOK_RECEIVED = Counter(
    "orders_stripe_webhook_events_received",
    "Stripe webhook requests received, by event type.",
    ["event_type"],
)
WEBHOOK_REJECTED = Counter(
    "orders_stripe_webhook_events_rejected",
    "Stripe webhook requests rejected (bad signature, malformed...), by event type.",
    ["event_type", "reason"],
)

CLIENT_WEBHOOK_ATTEMPTS = Counter(
    "orders_client_webhook_attempts",
    "Deliveries of order events to clients' webhook endpoints, by event type and outcome "
    "(delivered: a 2xx; failed: any other answer, or none).",
    ["event_type", "outcome"],
)

OPERATIONS = ("charge", "refund", "capture", "cancel")


class InstrumentedGateway:
    """A payment gateway that counts its operations and their failures; everything else
    (its `name`, its client) is the wrapped gateway's. Methods are looked up on the
    wrapped gateway at each call, so patching the gateway class still takes effect."""

    def __init__(self, gateway: Any) -> None:
        self._gateway = gateway

    def __getattr__(self, name: str) -> Any:
        return getattr(self._gateway, name)

    def __repr__(self) -> str:
        return f"InstrumentedGateway({self._gateway!r})"

    def _counted(self, operation: str, kwargs: dict[str, Any]) -> Any:
        gateway_name = getattr(self._gateway, "name", type(self._gateway).__name__)
        PAYMENT_OPERATIONS.labels(operation, gateway_name).inc()
        try:
            return getattr(self._gateway, operation)(**kwargs)
        except Exception as exc:
            PAYMENT_FAILURES.labels(operation, gateway_name, type(exc).__name__).inc()
            raise

    def charge(self, **kwargs: Any) -> Any:
        return self._counted("charge", kwargs)

    def refund(self, **kwargs: Any) -> Any:
        return self._counted("refund", kwargs)

    def capture(self, **kwargs: Any) -> Any:
        return self._counted("capture", kwargs)

    def cancel(self, **kwargs: Any) -> Any:
        return self._counted("cancel", kwargs)


def instrumented(gateway: Any) -> InstrumentedGateway:
    """`gateway` wrapped in its counting proxy (`orders.payments` caches one per
    configuration)."""
    return InstrumentedGateway(gateway)


# Stripe's event types look like `charge.dispute.created`; anything else (or a type from a
# request that failed verification) would let a sender invent label values.
_EVENT_TYPE = re.compile(r"^[a-z][a-z0-9_]*(\.[a-z0-9_]+){1,4}$")
MAX_EVENT_TYPES = 200
_event_types: set[str] = set()
_event_types_lock = threading.Lock()


def _event_label(event_type: str | None) -> str:
    if not event_type:
        return "unverified"
    if not _EVENT_TYPE.match(event_type) or len(event_type) > 80:
        return "other"
    if event_type not in _event_types:
        with _event_types_lock:
            if len(_event_types) >= MAX_EVENT_TYPES:
                return "other"
            _event_types.add(event_type)
    return event_type


def stripe_webhook_counted(
    event_type: str | None, accepted: bool, *, reason: str = "rejected"
) -> None:
    """Count one request to the Stripe webhook, once, when its fate is known.

    `event_type`: the event's `type` (`payment_intent.succeeded`...) once the signature
    has been verified; None for a request refused before that (bad or missing signature,
    unparsable body): a forged request must not choose label values. `accepted`: False
    when the request was refused. `reason`: a short fixed word for a refusal
    (`signature`, `malformed`, `unknown_object`...), never text from the request.
    A duplicate delivery that is acknowledged without effect counts as accepted.
    """
    label = _event_label(event_type)
    WEBHOOK_RECEIVED.labels(label).inc()
    if not accepted:
        WEBHOOK_REJECTED.labels(label, reason).inc()


def client_webhook_attempt_counted(*, event_type: str, delivered: bool) -> None:
    """Count one delivery attempt to a client's endpoint (`event_type` is one of the
    service's own event types, never the client's text)."""
    CLIENT_WEBHOOK_ATTEMPTS.labels(event_type, "delivered" if delivered else "failed").inc()


class OrdersCollector:
    """The review queue, read from the database when scraped (one query)."""

    def collect(self) -> Iterator[Metric]:
        from django.db.models import Count, Min

        from .models import FraudReview

        summary = FraudReview.objects.pending().aggregate(n=Count("pk"), oldest=Min("created_at"))
        yield GaugeMetricFamily(
            "orders_fraud_reviews_open",
            "Fraud reviews waiting for a decision (database).",
            value=summary["n"],
        )
        oldest = summary["oldest"]
        yield GaugeMetricFamily(
            "orders_fraud_review_oldest_age_seconds",
            "Age of the oldest fraud review waiting for a decision, 0 when none (database).",
            value=max(0.0, time.time() - oldest.timestamp()) if oldest else 0.0,
        )
