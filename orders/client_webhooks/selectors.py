"""Reads of client webhooks: a client's own endpoints, and the failed deliveries."""

from django.contrib.auth.models import User
from django.db.models import QuerySet

from ..errors import NotFound
from .models import DeliveryStatus, WebhookDelivery, WebhookEndpoint


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
