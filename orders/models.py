"""Orders, the confirmation emails sent for them, and the fraud-review queue.

A fraud review is not a table of its own: it is the engine's `Wait` at the
`fraud_review` key of an order's run, seen through the `FraudReview` proxy, so the
review and the suspended workflow can never disagree.
"""

from decimal import Decimal

from django.conf import settings
from django.db import models
from django.utils import timezone

from workflows.models import Wait, WaitStatus, WorkflowRun

FRAUD_REVIEW_KEY = "fraud_review"
ORDER_WORKFLOW_ID = "order_processing"


class OrderStatus(models.TextChoices):
    PROCESSING = "processing"
    AWAITING_REVIEW = "awaiting_review"
    COMPLETED = "completed"
    REJECTED = "rejected"
    FAILED = "failed"


class Order(models.Model):
    # The API client (user) that submitted the order; its order ids and idempotency keys
    # are its own. Null for orders started from the console or by commands.
    client = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="orders",
    )
    order_id = models.CharField(max_length=64, db_index=True)
    customer_id = models.CharField(max_length=255)
    customer_email = models.EmailField()
    amount = models.DecimalField(max_digits=12, decimal_places=2)
    currency = models.CharField(max_length=3, default="usd")
    status = models.CharField(max_length=20, choices=OrderStatus, default=OrderStatus.PROCESSING)
    failure_reason = models.CharField(
        max_length=255, blank=True, help_text="Why the order failed or was rejected."
    )
    # What the client sent, hashed: a repeat with the same body is a retry, with another
    # body a conflict.
    request_fingerprint = models.CharField(max_length=64)
    # NULL, not "", when absent: the unique constraints below must allow many of those.
    idempotency_key = models.CharField(max_length=255, null=True, blank=True)  # noqa: DJ001
    run = models.OneToOneField(
        WorkflowRun, null=True, blank=True, on_delete=models.PROTECT, related_name="order"
    )
    charge_id = models.CharField(max_length=255, blank=True)
    charged_amount = models.DecimalField(max_digits=12, decimal_places=2, null=True, blank=True)
    charged_at = models.DateTimeField(null=True, blank=True)
    refund_id = models.CharField(max_length=255, blank=True)
    refunded_at = models.DateTimeField(null=True, blank=True)
    fraud_review_required = models.BooleanField(default=False)
    fraud_approved = models.BooleanField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-created_at"]
        indexes = [
            models.Index(fields=["status", "-created_at"], name="order_status_created_idx"),
            models.Index(fields=["customer_id"], name="order_customer_idx"),
        ]
        constraints = [
            models.CheckConstraint(condition=models.Q(amount__gt=0), name="order_amount_positive"),
            # Per client; NULLs are distinct in a unique index, hence the partial ones for
            # orders without a client.
            models.UniqueConstraint(fields=["client", "order_id"], name="order_id_per_client"),
            models.UniqueConstraint(
                fields=["order_id"],
                condition=models.Q(client__isnull=True),
                name="order_id_without_client",
            ),
            models.UniqueConstraint(
                fields=["client", "idempotency_key"], name="order_idempotency_key_per_client"
            ),
            models.UniqueConstraint(
                fields=["idempotency_key"],
                condition=models.Q(client__isnull=True),
                name="order_idempotency_key_without_client",
            ),
        ]

    def __str__(self) -> str:
        return f"Order {self.order_id}"

    @property
    def amount_minor(self) -> int:
        """The amount in the currency's minor unit (cents), as Stripe expects it."""
        return int((self.amount * 100).to_integral_value())

    @property
    def email_sent(self) -> bool:
        return self.emails.filter(status=EmailStatus.SENT).exists()


class EmailStatus(models.TextChoices):
    SENDING = "sending"
    SENT = "sent"
    FAILED = "failed"


class EmailRecord(models.Model):
    """Every message sent for an order. The unique (order, kind) row is claimed before
    sending, so a retried step can never send a second confirmation."""

    order = models.ForeignKey(Order, on_delete=models.PROTECT, related_name="emails")
    kind = models.CharField(max_length=30, default="confirmation")
    recipient = models.EmailField()
    subject = models.CharField(max_length=255)
    message_id = models.CharField(max_length=255, blank=True)
    status = models.CharField(max_length=10, choices=EmailStatus, default=EmailStatus.SENDING)
    error = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    sent_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            models.UniqueConstraint(fields=["order", "kind"], name="email_once_per_order_kind"),
        ]

    def __str__(self) -> str:
        return f"{self.kind} to {self.recipient} ({self.status})"


class ReviewState(models.TextChoices):
    PENDING = "pending"
    APPROVED = "approved"
    REJECTED = "rejected"
    EXPIRED = "expired"
    CANCELLED = "cancelled"


class FraudReviewQuerySet(models.QuerySet):
    def pending(self) -> "FraudReviewQuerySet":
        return self.filter(status=WaitStatus.WAITING)

    def in_state(self, state: str) -> "FraudReviewQuerySet":
        if state == ReviewState.PENDING:
            return self.pending()
        if state == ReviewState.APPROVED:
            return self.filter(status=WaitStatus.RESUMED, resume_data__approved=True)
        if state == ReviewState.REJECTED:
            return self.filter(status=WaitStatus.RESUMED).exclude(resume_data__approved=True)
        return self.filter(status=state)


class FraudReviewManager(models.Manager.from_queryset(FraudReviewQuerySet)):  # type: ignore[misc]
    def get_queryset(self) -> FraudReviewQuerySet:
        return (
            super().get_queryset().filter(key=FRAUD_REVIEW_KEY, run__workflow_id=ORDER_WORKFLOW_ID)
        )


class FraudReview(Wait):
    """An order's run suspended at `fraud_review`, as the reviewers' queue sees it."""

    objects = FraudReviewManager()

    class Meta:
        proxy = True
        verbose_name = "fraud review"
        permissions = [("decide_fraud_review", "Can approve or reject fraud reviews")]

    def __str__(self) -> str:
        return f"Fraud review of order {self.data.get('order_id', '?')}"

    @property
    def state(self) -> ReviewState:
        if self.status == WaitStatus.RESUMED:
            approved = (self.resume_data or {}).get("approved") is True
            return ReviewState.APPROVED if approved else ReviewState.REJECTED
        if self.status == WaitStatus.WAITING:
            return ReviewState.PENDING
        return ReviewState(self.status)

    @property
    def is_open(self) -> bool:
        return self.status == WaitStatus.WAITING and self.deadline > timezone.now()

    @property
    def note(self) -> str:
        return (self.resume_data or {}).get("note", "")

    @property
    def amount(self) -> Decimal:
        return Decimal(str(self.data.get("amount", "0")))
