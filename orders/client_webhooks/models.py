"""Client webhooks' records: the endpoints the intake clients register, the deliveries
of events to them, and each POST's attempt.

The tables are the ones these models had in the `orders` app (`db_table`): the move to
this app changed Django's state only (migrations `orders.0014` and this app's `0001`).
"""

from django.conf import settings
from django.db import models
from django.utils import timezone

from orders.models import Order, OrderStatus, PaymentStatus
from workflows.models import WorkflowRun


class WebhookEvent(models.TextChoices):
    """The events an intake client may subscribe to: the one list of them."""

    CREATED = "order.created"
    AWAITING_REVIEW = "order.awaiting_review"
    COMPLETED = "order.completed"
    REJECTED = "order.rejected"
    FAILED = "order.failed"
    REFUNDED = "order.refunded"
    DISPUTED = "order.disputed"
    CANCELED = "order.canceled"


# Which order status, and which payment status, each event announces.
ORDER_STATUS_EVENTS: dict[str, WebhookEvent] = {
    OrderStatus.AWAITING_REVIEW: WebhookEvent.AWAITING_REVIEW,
    OrderStatus.COMPLETED: WebhookEvent.COMPLETED,
    OrderStatus.REJECTED: WebhookEvent.REJECTED,
    OrderStatus.FAILED: WebhookEvent.FAILED,
    OrderStatus.CANCELLED: WebhookEvent.CANCELED,
}
PAYMENT_STATUS_EVENTS: dict[str, WebhookEvent] = {
    PaymentStatus.REFUNDED: WebhookEvent.REFUNDED,
    PaymentStatus.PARTIALLY_REFUNDED: WebhookEvent.REFUNDED,
    PaymentStatus.DISPUTED: WebhookEvent.DISPUTED,
}


class WebhookEndpoint(models.Model):
    """A URL an API client registered for some events. The secret is kept (every
    delivery is signed with it) but shown only when it is made: at creation and on
    rotation."""

    client = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="webhook_endpoints"
    )
    url = models.URLField(max_length=2048)
    events = models.JSONField(default=list, help_text="Event types sent to this URL.")
    secret = models.CharField(max_length=100)
    enabled = models.BooleanField(default=True)
    disabled_reason = models.CharField(max_length=255, blank=True)
    # Deliveries failed in a row (every attempt of the schedule spent); a delivered
    # one resets it. At WEBHOOKS_DISABLE_AFTER the endpoint is disabled.
    consecutive_failures = models.PositiveIntegerField(default=0)
    # Health, per attempt (`endpoint_attempt_record`): a delivery retries for about a day
    # before it counts above, so these tell a failing receiver from its first attempt.
    last_attempt_at = models.DateTimeField(null=True, blank=True)
    last_status = models.CharField(
        max_length=255, blank=True, help_text="The last attempt's answer: HTTP 503, or why none."
    )
    failing_since = models.DateTimeField(
        null=True, blank=True, help_text="The first failed attempt since the last 2xx."
    )
    failed_attempts = models.PositiveIntegerField(
        default=0,
        help_text="Attempts failed since the last 2xx, across deliveries and their retries.",
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        db_table = "orders_webhookendpoint"
        ordering = ["-created_at"]
        verbose_name = "webhook endpoint"

    def __str__(self) -> str:
        return f"{self.url} ({'enabled' if self.enabled else 'disabled'})"


class DeliveryStatus(models.TextChoices):
    PENDING = "pending"
    DELIVERED = "delivered"
    FAILED = "failed"


class WebhookDelivery(models.Model):
    """One event for one endpoint, delivered by its own `webhook_delivery` run. Unique
    per (endpoint, event id): the event id comes from the order and the event type, so
    a step that emits again (a retry, a replay) finds the row and starts nothing."""

    endpoint = models.ForeignKey(
        WebhookEndpoint, on_delete=models.CASCADE, related_name="deliveries"
    )
    event_id = models.CharField(max_length=64)
    event_type = models.CharField(max_length=40, choices=WebhookEvent)
    order = models.ForeignKey(
        Order, null=True, blank=True, on_delete=models.SET_NULL, related_name="webhook_deliveries"
    )
    payload = models.JSONField(default=dict)
    status = models.CharField(max_length=10, choices=DeliveryStatus, default=DeliveryStatus.PENDING)
    attempts = models.PositiveIntegerField(default=0)
    next_attempt_at = models.DateTimeField(null=True, blank=True)
    last_attempt_at = models.DateTimeField(null=True, blank=True)
    run = models.ForeignKey(
        WorkflowRun,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="webhook_deliveries",
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        db_table = "orders_webhookdelivery"
        ordering = ["-created_at"]
        verbose_name = "webhook delivery"
        verbose_name_plural = "webhook deliveries"
        constraints = [
            models.UniqueConstraint(
                fields=["endpoint", "event_id"], name="webhook_delivery_once_per_endpoint"
            ),
        ]
        indexes = [
            models.Index(fields=["status", "-created_at"], name="webhook_delivery_status_idx")
        ]

    def __str__(self) -> str:
        return f"{self.event_type} {self.event_id} ({self.status})"


class WebhookAttempt(models.Model):
    """One POST of a delivery, as the receiver answered it (or why it could not)."""

    delivery = models.ForeignKey(
        WebhookDelivery, on_delete=models.CASCADE, related_name="attempt_records"
    )
    number = models.PositiveIntegerField()
    status_code = models.PositiveIntegerField(null=True, blank=True)
    latency_ms = models.PositiveIntegerField(null=True, blank=True)
    response_head = models.TextField(blank=True, help_text="The first bytes of the answer.")
    error = models.TextField(blank=True)
    at = models.DateTimeField(default=timezone.now)

    class Meta:
        db_table = "orders_webhookattempt"
        ordering = ["delivery", "number"]
        verbose_name = "webhook attempt"

    def __str__(self) -> str:
        return f"attempt {self.number}: {self.status_code or self.error[:40]}"
