"""The fraud review: opening it (with the reviewers' alert), the reminders sweep, and
the reviewer's decision, which resumes the run."""

import logging
from datetime import datetime, timedelta
from typing import TypedDict, cast
from uuid import UUID

from django.conf import settings
from django.contrib.auth.models import User
from django.core.exceptions import PermissionDenied
from django.db import IntegrityError, transaction
from django.db.models import Exists, OuterRef, Q
from django.utils import timezone
from django_stubs_ext import WithAnnotations

from workflows import WaitAlreadyDecidedError, WaitExpiredError, WaitNotFoundError, run_resume
from workflows.models import WaitStatus

from ..client_webhooks.models import WebhookEvent
from ..client_webhooks.services import order_event_emit
from ..models import (
    FRAUD_REVIEW_KEY,
    EmailRecord,
    EmailStatus,
    FraudReview,
    FraudReviewClaim,
    Order,
    OrderStatus,
)
from ..notifications import REVIEW_ALERT, REVIEW_REMINDER, review_email_send
from ..roles import DECIDE_PERMISSION
from ..rules import OrderRuleError, note_check
from ..selectors import order_fraud_review

logger = logging.getLogger(__name__)


class ReviewError(Exception):
    """The review cannot be decided now: nothing to decide, already decided, expired."""


def order_review_open(*, run_id: UUID) -> None:
    """Mark the order awaiting review and tell the fraud reviewers (the workflow's
    `open_review` step, just before it suspends at `fraud_review`).

    The alert never fails the step: an alert not sent (mail server down, nobody to
    tell) is sent by the next `review_reminders_send` sweep instead. Its deadline is the
    one the suspend is about to record (same timeout, a moment later)."""
    now = timezone.now()
    Order.objects.filter(run_id=run_id).exclude(status=OrderStatus.CANCELLED).update(
        status=OrderStatus.AWAITING_REVIEW, fraud_review_required=True, updated_at=now
    )
    order_event_emit(
        order=Order.objects.filter(run_id=run_id).first(), type=WebhookEvent.AWAITING_REVIEW
    )
    order = Order.objects.filter(run_id=run_id, status=OrderStatus.AWAITING_REVIEW).first()
    if order is None:
        return
    try:
        review_email_send(
            order=order,
            kind=REVIEW_ALERT,
            deadline=now + timedelta(seconds=settings.FRAUD_REVIEW_TIMEOUT),
        )
    except Exception:
        logger.exception("order %s: the reviewers' alert failed; the sweep retries", order.order_id)


class _EmailsSent(TypedDict):
    alerted: bool
    reminded: bool


def review_reminders_send(*, now: datetime | None = None) -> int:
    """Send what the fraud reviewers are owed about open reviews: the alert when it was
    not sent at opening (it failed, or nobody was there to tell), and the reminder once
    FRAUD_REVIEW_REMINDER_AT of the review's time has passed. Each at most once (see
    `review_email_send`). A wait sweep hook (`orders/apps.py`), so the
    existing once-a-minute expiry schedule runs it. Returns how many were sent."""
    now = now or timezone.now()
    share = settings.FRAUD_REVIEW_REMINDER_AT
    done = [EmailStatus.SENT, EmailStatus.SENDING]  # sending: in progress, or in doubt

    def recorded(kind: str) -> Exists:
        return Exists(
            EmailRecord.objects.filter(order__run_id=OuterRef("run_id"), kind=kind, status__in=done)
        )

    # The stubs do not follow `annotate` through a custom queryset's methods.
    reviews = cast(
        "list[WithAnnotations[FraudReview, _EmailsSent]]",
        list(
            FraudReview.objects.pending()
            .filter(deadline__gt=now)
            .annotate(alerted=recorded(REVIEW_ALERT), reminded=recorded(REVIEW_REMINDER))
            .filter(Q(alerted=False) | Q(reminded=False))
        ),
    )
    orders = Order.objects.filter(
        run_id__in=[review.run_id for review in reviews], status=OrderStatus.AWAITING_REVIEW
    ).in_bulk(field_name="run_id")
    sent = 0
    for review in reviews:
        order = orders.get(review.run_id)
        if order is None:
            continue
        due = [] if review.alerted else [REVIEW_ALERT]
        remind_at = review.created_at + (review.deadline - review.created_at) * share
        if share and not review.reminded and now >= remind_at:
            due.append(REVIEW_REMINDER)
        for kind in due:
            record = review_email_send(order=order, kind=kind, deadline=review.deadline)
            if record is not None and record.status == EmailStatus.FAILED:
                # The mail server is down: the next sweep tries again, rather than this
                # one waiting out EMAIL_TIMEOUT once per review.
                return sent
            sent += record is not None and record.status == EmailStatus.SENT
    return sent


def review_decide(*, order: Order, approved: bool, by: User, note: str = "") -> FraudReview:
    """Approve or reject an order's pending fraud review and resume its workflow.

    One conditional UPDATE decides races: of two reviewers clicking at once, one wins
    and the other gets `ReviewError` saying it was already decided.
    """
    _may_decide(by)
    try:
        note = note_check(note)
    except OrderRuleError as exc:
        raise ReviewError(f"Note refused: {exc}") from None
    if order.run_id is None:  # what `run_resume` would find for it: no wait
        raise ReviewError(f"Order {order.order_id} has no fraud review to decide")
    try:
        run_resume(order.run_id, FRAUD_REVIEW_KEY, {"approved": approved, "note": note}, by=by)
    except WaitNotFoundError:
        if order.review_state:  # decided, and its run's history pruned since
            raise ReviewError(
                f"The review of order {order.order_id} was already decided "
                f"({order.review_state})"
            ) from None
        raise ReviewError(f"Order {order.order_id} has no fraud review to decide") from None
    except WaitAlreadyDecidedError:
        review = order_fraud_review(order=order)
        raise ReviewError(
            f"The review of order {order.order_id} was already decided"
            + (f" ({review.state})" if review else "")
        ) from None
    except WaitExpiredError:
        raise ReviewError(
            f"The review of order {order.order_id} expired; its payment will be released"
        ) from None
    logger.info(
        "order %s: fraud review %s by %s",
        order.order_id,
        "approved" if approved else "rejected",
        by.get_username(),
    )
    return FraudReview.objects.get(run_id=order.run_id, key=FRAUD_REVIEW_KEY)


def _may_decide(user: User) -> None:
    if not user.has_perm(DECIDE_PERMISSION):
        raise PermissionDenied(f"{user.get_username()} may not decide fraud reviews")


def review_claim(*, review: FraudReview, by: User, now: datetime | None = None) -> FraudReviewClaim:
    """Claim an open review for `by` ("being reviewed by ..."), or renew their own claim.
    A live claim of someone else is not taken over (`ReviewError` names them); a lapsed
    one is. Claims are advisory: deciding never needs one."""
    _may_decide(by)
    now = now or timezone.now()
    if not (review.status == WaitStatus.WAITING and review.deadline > now):
        raise ReviewError(f"{review} is not open: there is nothing to claim")
    for _ in range(2):  # a second pass only when a concurrent first claim won the insert
        with transaction.atomic():
            claim = FraudReviewClaim.objects.select_for_update().filter(review=review).first()
            if claim is None:
                try:
                    with transaction.atomic():
                        return FraudReviewClaim.objects.create(
                            review=review, claimed_by=by, claimed_at=now
                        )
                except IntegrityError:
                    continue
            if claim.claimed_by_id != by.pk and claim.is_live(now):
                raise ReviewError(
                    f"{review} is being reviewed by {claim.claimed_by.get_username()}"
                )
            claim.claimed_by = by
            claim.claimed_at = now
            claim.save(update_fields=["claimed_by", "claimed_at"])
            return claim
    raise ReviewError(f"{review} was claimed by someone else just now")


def review_release(*, review: FraudReview, by: User) -> bool:
    """Give up `by`'s own claim on the review; False if they held none."""
    _may_decide(by)
    deleted, _ = FraudReviewClaim.objects.filter(review=review, claimed_by=by).delete()
    return bool(deleted)
