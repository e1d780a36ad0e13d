"""The engine's own dashboard panels (run failures, model cost per hour) and the time
buckets every panel uses. Bucketing happens in SQL (`Trunc*` grouped and counted): a
panel's query count and the rows it reads depend on its buckets, never on the data.

Drawing is the console's (`workflows.console.charts`); an application adds its panels
with `hooks.register_dashboard_panel`.
"""

from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from django.db.models import BigIntegerField, Count, Sum
from django.db.models.fields.json import KT
from django.db.models.functions import Cast, TruncHour, TruncMinute

from workflows.engine.hooks import DashboardPanel, PanelData, Series
from workflows.engine.pricing import COST_KEY, usd
from workflows.models import RunStatus, StepKind, StepRecord, WorkflowRun

VIEW_RUNS_PERMISSION = "workflows.view_workflowrun"
"""The console's permission (operators hold it): the engine's panels ask nothing more."""
HOURS = 24
MINUTES = 60
TOP_SERIES = 5
"""A chart stacks at most this many series; the rest are summed as "other"."""


def hour_buckets(now: datetime, hours: int = HOURS) -> tuple[datetime, ...]:
    """The starts of the last `hours` whole hours (UTC), the current one last."""
    top = now.astimezone(UTC).replace(minute=0, second=0, microsecond=0)
    return tuple(top - timedelta(hours=h) for h in range(hours - 1, -1, -1))


def minute_buckets(now: datetime, minutes: int = MINUTES) -> tuple[datetime, ...]:
    top = now.astimezone(UTC).replace(second=0, microsecond=0)
    return tuple(top - timedelta(minutes=m) for m in range(minutes - 1, -1, -1))


def trunc_hour(field: str) -> TruncHour:
    return TruncHour(field, tzinfo=UTC)


def trunc_minute(field: str) -> TruncMinute:
    return TruncMinute(field, tzinfo=UTC)


def series_by_name(
    rows: Iterable[tuple[datetime, str, float | int | Decimal | None]],
    buckets: tuple[datetime, ...],
    *,
    order: Iterable[str] = (),
) -> tuple[Series, ...]:
    """(bucket, series name, value) rows, as read grouped from SQL, into one series per
    name over `buckets` (missing buckets are 0). Names in `order` come first, always
    shown; the other names by total, biggest first, past TOP_SERIES summed as "other"."""
    index = {b.astimezone(UTC): i for i, b in enumerate(buckets)}
    values: dict[str, list[float]] = {name: [0.0] * len(buckets) for name in order}
    for bucket, name, value in rows:
        i = index.get(bucket.astimezone(UTC)) if bucket is not None else None
        if i is None:
            continue
        values.setdefault(str(name), [0.0] * len(buckets))[i] += float(value or 0)
    fixed = [name for name in order]
    rest = sorted((n for n in values if n not in fixed), key=lambda n: -sum(values[n]))
    names = fixed + rest[:TOP_SERIES]
    series = [Series(name, tuple(values[name])) for name in names]
    if len(rest) > TOP_SERIES:
        other = [sum(values[n][i] for n in rest[TOP_SERIES:]) for i in range(len(buckets))]
        series.append(Series("other", tuple(other)))
    return tuple(series)


def run_failures(*, now: datetime) -> PanelData:
    """Runs that failed per hour over the last day, by workflow (one query)."""
    buckets = hour_buckets(now)
    rows = (
        WorkflowRun.objects.filter(status=RunStatus.FAILED, finished_at__gte=buckets[0])
        .annotate(bucket=trunc_hour("finished_at"))
        .order_by()
        .values_list("bucket", "workflow_id")
        .annotate(n=Count("pk"))
    )
    series = series_by_name(rows, buckets)
    total = sum(sum(s.values) for s in series)
    return PanelData(
        buckets=buckets,
        series=series,
        unit="runs",
        figures=(("failed, last 24 h", f"{total:.0f}"),),
        empty_text="No run failed in the last 24 hours.",
    )


def model_cost(*, now: datetime) -> PanelData:
    """What model calls cost per hour over the last day, by model (one query: the llm
    steps' recorded cost, summed per hour in SQL)."""
    buckets = hour_buckets(now)
    rows = (
        StepRecord.objects.filter(kind=StepKind.LLM, finished_at__gte=buckets[0])
        .annotate(bucket=trunc_hour("finished_at"), model=KT("meta__model"))
        .order_by()
        .values_list("bucket", "model")
        .annotate(cost=Sum(Cast(KT(f"meta__usage__{COST_KEY}"), BigIntegerField())))
    )
    dollars = [(bucket, model or "unknown", usd(cost)) for bucket, model, cost in rows]
    series = series_by_name(dollars, buckets)
    total = sum((Decimal(str(v)) for s in series for v in s.values), Decimal(0))
    last = sum((s.values[-1] for s in series), 0.0)
    return PanelData(
        buckets=buckets,
        series=series,
        unit="$",
        figures=(("last 24 h", f"${total:.2f}"), ("this hour", f"${last:.2f}")),
        empty_text="No priced model call in the last 24 hours.",
    )


ENGINE_PANELS = (
    DashboardPanel(
        key="run_failures",
        title="Run failures per hour",
        permission=VIEW_RUNS_PERMISSION,
        read=run_failures,
        order=50,
    ),
    DashboardPanel(
        key="model_cost",
        title="Model cost per hour",
        permission=VIEW_RUNS_PERMISSION,
        read=model_cost,
        order=40,
    ),
)
"""Always on the dashboard (the console registers them with the page, not as hooks)."""
