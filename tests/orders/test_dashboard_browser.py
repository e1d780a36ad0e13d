"""The operations dashboard in Debian's Chromium at 1440x900: every chart is drawn (its
SVG marks have a size on screen), and a screenshot is saved (`DASHBOARD_SCREENSHOT`, or
the test's tmp directory)."""

import os
from datetime import timedelta
from pathlib import Path

import pytest
from django.contrib.auth.models import User
from django.utils import timezone

from tests.orders.test_browser import browser  # noqa: F401  (the Chromium fixture)
from tests.orders.test_dashboard import operators_group, seed
from workflows.engine.pricing import COST_KEY
from workflows.models import RunStatus, StepKind, StepRecord, StepStatus, WorkflowRun

pytestmark = pytest.mark.django_db(transaction=True)

CHARTED = {
    "orders_per_minute",
    "review_backlog",
    "review_oldest",
    "review_decisions",
    "model_cost",
    "run_failures",
    "webhook_endpoints",
}


def model_calls_and_failures() -> None:
    now = timezone.now()
    run = WorkflowRun.objects.create(workflow_id="order_processing", input={}, status="completed")
    for i in range(12):
        at = now - timedelta(hours=i * 2, minutes=5)
        StepRecord.objects.create(
            run=run,
            key=f"llm/{i}",
            position=i,
            kind=StepKind.LLM,
            status=StepStatus.COMPLETED,
            meta={"model": "gpt-4o-mini", "usage": {COST_KEY: 150_000 * (i % 4 + 1)}},
            started_at=at,
            finished_at=at,
        )
    for i in range(6):
        WorkflowRun.objects.create(
            workflow_id="order_processing" if i % 2 else "webhook_delivery",
            input={},
            status=RunStatus.FAILED,
            finished_at=now - timedelta(hours=i * 3),
        )


def test_the_dashboard_draws_every_chart_in_chromium(live_server, browser, tmp_path):  # noqa: F811
    seed(12)
    model_calls_and_failures()
    user = User.objects.create_user("olga", password="operator-pass-123", is_staff=True)
    user.groups.add(operators_group())

    context = browser.new_context(viewport={"width": 1440, "height": 900})
    context.set_default_timeout(30_000)
    page = context.new_page()
    try:
        page.goto(f"{live_server.url}/admin/login/?next=/dashboard/")
        page.fill("#id_username", "olga")
        page.fill("#id_password", "operator-pass-123")
        page.click("input[type=submit]")
        page.wait_for_url(f"{live_server.url}/dashboard/")

        drawn = {}
        for panel in page.locator("section[data-panel]").all():
            key = panel.get_attribute("data-panel")
            sizes = [m.bounding_box() for m in panel.locator("svg.chart .mark").all()]
            drawn[key] = [b for b in sizes if b and b["width"] > 0 and b["height"] > 0]
        assert set(drawn) == CHARTED
        empty = sorted(key for key, marks in drawn.items() if not marks)
        assert empty == [], f"panels with nothing drawn: {empty}"
        assert page.locator("text=This panel failed to load.").count() == 0
        # The failing endpoints are listed under their chart.
        assert page.locator("section[data-panel=webhook_endpoints] tbody tr").count() == 10

        shot = Path(os.environ.get("DASHBOARD_SCREENSHOT") or tmp_path / "dashboard.png")
        page.screenshot(path=str(shot))
        assert shot.stat().st_size > 10_000
    finally:
        context.close()
