"""Reads of client webhooks: a client's own endpoints, the failed deliveries, and the
endpoints' health (admin, dashboard)."""

from datetime import datetime
from typing import Any

from django.contrib.auth.models import User
from django.db.models import Case, Count, F, OuterRef, Q, QuerySet, Subquery, Value, When

from workflows.engine.dashboard import trunc_hour

from ..errors import NotFound
from .models import DeliveryStatus, WebhookAttempt, WebhookDelivery, WebhookEndpoint


def webhook_endpoint_list_for(*, client: User) -> QuerySet[WebhookEndpoint]:
    """The API client's own webhook endpoints, newest first."""
    return WebhookEndpoint.objects.filter(client=client).order_by("-created_at", "-pk")


def webhook_endpoint_get_for(*, client: User, endpoint_id: int | str) -> WebhookEndpoint:
    """The API client's own endpoint with that id, or `NotFound` (another client's, or a
    malformed id, too), which the API answers as 404."""
    try:
        pk = int(endpoint_id)
    except (TypeError, ValueError):
        raise NotFound(f"No webhook endpoint {endpoint_id}") from None
    endpoint = WebhookEndpoint.objects.filter(client=client, pk=pk).first()
    if endpoint is None:
        raise NotFound("No WebhookEndpoint matches the given query.")
    return endpoint


def webhook_deliveries_failed() -> QuerySet[WebhookDelivery]:
    """Deliveries whose every attempt failed, oldest first (what `webhooks_retry
    --failed` sends again)."""
    return WebhookDelivery.objects.filter(status=DeliveryStatus.FAILED).order_by("created_at")


RECENT_DELIVERIES = 20
"""How many of its latest deliveries an endpoint's admin page shows."""


def webhook_endpoints_failing(*, limit: int = 10) -> QuerySet[WebhookEndpoint]:
    """Endpoints whose last attempts failed, or that were disabled, the longest failing
    first (their clients joined)."""
    return (
        WebhookEndpoint.objects.filter(Q(failed_attempts__gt=0) | Q(enabled=False))
        .select_related("client")
        .order_by(F("failing_since").asc(nulls_last=True), "pk")[:limit]
    )


def webhook_endpoints_failing_count() -> dict[str, int]:
    """{"failing": endpoints whose last attempt failed, "disabled": ..., "all": ...}."""
    return WebhookEndpoint.objects.aggregate(
        failing=Count("pk", filter=Q(failed_attempts__gt=0)),
        disabled=Count("pk", filter=Q(enabled=False)),
        all=Count("pk"),
    )


def webhook_attempts_by_hour(*, since: datetime) -> list[tuple[datetime, str, int]]:
    """(hour, "delivered" or "failed", count) of the attempts since `since`: one query."""
    delivered = Q(status_code__gte=200, status_code__lt=300)
    rows = (
        WebhookAttempt.objects.filter(at__gte=since)
        .annotate(
            bucket=trunc_hour("at"),
            outcome=Case(When(delivered, then=Value("delivered")), default=Value("failed")),
        )
        .order_by()
        .values_list("bucket", "outcome")
        .annotate(n=Count("pk"))
    )
    return [(bucket, outcome, n) for bucket, outcome, n in rows]


def webhook_deliveries_recent(*, endpoint: WebhookEndpoint) -> list[WebhookDelivery]:
    """The endpoint's latest deliveries (RECENT_DELIVERIES), each with its last
    attempt's answer (`last_status_code`, `last_error`) and its order: one query."""
    last = WebhookAttempt.objects.filter(delivery=OuterRef("pk")).order_by("-number")
    return list(
        WebhookDelivery.objects.filter(endpoint=endpoint)
        .select_related("order")
        .annotate(
            last_status_code=Subquery(last.values("status_code")[:1]),
            last_error=Subquery(last.values("error")[:1]),
        )
        .order_by("-created_at", "-pk")[:RECENT_DELIVERIES]
    )


def delivery_run_ids_matching(text: str) -> QuerySet[WebhookDelivery, Any]:
    """The delivery runs of the orders whose order id or customer id is `text`."""
    return (
        WebhookDelivery.objects.filter(Q(order__order_id=text) | Q(order__customer_id=text))
        .exclude(run_id=None)
        .values("run_id")
    )
