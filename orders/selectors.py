"""Reads of the orders domain: what the API (and any other reader) shows of orders, their
runs and their fraud reviews. Writes live in `orders.services`."""

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TypedDict
from uuid import UUID

from django.contrib.auth.base_user import AbstractBaseUser
from django.core.exceptions import ValidationError
from django.db.models import Count, Exists, OuterRef, Prefetch, QuerySet
from django.http import Http404
from django.shortcuts import get_object_or_404
from django.utils import timezone
from django_q.brokers import get_broker

from workflows.models import RunStatus, WorkflowRun
from workflows.selectors import run_get_with_steps

from .models import EmailRecord, EmailStatus, FraudReview, Order
from .services import order_review


class ReviewInfo(TypedDict):
    state: str
    decided_by: str | None
    decided_at: datetime | None
    note: str
    deadline: datetime


def _orders() -> QuerySet[Order]:
    # One query for the page, plus one for all its reviews: `email_sent` and the review
    # would otherwise cost two queries per order.
    return (
        Order.objects.select_related("run")
        .annotate(
            email_sent_annotated=Exists(
                EmailRecord.objects.filter(order=OuterRef("pk"), status=EmailStatus.SENT)
            )
        )
        .prefetch_related(
            Prefetch(
                "run__waits",
                queryset=FraudReview.objects.select_related("resumed_by"),
                to_attr="fraud_reviews",
            )
        )
    )


def order_get(*, order_id: str, client: AbstractBaseUser | None = None) -> Order:
    """For staff tools (commands): the order with that id, the `client`'s if given.
    `Http404` if none; without a client, `Order.MultipleObjectsReturned` when clients
    share the id, so that a command never acts on a guess."""
    orders = _orders() if client is None else _orders().filter(client=client)
    return get_object_or_404(orders, order_id=order_id)


def order_get_for(*, client: AbstractBaseUser, order_id: str) -> Order:
    """The API client's own order with that id, or `Http404`: another client's order is
    not found either, so ids never leak between clients."""
    return get_object_or_404(_orders(), client=client, order_id=order_id)


def order_list_for(*, client: AbstractBaseUser, status: str | None = None) -> QuerySet[Order]:
    """The API client's own orders, as `orders_list` gives them."""
    return orders_list(status=status).filter(client=client)


def run_get_for(*, client: AbstractBaseUser, run_id: UUID | str) -> WorkflowRun:
    """The run of one of the API client's orders, with its steps and waits; `Http404`
    for another client's run, a run without an order, or a malformed id."""
    try:
        owned = Order.objects.filter(client=client, run_id=run_id).exists()
    except (ValueError, ValidationError):
        owned = False
    if not owned:
        raise Http404(f"No run {run_id}")
    return run_get_with_steps(run_id=run_id)


def orders_list(*, status: str | None = None) -> QuerySet[Order]:
    """Orders, newest first, optionally only those in `status`; runs joined, reviews
    prefetched, so that listing a page costs a constant number of queries."""
    orders = _orders()
    if status:
        orders = orders.filter(status=status)
    return orders


def order_email_sent(order: Order) -> bool:
    """Whether the confirmation went out, from the list's annotation when there is one."""
    annotated = getattr(order, "email_sent_annotated", None)
    return order.email_sent if annotated is None else bool(annotated)


def _order_fraud_review(order: Order) -> FraudReview | None:
    run = order.run
    if run is not None and hasattr(run, "fraud_reviews"):
        return run.fraud_reviews[0] if run.fraud_reviews else None
    return order_review(order)


def order_review_info(order: Order) -> ReviewInfo | None:
    """The order's fraud review as clients see it, or None when the order never needed
    one. Read from the run's wait (the review's only record), so it cannot disagree
    with the suspended workflow."""
    review = _order_fraud_review(order)
    if review is None:
        return None
    return ReviewInfo(
        state=str(review.state),
        decided_by=review.resumed_by.get_username() if review.resumed_by else None,
        decided_at=review.resumed_at,
        note=review.note,
        deadline=review.deadline,
    )


@dataclass(frozen=True)
class OpsOverview:
    """What an operator checks first: is work piling up, is anything stuck or waiting."""

    queue: str
    queued_tasks: int
    runs_by_status: dict[str, int]
    pending_reviews: int
    oldest_pending_review: FraudReview | None
    confirmations_in_doubt: list[str]


def ops_overview() -> OpsOverview:
    broker = get_broker()
    counts = dict.fromkeys(RunStatus.values, 0)
    counts.update(WorkflowRun.objects.order_by().values_list("status").annotate(n=Count("id")))
    pending = FraudReview.objects.pending()
    return OpsOverview(
        queue=broker.info(),
        queued_tasks=broker.queue_size(),
        runs_by_status=counts,
        pending_reviews=pending.count(),
        oldest_pending_review=pending.order_by("created_at").first(),
        # A claim older than a minute is no send in progress: its worker died.
        confirmations_in_doubt=list(
            EmailRecord.objects.filter(
                status=EmailStatus.SENDING, created_at__lt=timezone.now() - timedelta(minutes=1)
            ).values_list("order__order_id", flat=True)
        ),
    )
