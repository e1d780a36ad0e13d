"""Orders, the confirmation emails sent for them, and the fraud-review queue.

A fraud review is not a table of its own: it is the engine's `Wait` at the
`fraud_review` key of an order's run, seen through the `FraudReview` proxy, so the
review and the suspended workflow can never disagree.
"""

from datetime import datetime, timedelta
from decimal import Decimal
from typing import TYPE_CHECKING, ClassVar, cast

from django.conf import settings
from django.db import DEFAULT_DB_ALIAS, models
from django.utils import timezone

from workflows.engine.compiled_queries import CompiledRead
from workflows.models import Wait, WaitStatus, WorkflowRun

if TYPE_CHECKING:
    from .risk import RiskSignals

FRAUD_REVIEW_KEY = "fraud_review"
ORDER_WORKFLOW_ID = "order_processing"


class OrderStatus(models.TextChoices):
    PROCESSING = "processing"
    AWAITING_REVIEW = "awaiting_review"
    COMPLETED = "completed"
    REJECTED = "rejected"
    FAILED = "failed"
    CANCELLED = "cancelled"


class PaymentStatus(models.TextChoices):
    """Where the order's money is. Moves only through `orders.services.payments` (see
    `PAYMENT_TRANSITIONS` there), whether the service moved it or Stripe told us."""

    NONE = "none", "no payment"
    AUTHORIZED = "authorized"  # held on the card (review pending), not captured
    CAPTURED = "captured"
    REFUNDED = "refunded"
    PARTIALLY_REFUNDED = "partially_refunded"
    DISPUTED = "disputed"
    CANCELED = "canceled"  # the hold was released: no charge at all
    FAILED = "failed"  # declined, or the capture failed (expired authorization)


class ReviewState(models.TextChoices):
    PENDING = "pending"
    APPROVED = "approved"
    REJECTED = "rejected"
    EXPIRED = "expired"
    CANCELLED = "cancelled"


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
    payment_status = models.CharField(
        max_length=20, choices=PaymentStatus, default=PaymentStatus.NONE
    )
    # The PaymentIntent: authorized (held) or captured, as `payment_status` says.
    charge_id = models.CharField(max_length=255, blank=True, db_index=True)  # Stripe webhooks
    charged_amount = models.DecimalField(max_digits=12, decimal_places=2, null=True, blank=True)
    charged_at = models.DateTimeField(null=True, blank=True)
    # When a charge was first sent towards the gateway, written before it leaves: a later
    # attempt that finds it set (and no `charge_id`) cannot know what that one did, so
    # it looks for the PaymentIntent it may have created (`orders.services.payments`).
    charge_attempted_at = models.DateTimeField(null=True, blank=True)
    refund_id = models.CharField(max_length=255, blank=True)
    refunded_at = models.DateTimeField(null=True, blank=True)
    # What was given back so far, in major units (Stripe's `amount_refunded`, or the
    # service's own refund): a partial refund is not only a status.
    refunded_amount = models.DecimalField(max_digits=12, decimal_places=2, null=True, blank=True)
    # Where the money was when the last dispute opened: a dispute won returns it there
    # (a refunded order stays refunded), one lost moves on from there.
    payment_status_before_dispute = models.CharField(
        max_length=20, choices=PaymentStatus, blank=True
    )
    # Stripe Radar's review of the payment, from `review.opened`/`review.closed` webhooks
    # ("open: rule", "closed: approved"...); blank when Radar never reviewed it.
    radar_review = models.CharField(max_length=64, blank=True)
    # Stripe's own evaluation of the charge (`outcome.risk_level`/`risk_score` of the
    # PaymentIntent's latest charge), shown to fraud reviewers; blank/None when the
    # gateway gave none (the simulated one, or Stripe did not score it).
    stripe_risk_level = models.CharField(max_length=20, blank=True)
    stripe_risk_score = models.PositiveSmallIntegerField(null=True, blank=True)
    fraud_review_required = models.BooleanField(default=False)
    fraud_approved = models.BooleanField(null=True, blank=True)
    # The fraud review as it ended, copied from the run's wait when retention prunes the
    # run's history (`services.retention`): the wait is the review's record until then.
    review_id = models.PositiveBigIntegerField(null=True, blank=True)
    review_state = models.CharField(max_length=20, choices=ReviewState, blank=True)
    review_decided_by = models.CharField(max_length=150, blank=True)
    review_decided_at = models.DateTimeField(null=True, blank=True)
    review_note = models.TextField(blank=True)
    review_deadline = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-created_at"]
        permissions = [("cancel_order", "Can cancel orders (voids or refunds the payment)")]
        indexes = [
            models.Index(fields=["status", "-created_at"], name="order_status_created_idx"),
            models.Index(fields=["customer_id"], name="order_customer_idx"),
            # The reviewers' risk signals: velocity by email (`orders.risk`).
            models.Index(fields=["customer_email", "created_at"], name="order_email_created_idx"),
        ]
        constraints = [
            models.CheckConstraint(condition=models.Q(amount__gt=0), name="order_amount_positive"),
            # What the column can hold: SQLite would store more digits and every read of
            # the row would then fail. The order rules (orders/rules.py) refuse far less.
            models.CheckConstraint(
                condition=models.Q(amount__lte=Decimal("9999999999.99")),
                name="order_amount_fits",
            ),
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
    def email_sent(self) -> bool:
        """Whether the customer's confirmation went out: the reviewers' emails are
        recorded for the order too, and are not it."""
        using = self._state.db or DEFAULT_DB_ALIAS
        return _confirmation_sent.exists(self.pk, using=using)


class EmailKind(models.TextChoices):
    """What an email recorded for an order is: the customer's confirmation, or one of the
    fraud reviewers' (an order has at most one review, so one of each)."""

    CONFIRMATION = "confirmation", "customer's confirmation"
    REVIEW_ALERT = "review_alert", "reviewers' alert"
    REVIEW_REMINDER = "review_reminder", "reviewers' reminder"


class EmailStatus(models.TextChoices):
    SENDING = "sending"
    SENT = "sent"
    FAILED = "failed"


# An order's "email sent" (model, API, admin, the workflow's snapshots): its confirmation.
CONFIRMATION_SENT = models.Q(kind=EmailKind.CONFIRMATION, status=EmailStatus.SENT)


class EmailRecord(models.Model):
    """Every message sent for an order. The unique (order, kind) row is claimed before
    sending, so a retried step can never send a second confirmation."""

    order = models.ForeignKey(Order, on_delete=models.PROTECT, related_name="emails")
    kind = models.CharField(max_length=30, choices=EmailKind, default=EmailKind.CONFIRMATION)
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


# `Order.email_sent`, asked by several steps of every run: compiled once (an order has
# at most one confirmation).
_confirmation_sent = CompiledRead(EmailRecord, "order_id", where=CONFIRMATION_SENT)


class StripeEvent(models.Model):
    """A Stripe webhook event, stored once by its id: a redelivery finds the row and
    changes nothing (see `orders.stripe_webhooks`)."""

    event_id = models.CharField(max_length=255, unique=True)
    type = models.CharField(max_length=100)
    received_at = models.DateTimeField(auto_now_add=True)
    processed_at = models.DateTimeField(null=True, blank=True)
    # The order the event touched; SET_NULL so that events outlive what they describe.
    order = models.ForeignKey(
        Order, null=True, blank=True, on_delete=models.SET_NULL, related_name="stripe_events"
    )
    outcome = models.CharField(max_length=255, blank=True)
    payload = models.JSONField(default=dict)

    class Meta:
        ordering = ["-received_at"]
        verbose_name = "Stripe event"

    def __str__(self) -> str:
        return f"{self.type} {self.event_id}"


class FraudReviewQuerySet(models.QuerySet["FraudReview"]):
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


_FraudReviewManagerBase = models.Manager.from_queryset(FraudReviewQuerySet)


class FraudReviewManager(_FraudReviewManagerBase["FraudReview"]):
    def get_queryset(self) -> FraudReviewQuerySet:
        # A `from_queryset` manager's queryset is of that class; the stubs only know QuerySet.
        reviews = cast(FraudReviewQuerySet, super().get_queryset())
        return reviews.filter(key=FRAUD_REVIEW_KEY, run__workflow_id=ORDER_WORKFLOW_ID)


class FraudReview(Wait):
    """An order's run suspended at `fraud_review`, as the reviewers' queue sees it."""

    objects: ClassVar[FraudReviewManager] = FraudReviewManager()
    # Cached per row by the admin's queue (`FraudReviewAdmin._risk`); not a field.
    _risk_signals: "RiskSignals | None"

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


class FraudReviewClaim(models.Model):
    """A reviewer's "I am on it" for one review, so that two reviewers do not study the
    same order. Advisory: others may still decide (the admin asks them to confirm), and
    it lapses FRAUD_REVIEW_CLAIM_MINUTES after `claimed_at` (see `is_live`).
    Written only by `orders.services.reviews.review_claim` / `review_release`."""

    review = models.OneToOneField(
        FraudReview, on_delete=models.CASCADE, primary_key=True, related_name="claim"
    )
    claimed_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="+"
    )
    claimed_at = models.DateTimeField()

    def __str__(self) -> str:
        return f"{self.review_id} claimed by {self.claimed_by_id}"

    def lapses_at(self) -> datetime:
        return self.claimed_at + claim_duration()

    def is_live(self, now: datetime | None = None) -> bool:
        return self.lapses_at() > (now or timezone.now())


def claim_duration() -> timedelta:
    return timedelta(minutes=settings.FRAUD_REVIEW_CLAIM_MINUTES)
