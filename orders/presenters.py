"""An order as its client sees it, in JSON types: the API's order body and the `data`
of a webhook event. One home, so that the two can never disagree; the API's
serializer renders through it and keeps only the schema."""

from collections.abc import Callable
from datetime import datetime
from typing import Any
from urllib.parse import quote

from django.urls import NoReverseMatch, reverse
from django.utils import timezone

from workflows.engine.selectors import usage_cost

from .models import FraudReview, Order
from .money import amount_plain
from .risk import review_risk_signals
from .selectors import (
    order_email_sent,
    order_failure_shown,
    order_review_info,
    order_status_shown,
    order_waiting_for,
    review_order,
)


def _path(location: str) -> str:
    return location


def datetime_text(moment: datetime | None) -> str | None:
    """ISO 8601 in the current time zone, `Z` for UTC (as DRF writes datetimes)."""
    if moment is None:
        return None
    text = timezone.localtime(moment).isoformat()
    return text[:-6] + "Z" if text.endswith("+00:00") else text


def order_url(order_id: str) -> str:
    """The order's API path; an id the URL pattern cannot hold (a row older than the
    rules) is percent-encoded rather than failing the whole list."""
    try:
        return reverse("api:order-detail", kwargs={"order_id": order_id})
    except NoReverseMatch:
        return reverse("api:order-detail", kwargs={"order_id": quote(order_id, safe="")})


def order_links(order: Order, *, link: Callable[[str], str] = _path) -> dict[str, str | None]:
    """The order's, its run's and its trace page's addresses, each passed to `link`
    (a request's `build_absolute_uri`, or a base URL's join)."""
    self_url = link(order_url(order.order_id))
    if order.run_id is None:
        return {"self": self_url, "run": None, "trace": None}
    return {
        "self": self_url,
        "run": link(reverse("api:run-detail", kwargs={"run_id": order.run_id})),
        "trace": link(reverse("workflows:run_detail", args=[order.run_id])),
    }


def order_review_presented(order: Order) -> dict[str, Any] | None:
    info = order_review_info(order)
    if info is None:
        return None
    return {
        "id": info["id"],
        "state": info["state"],
        "decided_by": info["decided_by"],
        "decided_at": datetime_text(info["decided_at"]),
        "note": info["note"],
        "deadline": datetime_text(info["deadline"]),
    }


def order_presented(order: Order, *, link: Callable[[str], str] = _path) -> dict[str, Any]:
    """The order's public fields, JSON-ready; its links are passed to `link`."""
    cost = usage_cost(order.run.usage) if order.run is not None else None
    refunded = order.refunded_amount
    return {
        "order_id": order.order_id,
        "customer_id": order.customer_id,
        "customer_email": order.customer_email,
        "amount": amount_plain(order.amount, order.currency),
        "currency": order.currency,
        "status": order_status_shown(order),
        "failure_reason": order_failure_shown(order),
        "waiting_for": order_waiting_for(order),
        "payment_status": str(order.payment_status),
        "charge_id": order.charge_id,
        "refund_id": order.refund_id,
        "refunded_amount": None if refunded is None else amount_plain(refunded, order.currency),
        "email_sent": order_email_sent(order),
        "fraud_review_required": order.fraud_review_required,
        "fraud_approved": order.fraud_approved,
        "review": order_review_presented(order),
        "run_id": None if order.run_id is None else str(order.run_id),
        "model_cost_usd": None if cost is None else str(cost),
        "created_at": datetime_text(order.created_at),
        "updated_at": datetime_text(order.updated_at),
        "links": order_links(order, link=link),
    }


def _decimal_text(value: Any) -> str | None:
    return None if value is None else f"{value:f}"


def review_presented(review: FraudReview, *, link: Callable[[str], str] = _path) -> dict[str, Any]:
    """A fraud review as the reviewer API shows it: the decision so far, the order it is
    about (any client's), the risk signals and the agent's summary; from `reviews_list`
    or `review_get` (no query of its own)."""
    order = review_order(review)
    risk = review_risk_signals(review=review)
    decided_by = review.resumed_by.get_username() if review.resumed_by else None
    return {
        "id": review.pk,
        "state": str(review.state),
        "opened_at": datetime_text(review.created_at),
        "deadline": datetime_text(review.deadline),
        "decided_by": decided_by,
        "decided_at": datetime_text(review.resumed_at),
        "note": review.note,
        "agent_summary": str(review.data.get("message") or ""),
        "order": {
            "order_id": order.order_id,
            "client": order.client.get_username() if order.client else None,
            "customer_id": order.customer_id,
            "customer_email": order.customer_email,
            "amount": amount_plain(order.amount, order.currency),
            "currency": order.currency,
            "status": order_status_shown(order),
            "payment_status": str(order.payment_status),
            "charge_id": order.charge_id,
        },
        "risk": None
        if risk is None
        else {
            "orders": risk.orders,
            "rejections": risk.rejections,
            "refunds": risk.refunds,
            "disputes": risk.disputes,
            "paid_orders": risk.paid_orders,
            "paid_total": amount_plain(risk.paid_total, risk.currency),
            "average": None if risk.average is None else amount_plain(risk.average, risk.currency),
            "amount_ratio": _decimal_text(risk.amount_ratio),
            "customer_24h": risk.customer_24h,
            "email_24h": risk.email_24h,
            "email_domain": risk.email_domain,
            "domain_first_seen": datetime_text(risk.domain_first_seen),
            "domain_new": risk.domain_new,
            "stripe_risk_level": risk.stripe_risk_level,
            "stripe_risk_score": risk.stripe_risk_score,
        },
        "links": {
            "self": link(reverse("api:review-detail", kwargs={"review_id": review.pk})),
            "decision": link(reverse("api:review-decision", kwargs={"review_id": review.pk})),
            "admin": link(reverse("admin:orders_fraudreview_change", args=[review.pk])),
        },
    }
