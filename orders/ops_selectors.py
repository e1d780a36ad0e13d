"""Reads for operators: `ops_status`'s overview, what the console shows and finds of an
order's runs, the orders' panels on the dashboard, and which finished runs retention
must keep. The orders' own reads are in `orders.selectors`."""

import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any
from uuid import UUID

from django.db.models import (
    Count,
    DurationField,
    ExpressionWrapper,
    F,
    Min,
    Q,
    QuerySet,
)
from django.urls import reverse
from django.utils import timezone
from django_q.brokers import get_broker

from workflows.engine.dashboard import trunc_hour, trunc_minute
from workflows.engine.selectors import (
    RUN_GROUP_MAIN,
    run_group_choices,
    run_status_counts_by_group,
    runs_cost_total,
)
from workflows.models import WaitStatus, WorkflowRun

from .models import (
    EmailKind,
    EmailRecord,
    EmailStatus,
    FraudReview,
    Order,
    PaymentStatus,
)
from .selectors import UNSETTLED_STATUSES, order_status_shown


@dataclass(frozen=True)
class OpsOverview:
    """What an operator checks first: is work piling up, is anything stuck or waiting."""

    queue: str
    queued_tasks: int
    runs_by_status: dict[str, int]
    """The main runs (orders'); the groups kept apart are in `runs_apart`."""
    runs_apart: dict[str, dict[str, int]]
    """By group label ("Webhook deliveries"): its runs by status."""
    pending_reviews: int
    oldest_pending_review: FraudReview | None
    confirmations_in_doubt: list[str]
    # The reviewers' alerts and reminders in doubt: "ord-1 (review_alert)". Never sent
    # again (`orders.notifications.review_email_send`); listed so that someone looks.
    reviewer_emails_in_doubt: list[str]
    model_tokens: int
    model_cost_usd: Decimal


def ops_overview() -> OpsOverview:
    broker = get_broker()
    by_group = run_status_counts_by_group()
    labels = dict(run_group_choices())
    pending = FraudReview.objects.pending()
    tokens, cost = runs_cost_total()
    # A claim older than a minute is no send in progress: its worker died.
    in_doubt = EmailRecord.objects.filter(
        status=EmailStatus.SENDING, created_at__lt=timezone.now() - timedelta(minutes=1)
    ).order_by("created_at")
    return OpsOverview(
        model_tokens=tokens,
        model_cost_usd=cost,
        queue=broker.info(),
        queued_tasks=broker.queue_size(),
        runs_by_status=by_group.pop(RUN_GROUP_MAIN),
        runs_apart={labels[key]: counts for key, counts in by_group.items()},
        pending_reviews=pending.count(),
        oldest_pending_review=pending.order_by("created_at").first(),
        confirmations_in_doubt=list(
            in_doubt.filter(kind=EmailKind.CONFIRMATION).values_list("order__order_id", flat=True)
        ),
        reviewer_emails_in_doubt=[
            f"{order_id} ({kind})"
            for order_id, kind in in_doubt.exclude(kind=EmailKind.CONFIRMATION).values_list(
                "order__order_id", "kind"
            )
        ],
    )


# An order whose run may still matter to someone: unsettled (processing, awaiting review,
# or needing attention), or whose money is not at rest (a hold, an open dispute).
_RETAINED = Q(status__in=UNSETTLED_STATUSES) | Q(
    payment_status__in=(PaymentStatus.AUTHORIZED, PaymentStatus.DISPUTED)
)


def order_runs_retained(run_ids: list[UUID]) -> set[UUID]:
    """Of these finished order runs, the ones whose history retention must keep (the
    orders' retention veto): the run of an order that is not settled or whose money is
    not at rest, and the run such an order was forked from. Two queries per batch."""
    orders = Order.objects.filter(_RETAINED)
    kept: set[UUID | None] = set(orders.filter(run_id__in=run_ids).values_list("run_id", flat=True))
    kept |= set(
        orders.filter(run__forked_from_id__in=run_ids).values_list("run__forked_from_id", flat=True)
    )
    return {run_id for run_id in kept if run_id is not None}


def order_run_facts(run: WorkflowRun) -> list[tuple[str, str, str | None]]:
    """What the console's run page says about the run's order: which order, its status
    and where its money is (one query)."""
    order = Order.objects.select_related("run").filter(run=run).first()
    if order is None:
        return []
    admin_url = reverse("admin:orders_order_change", args=[order.pk])
    return [
        ("Order", order.order_id, admin_url),
        ("Order status", order_status_shown(order), None),
        ("Payment", order.get_payment_status_display(), None),
    ]


# --- the operations dashboard and the console's run search --------------------------------


def order_run_ids_matching(text: str) -> QuerySet[Order, Any]:
    """The runs of the orders whose order id or customer id is `text` (as ids: the
    console's run search ORs them in)."""
    return (
        Order.objects.filter(Q(order_id=text) | Q(customer_id=text))
        .exclude(run_id=None)
        .values("run_id")
    )


def orders_by_minute(*, since: datetime) -> list[tuple[datetime, str, int]]:
    """(minute, status, count) of the orders placed since `since`: one grouped query."""
    rows = (
        Order.objects.filter(created_at__gte=since)
        .annotate(bucket=trunc_minute("created_at"))
        .order_by()
        .values_list("bucket", "status")
        .annotate(n=Count("pk"))
    )
    return [(bucket, status, n) for bucket, status, n in rows]


@dataclass(frozen=True)
class BacklogPoint:
    at: datetime
    pending: int
    oldest_created_at: datetime | None


def _open_at(moment: datetime) -> Q:
    # Open then: made by then, and still waiting, or closed (decided, expired, cancelled:
    # every close sets `resumed_at`) after it.
    return Q(created_at__lte=moment) & (Q(status=WaitStatus.WAITING) | Q(resumed_at__gt=moment))


def review_backlog(*, moments: Sequence[datetime]) -> list[BacklogPoint]:
    """How many fraud reviews were pending at each of `moments`, and since when the
    oldest of them: one query of conditional aggregates, whatever the number of reviews."""
    if not moments:
        return []
    reviews = FraudReview.objects.filter(
        Q(status=WaitStatus.WAITING) | Q(resumed_at__gt=min(moments)),
        created_at__lte=max(moments),
    )
    aggregates: dict[str, Any] = {}
    for i, moment in enumerate(moments):
        aggregates[f"n{i}"] = Count("pk", filter=_open_at(moment))
        aggregates[f"o{i}"] = Min("created_at", filter=_open_at(moment))
    row = reviews.aggregate(**aggregates)
    return [
        BacklogPoint(at=moment, pending=row[f"n{i}"], oldest_created_at=row[f"o{i}"])
        for i, moment in enumerate(moments)
    ]


@dataclass(frozen=True)
class ReviewDecisions:
    decided: int
    approved: int
    p50: timedelta | None
    p95: timedelta | None
    by_hour: list[tuple[datetime, str, int]]
    """(hour, "approved" or "rejected", count)."""

    @property
    def approval_rate(self) -> float | None:
        return self.approved / self.decided if self.decided else None


def review_decisions(*, since: datetime) -> ReviewDecisions:
    """The reviews decided since `since`: how many, how many approved, the time from
    opening to decision at the median and the 95th percentile (nearest rank), and the
    decisions per hour. Four queries, whatever the number of reviews."""
    decided = FraudReview.objects.filter(status=WaitStatus.RESUMED, resumed_at__gte=since)
    approved_q = Q(resume_data__approved=True)
    totals = decided.aggregate(n=Count("pk"), approved=Count("pk", filter=approved_q))
    took = decided.annotate(
        took=ExpressionWrapper(F("resumed_at") - F("created_at"), output_field=DurationField())
    ).order_by("took")

    def percentile(p: float) -> timedelta | None:
        if not totals["n"]:
            return None
        rank = max(math.ceil(p * totals["n"]) - 1, 0)
        value: timedelta = took.values_list("took", flat=True)[rank]
        return value

    hourly = (
        decided.annotate(bucket=trunc_hour("resumed_at"))
        .order_by()
        .values_list("bucket")
        .annotate(yes=Count("pk", filter=approved_q), all=Count("pk"))
    )
    by_hour: list[tuple[datetime, str, int]] = []
    for bucket, yes, every in hourly:
        by_hour += [(bucket, "approved", yes), (bucket, "rejected", every - yes)]
    return ReviewDecisions(
        decided=totals["n"],
        approved=totals["approved"],
        p50=percentile(0.5),
        p95=percentile(0.95),
        by_hour=by_hour,
    )
