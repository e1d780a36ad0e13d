"""The orders' panels on the console's dashboard (registered in `OrdersConfig.ready()`
and `ClientWebhooksConfig.ready()`): orders per minute by outcome, the review backlog
and its oldest review, decision times and the approval rate, and the client webhook
endpoints failing. Reads are `selectors`'; each panel costs a fixed number of queries.

They ask what an operator holds (`roles.OPERATIONS_VIEW_PERMISSION`): aggregates and
endpoint health, no customer's data."""

from datetime import datetime, timedelta

from django.urls import reverse

from workflows.console.presenters import ago_text, duration_text
from workflows.engine.dashboard import HOURS, hour_buckets, minute_buckets, series_by_name
from workflows.engine.hooks import DashboardPanel, PanelData, Series

from .client_webhooks.selectors import (
    webhook_attempts_by_hour,
    webhook_endpoints_failing,
    webhook_endpoints_failing_count,
)
from .models import OrderStatus
from .ops_selectors import orders_by_minute, review_backlog, review_decisions
from .roles import OPERATIONS_VIEW_PERMISSION

OUTCOME_COLORS = (
    (OrderStatus.COMPLETED.value, "#16a34a"),
    (OrderStatus.PROCESSING.value, "#2563eb"),
    (OrderStatus.AWAITING_REVIEW.value, "#9333ea"),
    (OrderStatus.REJECTED.value, "#f59e0b"),
    (OrderStatus.FAILED.value, "#dc2626"),
    (OrderStatus.CANCELLED.value, "#64748b"),
)
DECISION_COLORS = (("approved", "#16a34a"), ("rejected", "#dc2626"))
ATTEMPT_COLORS = (("delivered", "#16a34a"), ("failed", "#dc2626"))


def orders_per_minute(*, now: datetime) -> PanelData:
    buckets = minute_buckets(now)
    rows = orders_by_minute(since=buckets[0])
    series = tuple(s for s in series_by_name(rows, buckets) if any(s.values))
    total = sum(sum(s.values) for s in series)
    return PanelData(
        buckets=buckets,
        series=series,
        unit="orders",
        colors=OUTCOME_COLORS,
        figures=(("orders, last hour", f"{total:.0f}"), ("per minute", f"{total / 60:.1f}")),
        empty_text="No order in the last hour.",
    )


def _hour_ends(now: datetime) -> list[datetime]:
    # The backlog at the end of each hour bucket, the current one measured now.
    return [min(b + timedelta(hours=1), now) for b in hour_buckets(now)]


def reviews_backlog(*, now: datetime) -> PanelData:
    points = review_backlog(moments=_hour_ends(now))
    latest = points[-1]
    oldest = (
        duration_text((now - latest.oldest_created_at).total_seconds())
        if latest.oldest_created_at
        else "—"
    )
    return PanelData(
        buckets=hour_buckets(now),
        series=(Series("pending reviews", tuple(float(p.pending) for p in points)),),
        unit="reviews",
        levels=True,
        colors=(("pending reviews", "#9333ea"),),
        figures=(
            ("pending now", str(latest.pending)),
            ("most, last 24 h", str(max(p.pending for p in points))),
            ("oldest waiting", oldest),
        ),
        empty_text="No review was pending in the last 24 hours.",
    )


def reviews_oldest(*, now: datetime) -> PanelData:
    points = review_backlog(moments=_hour_ends(now))
    hours = tuple(
        (p.at - p.oldest_created_at).total_seconds() / 3600 if p.oldest_created_at else 0.0
        for p in points
    )
    return PanelData(
        buckets=hour_buckets(now),
        series=(Series("oldest pending review (hours)", hours),) if any(hours) else (),
        chart="lines",
        unit="h",
        levels=True,
        colors=(("oldest pending review (hours)", "#dc2626"),),
        figures=(("longest wait, last 24 h", duration_text(max(hours) * 3600)),),
        empty_text="No review was pending in the last 24 hours.",
    )


def review_decision_times(*, now: datetime) -> PanelData:
    buckets = hour_buckets(now)
    decisions = review_decisions(since=buckets[0])
    rate = decisions.approval_rate

    def took(value: timedelta | None) -> str:
        return duration_text(value.total_seconds()) if value is not None else "—"

    series = series_by_name(decisions.by_hour, buckets, order=("approved", "rejected"))
    return PanelData(
        buckets=buckets,
        series=series if decisions.decided else (),
        unit="decisions",
        colors=DECISION_COLORS,
        figures=(
            ("decision time p50", took(decisions.p50)),
            ("p95", took(decisions.p95)),
            ("approved", f"{rate:.0%}" if rate is not None else "—"),
            ("decided, last 24 h", str(decisions.decided)),
        ),
        empty_text="No review was decided in the last 24 hours.",
    )


def webhook_endpoints_health(*, now: datetime) -> PanelData:
    buckets = hour_buckets(now)
    rows = webhook_attempts_by_hour(since=buckets[0])
    series = tuple(
        s for s in series_by_name(rows, buckets, order=("delivered", "failed")) if any(s.values)
    )
    counts = webhook_endpoints_failing_count()
    table = tuple(
        (
            (
                endpoint.url,
                reverse("admin:client_webhooks_webhookendpoint_change", args=[endpoint.pk]),
            ),
            (endpoint.client.get_username(), None),
            ("enabled" if endpoint.enabled else "DISABLED", None),
            (ago_text(endpoint.failing_since, now) or "—", None),
            (str(endpoint.failed_attempts), None),
            (endpoint.last_status or "—", None),
        )
        for endpoint in webhook_endpoints_failing()
    )
    return PanelData(
        buckets=buckets,
        series=series,
        unit="attempts",
        colors=ATTEMPT_COLORS,
        figures=(
            ("endpoints failing", str(counts["failing"])),
            ("disabled", str(counts["disabled"])),
            ("endpoints", str(counts["all"])),
        ),
        headers=("endpoint", "client", "state", "failing since", "failed attempts", "last"),
        rows=table,
        empty_text="No webhook attempt in the last 24 hours.",
    )


ORDER_PANELS = (
    DashboardPanel(
        key="orders_per_minute",
        title="Orders per minute, by outcome",
        permission=OPERATIONS_VIEW_PERMISSION,
        read=orders_per_minute,
        order=10,
    ),
    DashboardPanel(
        key="review_backlog",
        title=f"Fraud review backlog, last {HOURS} h",
        permission=OPERATIONS_VIEW_PERMISSION,
        read=reviews_backlog,
        order=20,
    ),
    DashboardPanel(
        key="review_oldest",
        title="Oldest pending review",
        permission=OPERATIONS_VIEW_PERMISSION,
        read=reviews_oldest,
        order=21,
    ),
    DashboardPanel(
        key="review_decisions",
        title="Review decisions: time to decide, approval rate",
        permission=OPERATIONS_VIEW_PERMISSION,
        read=review_decision_times,
        order=30,
    ),
)
WEBHOOK_PANELS = (
    DashboardPanel(
        key="webhook_endpoints",
        title="Client webhook endpoints failing",
        permission=OPERATIONS_VIEW_PERMISSION,
        read=webhook_endpoints_health,
        order=60,
    ),
)
