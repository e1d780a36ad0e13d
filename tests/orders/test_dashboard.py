"""The orders' panels on the console's operations dashboard: orders per minute by
outcome, the review backlog and its oldest review, decision times and the approval rate,
and the client webhook endpoints failing; what an operator may see; and queries that
do not grow with the data."""

import re
from datetime import timedelta
from decimal import Decimal

import pytest
from django.contrib.auth.models import User
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from orders.client_webhooks.models import (
    WebhookAttempt,
    WebhookDelivery,
    WebhookEndpoint,
)
from orders.dashboard import (
    orders_per_minute,
    review_decision_times,
    reviews_backlog,
    reviews_oldest,
    webhook_endpoints_health,
)
from orders.models import FRAUD_REVIEW_KEY, ORDER_WORKFLOW_ID, Order, OrderStatus
from orders.services.reviews import review_decide
from tests.support.roles import operator_client
from workflows.models import RunStatus, Wait, WaitStatus, WorkflowRun

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def simulated(settings):
    settings.LLM_PROVIDER = "simulated"
    settings.PAYMENT_GATEWAY = "simulated"


def test_orders_per_minute_by_outcome_from_real_orders(place_order, queue_capture):
    place_order("25.00", order_id="small-1")
    place_order("30.00", order_id="small-2")
    place_order("2500.00", order_id="big-1")
    queue_capture.drain()
    # Placed, then read a moment later: pinned inside one minute, so that a minute's turn
    # between the two cannot put them in different buckets.
    now = timezone.now().replace(second=30, microsecond=0)
    Order.objects.update(created_at=now - timedelta(seconds=10))
    data = orders_per_minute(now=now)
    by_name = {s.name: s.values for s in data.series}
    assert by_name[OrderStatus.COMPLETED][-1] == 2
    assert by_name[OrderStatus.AWAITING_REVIEW][-1] == 1
    assert dict(data.figures)["orders, last hour"] == "3"
    assert len(data.buckets) == 60


def test_backlog_oldest_and_decisions_from_real_reviews(place_order, queue_capture, reviewer):
    orders = [place_order(f"{2500 + n}.00", order_id=f"big-{n}") for n in range(4)]
    queue_capture.drain()
    reviews = [Wait.objects.get(key=FRAUD_REVIEW_KEY, run_id=o.run_id) for o in orders]
    # Opened 3 h, 2 h and 1 h ago (as if), then decided now: decision times 3 h, 2 h, 1 h.
    for hours, review in zip((3, 2, 1), reviews[:3], strict=True):
        Wait.objects.filter(pk=review.pk).update(created_at=timezone.now() - timedelta(hours=hours))
    review_decide(order=orders[0], approved=True, by=reviewer, note="ok")
    review_decide(order=orders[1], approved=True, by=reviewer, note="ok")
    review_decide(order=orders[2], approved=False, by=reviewer, note="no")
    queue_capture.drain()

    now = timezone.now()
    backlog = reviews_backlog(now=now)
    (pending,) = backlog.series
    assert pending.values[-1] == 1  # only big-3 is left
    assert pending.values[-2] == 3  # an hour ago: the three oldest were open, big-3 not yet
    assert dict(backlog.figures)["pending now"] == "1"
    assert dict(backlog.figures)["most, last 24 h"] == "3"

    oldest = reviews_oldest(now=now)
    ages = oldest.series[0].values
    # At the top of this hour the oldest open review was the one opened 3 h ago; now
    # (after the decisions) it is big-3, opened moments ago.
    top_of_hour = now.replace(minute=0, second=0, microsecond=0)
    opened = Wait.objects.get(pk=reviews[0].pk).created_at
    assert ages[-2] == pytest.approx((top_of_hour - opened).total_seconds() / 3600, abs=0.01)
    assert ages[-1] < 0.05

    decisions = review_decision_times(now=now)
    figures = dict(decisions.figures)
    assert figures["decision time p50"] == "2 h 00 m"
    assert figures["p95"] == "3 h 00 m"
    assert figures["approved"] == "67%"
    assert figures["decided, last 24 h"] == "3"
    by_name = {s.name: s.values for s in decisions.series}
    assert by_name["approved"][-1] == 2 and by_name["rejected"][-1] == 1


def _endpoint(client: User, url: str, **health) -> WebhookEndpoint:
    return WebhookEndpoint.objects.create(
        client=client, url=url, events=["order.created"], secret="whsec_x", **health
    )


def test_failing_endpoints_are_listed_longest_failing_first(db):
    client = User.objects.create_user("intake")
    now = timezone.now()
    _endpoint(client, "https://ok.example/hook", last_status="HTTP 200")
    _endpoint(
        client,
        "https://new.example/hook",
        failing_since=now - timedelta(minutes=5),
        failed_attempts=2,
        last_status="HTTP 503",
    )
    _endpoint(
        client,
        "https://old.example/hook",
        failing_since=now - timedelta(hours=5),
        failed_attempts=9,
        last_status="TimeoutError: no complete answer within 10 s",
        enabled=False,
    )
    data = webhook_endpoints_health(now=now)
    assert [row[0][0] for row in data.rows] == [
        "https://old.example/hook",
        "https://new.example/hook",
    ]
    assert [row[4][0] for row in data.rows] == ["9", "2"]
    assert data.rows[0][2][0] == "DISABLED" and data.rows[1][5][0] == "HTTP 503"
    assert dict(data.figures) == {"endpoints failing": "2", "disabled": "1", "endpoints": "3"}


def seed(n: int) -> None:
    """`n` orders of each outcome with their runs, `n` pending and `n` decided reviews,
    `n` endpoints failing with `n` attempts each, spread over the last hours."""
    now = timezone.now()
    client = User.objects.create_user(f"intake-{n}")
    for i in range(n):
        for status in (OrderStatus.COMPLETED, OrderStatus.FAILED, OrderStatus.AWAITING_REVIEW):
            run = WorkflowRun.objects.create(
                workflow_id=ORDER_WORKFLOW_ID,
                input={},
                status=RunStatus.SUSPENDED
                if status == OrderStatus.AWAITING_REVIEW
                else RunStatus.COMPLETED,
            )
            order = Order.objects.create(
                client=client,
                order_id=f"o-{n}-{i}-{status}",
                customer_id="cus",
                customer_email="a@example.com",
                amount=Decimal("10.00"),
                status=status,
                request_fingerprint="x",
                run=run,
            )
            Order.objects.filter(pk=order.pk).update(created_at=now - timedelta(minutes=i % 50))
            if status != OrderStatus.FAILED:  # a pending review, or one decided
                decided = status == OrderStatus.COMPLETED
                wait = Wait.objects.create(
                    run=run,
                    key=FRAUD_REVIEW_KEY,
                    position=1,
                    data={"order_id": order.order_id},
                    deadline=now + timedelta(hours=24),
                    status=WaitStatus.RESUMED if decided else WaitStatus.WAITING,
                    resume_data={"approved": i % 2 == 0} if decided else None,
                    resumed_at=now - timedelta(minutes=i % 60) if decided else None,
                )
                Wait.objects.filter(pk=wait.pk).update(
                    created_at=now - timedelta(hours=i % 20, minutes=90)
                )
        endpoint = _endpoint(
            client,
            f"https://e{i}.example/hook",
            failing_since=now - timedelta(hours=i % 7),
            failed_attempts=n,
            last_status="HTTP 503",
        )
        delivery = WebhookDelivery.objects.create(
            endpoint=endpoint, event_id=f"evt_{n}_{i}", event_type="order.created"
        )
        WebhookAttempt.objects.bulk_create(
            WebhookAttempt(delivery=delivery, number=k + 1, status_code=503, at=now)
            for k in range(n)
        )


def panels_drawn(html: str) -> set[str]:
    return set(re.findall(r'data-panel="([a-z_]+)"', html))


def test_the_dashboards_queries_do_not_grow_with_the_data():
    client = operator_client()
    counts = []
    for n in (3, 30):
        seed(n)
        with CaptureQueriesContext(connection) as queries:
            page = client.get("/dashboard/")
        assert page.status_code == 200
        html = page.content.decode()
        assert {"orders_per_minute", "review_backlog", "review_decisions"} <= panels_drawn(html)
        assert "This panel failed to load." not in html
        counts.append(len(queries))
    assert counts[0] == counts[1], counts


def test_an_operator_sees_the_orders_panels_and_staff_without_the_permission_do_not(
    staff_without_permission,
):
    html = operator_client().get("/dashboard/").content.decode()
    assert panels_drawn(html) == {
        "orders_per_minute",
        "review_backlog",
        "review_oldest",
        "review_decisions",
        "model_cost",
        "run_failures",
        "webhook_endpoints",
    }
    client = Client()
    client.force_login(staff_without_permission)
    assert client.get("/dashboard/").status_code == 403


def test_the_client_webhooks_hooks_come_from_its_ready(monkeypatch):
    from django.apps import apps

    from workflows.engine import hooks

    empty = hooks.Hooks()
    monkeypatch.setattr(hooks, "registry", empty)
    for _ in range(2):  # a second ready() changes nothing
        apps.get_app_config("client_webhooks").ready()
    assert list(empty.run_groups) == ["deliveries"]
    assert empty.run_groups["deliveries"].workflow_ids == ("webhook_delivery",)
    assert list(empty.run_searches) == ["client_webhooks"]
    assert list(empty.dashboard_panels) == ["webhook_endpoints"]
