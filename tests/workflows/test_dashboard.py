"""The console's operations dashboard, the engine's part: charts drawn on the server as
SVG, the engine's panels (run failures, model cost per hour) bucketed in SQL, and the
panel registry (an application's panel, its permission, a panel that fails)."""

import re
from datetime import UTC, datetime, timedelta

import pytest
from django.contrib.auth.models import Permission, User
from django.test import Client
from django.utils import timezone

from tests.support.roles import operator_client
from workflows.console.charts import chart_draw, nice_max
from workflows.engine.dashboard import (
    TOP_SERIES,
    hour_buckets,
    model_cost,
    run_failures,
    series_by_name,
)
from workflows.engine.hooks import DashboardPanel, PanelData, Series
from workflows.engine.pricing import COST_KEY
from workflows.models import RunStatus, StepKind, StepRecord, StepStatus, WorkflowRun

pytestmark = pytest.mark.django_db

NOW = datetime(2026, 3, 2, 14, 35, tzinfo=UTC)


def marks(svg: str) -> list[str]:
    return re.findall(r'<(?:rect|path) class="mark"[^>]*>', svg)


def test_stacked_bars_draw_one_rect_per_non_zero_value_with_height_in_scale():
    buckets = hour_buckets(NOW, hours=3)
    data = PanelData(
        buckets=buckets,
        series=(Series("ok", (1.0, 0.0, 3.0)), Series("failed", (1.0, 2.0, 0.0))),
    )
    chart = chart_draw(data, title="Runs")
    drawn = marks(chart.svg)
    assert chart.marks == len(drawn) == 4
    heights = [float(re.search(r'height="([\d.]+)"', m).group(1)) for m in drawn]
    assert all(h > 0 for h in heights)
    # The tallest stack (3) fills the plot to the scale's top (nice_max(3) == 5): 3/5.
    assert nice_max(3) == 5
    assert [item.name for item in chart.legend] == ["ok", "failed"]
    assert [item.total for item in chart.legend] == ["4", "3"]
    assert "13:00" in chart.svg and "14:00" in chart.svg  # time labels, UTC


def test_lines_draw_a_path_per_series_and_nothing_is_drawn_for_zeros():
    buckets = hour_buckets(NOW, hours=4)
    data = PanelData(buckets=buckets, series=(Series("age", (0.0, 1.5, 3.0, 2.0)),), chart="lines")
    chart = chart_draw(data, title="Oldest")
    assert chart.marks == 1 and chart.svg.count("<path") == 1
    assert (
        chart_draw(PanelData(buckets=buckets, series=(Series("z", (0,) * 4),)), title="x").marks
        == 0
    )


def test_series_beyond_the_top_ones_are_summed_as_other():
    buckets = hour_buckets(NOW, hours=2)
    rows = [(buckets[1], f"wf{i}", i + 1) for i in range(TOP_SERIES + 2)]
    rows.append((buckets[0] - timedelta(hours=5), "wf0", 100))  # outside: ignored
    series = series_by_name(rows, buckets)
    assert [s.name for s in series][:2] == [f"wf{TOP_SERIES + 1}", f"wf{TOP_SERIES}"]
    assert series[-1].name == "other" and series[-1].values == (0.0, 1.0 + 2.0)
    assert sum(sum(s.values) for s in series) == sum(range(1, TOP_SERIES + 3))


def _recent_mid_hour() -> datetime:
    """A recent "now" 35 minutes into its hour: a minute or two before it is the same hour
    whatever the clock says when the test runs (at 11:01, "now" was the hour's first
    minute, and one minute before it fell in the hour before)."""
    return timezone.now().replace(minute=35, second=0, microsecond=0) - timedelta(hours=1)


def _run(status: str, finished_at: datetime, workflow_id: str = "test.counting") -> WorkflowRun:
    return WorkflowRun.objects.create(
        workflow_id=workflow_id, input={}, status=status, finished_at=finished_at
    )


def test_run_failures_are_counted_in_the_hour_they_failed_by_workflow():
    now = _recent_mid_hour()
    _run(RunStatus.FAILED, now - timedelta(minutes=1))
    _run(RunStatus.FAILED, now - timedelta(minutes=2), "test.flaky")
    _run(RunStatus.FAILED, now - timedelta(hours=3))
    _run(RunStatus.FAILED, now - timedelta(hours=30))  # before the day shown
    _run(RunStatus.COMPLETED, now)
    data = run_failures(now=now)
    by_name = {s.name: s.values for s in data.series}
    assert by_name["test.counting"][-1] == 1 and by_name["test.counting"][-4] == 1
    assert by_name["test.flaky"][-1] == 1
    assert dict(data.figures)["failed, last 24 h"] == "3"


def test_model_cost_is_summed_per_hour_from_the_llm_steps():
    now = _recent_mid_hour()
    run = _run(RunStatus.COMPLETED, now)
    for position, (minutes, microusd) in enumerate([(1, 250_000), (2, 750_000), (90, 2_000_000)]):
        at = now - timedelta(minutes=minutes)
        StepRecord.objects.create(
            run=run,
            key=f"llm/{position}",
            position=position,
            kind=StepKind.LLM,
            status=StepStatus.COMPLETED,
            meta={"model": "gpt-test", "usage": {"prompt_tokens": 10, COST_KEY: microusd}},
            started_at=at,
            finished_at=at,
        )
    data = model_cost(now=now)
    (series,) = data.series
    assert series.name == "gpt-test"
    assert series.values[-1] == pytest.approx(1.0)
    assert sum(series.values) == pytest.approx(3.0)
    assert dict(data.figures) == {"last 24 h": "$3.00", "this hour": "$1.00"}


def test_the_dashboard_draws_the_engine_panels_for_an_operator():
    now = timezone.now()
    _run(RunStatus.FAILED, now)
    page = operator_client().get("/dashboard/")
    assert page.status_code == 200
    html = page.content.decode()
    assert 'data-panel="run_failures"' in html and 'data-panel="model_cost"' in html
    assert len(marks(html)) >= 1
    assert "No priced model call in the last 24 hours." in html


def test_staff_without_the_console_permission_get_403():
    user = User.objects.create_user("sam", password="x", is_staff=True)
    client = Client()
    client.force_login(user)
    assert client.get("/dashboard/").status_code == 403


def _panel(key: str, permission: str, read) -> DashboardPanel:
    return DashboardPanel(key=key, title=key.title(), permission=permission, read=read)


def test_an_applications_panel_shows_to_those_holding_its_permission(hooks_registry):
    def deploys(*, now: datetime) -> PanelData:
        return PanelData(
            buckets=hour_buckets(now, 2),
            series=(Series("deploys", (1.0, 2.0)),),
            figures=(("deploys today", "3"),),
        )

    def broken(*, now: datetime) -> PanelData:
        raise RuntimeError("boom")

    hooks_registry.register_dashboard_panel(
        _panel("deploys", "workflows.view_workflowrun", deploys)
    )
    hooks_registry.register_dashboard_panel(_panel("broken", "workflows.view_workflowrun", broken))
    hooks_registry.register_dashboard_panel(_panel("secret", "workflows.start_run", deploys))

    user = User.objects.create_user("vic", password="x", is_staff=True)
    user.user_permissions.add(Permission.objects.get(codename="view_workflowrun"))
    client = Client()
    client.force_login(user)
    html = client.get("/dashboard/").content.decode()
    assert 'data-panel="deploys"' in html and "deploys today" in html
    assert 'data-panel="broken"' in html and "This panel failed to load." in html
    assert 'data-panel="secret"' not in html  # needs start_run, which vic lacks


def test_a_run_search_that_fails_is_skipped_and_the_list_still_answers(hooks_registry):
    def broken(text: str):
        raise RuntimeError("down")

    hooks_registry.register_run_search("broken", broken)
    run = _run(RunStatus.COMPLETED, timezone.now())
    page = operator_client().get("/runs/", {"q": str(run.id)[:8]})
    assert page.status_code == 200 and str(run.id) in page.content.decode()


def test_a_second_panel_for_a_taken_key_is_refused_and_the_same_one_is_a_no_op(hooks_registry):
    from django.core.exceptions import ImproperlyConfigured

    def read(*, now: datetime) -> PanelData:
        return PanelData()

    panel = _panel("mine", "workflows.view_workflowrun", read)
    hooks_registry.register_dashboard_panel(panel)
    hooks_registry.register_dashboard_panel(_panel("mine", "workflows.view_workflowrun", read))
    with pytest.raises(ImproperlyConfigured, match="A dashboard panel for 'mine'"):
        hooks_registry.register_dashboard_panel(_panel("mine", "workflows.start_run", read))
