"""Retention of order runs' history: a settled order reads the same once its run's
history is pruned (its trace aside), an unsettled one, a held payment or an open
dispute keeps its history, a review opened before a prune is decided after it, and a
prune of 10,000 runs beside a stream of new orders works in bounded batches, each its
own short transaction, with the orders' work in between. Database-agnostic: the
PostgreSQL pass of scripts/test.sh runs it there too."""

import math
from datetime import timedelta
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.db import connection
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from orders.models import ORDER_WORKFLOW_ID, Order, OrderStatus, PaymentStatus
from orders.services.reviews import review_decide
from tests.support.api import api_client_for
from workflows.engine import retention
from workflows.engine.retention import RetentionPolicy, runs_prune
from workflows.models import RunStatus, StepRecord, Wait, WaitStatus, WorkflowRun

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.usefixtures("reviewer_with_email"),
]

MONTH = RetentionPolicy(older_than=timedelta(days=30))
EVERYTHING_FINISHED = RetentionPolicy(older_than=timedelta(0))


def no_pause(seconds: float) -> None:
    pass


@pytest.fixture(autouse=True)
def simulated(settings):
    settings.LLM_PROVIDER = "simulated"
    settings.PAYMENT_GATEWAY = "simulated"
    # Priced, so that an order's model cost is a figure the prune must keep.
    settings.WORKFLOWS_MODEL_PRICES = {"simulated:gpt-4o-mini": {"input": "150", "output": "600"}}


@pytest.fixture
def intake(db) -> User:
    return User.objects.create_user("intake")


def finished_long_ago(*orders: Order) -> None:
    WorkflowRun.objects.filter(pk__in=[o.run_id for o in orders]).update(
        finished_at=timezone.now() - timedelta(days=40)
    )


def history(order: Order) -> int:
    return StepRecord.objects.filter(run_id=order.run_id).count() + Wait.objects.filter(
        run_id=order.run_id
    ).count()


def test_a_pruned_order_reads_the_same_over_the_api_but_its_trace(
    queue_capture, place_order, intake, reviewer
):
    api = api_client_for(intake)
    small = place_order("250.00", client=intake, order_id="small")
    reviewed = place_order("2500.00", client=intake, order_id="reviewed")
    declined = place_order("20.13", client=intake, order_id="declined")
    queue_capture.drain()
    review_decide(order=reviewed, approved=True, by=reviewer, note="Known customer, called back")
    queue_capture.drain()
    orders = [Order.objects.get(pk=o.pk) for o in (small, reviewed, declined)]
    assert [o.status for o in orders] == ["completed", "completed", "failed"]
    finished_long_ago(*orders)

    def read(order: Order) -> dict[str, Any]:
        return api.get(f"/api/orders/{order.order_id}/").json()

    before = {o.order_id: read(o) for o in orders}
    runs_before = {o.order_id: api.get(f"/api/runs/{o.run_id}/").json() for o in orders}
    assert before["reviewed"]["review"]["state"] == "approved"
    assert before["reviewed"]["review"]["decided_by"] == "rita"
    assert before["small"]["model_cost_usd"] is not None
    assert all(runs_before[o.order_id]["steps"] for o in orders)

    report = runs_prune(policy=MONTH, pause=no_pause)
    assert set(report.pruned) == {o.run_id for o in orders}

    for order in orders:
        assert history(order) == 0
        assert read(order) == before[order.order_id]  # review, cost, times and all
        run = api.get(f"/api/runs/{order.run_id}/").json()
        assert run["steps"] == [] and run["waits"] == []
        assert run["pruned_at"] is not None
        unchanged = {k: v for k, v in run.items() if k not in ("steps", "waits", "pruned_at")}
        was = runs_before[order.order_id]
        assert unchanged == {
            k: v for k, v in was.items() if k not in ("steps", "waits", "pruned_at")
        }
    assert before["reviewed"]["review"]["note"] == "Known customer, called back"

    # The admin's order page still says how its review ended; the trace, that it is gone.
    staff = Client()
    staff.force_login(User.objects.create_superuser("root", "root@example.com", "x"))
    page = staff.get(reverse("admin:orders_order_change", args=[reviewed.pk])).content.decode()
    assert "Approved by rita" in page and "Known customer, called back" in page
    trace = staff.get(reverse("workflows:run_detail", args=[reviewed.run_id])).content.decode()
    assert "History pruned" in trace


def test_unsettled_orders_holds_and_open_disputes_keep_their_history(queue_capture, place_order):
    settled = place_order("250.00", order_id="settled")
    awaiting = place_order("2500.00", order_id="awaiting")
    attention = place_order("30.00", order_id="attention")
    disputed = place_order("40.00", order_id="disputed")
    held = place_order("50.00", order_id="held")
    queue_capture.drain()
    # Its run failed before the order settled: the order needs attention.
    Order.objects.filter(pk=attention.pk).update(status=OrderStatus.PROCESSING)
    WorkflowRun.objects.filter(pk=attention.run_id).update(
        status=RunStatus.FAILED, error="Stripe unavailable"
    )
    Order.objects.filter(pk=disputed.pk).update(payment_status=PaymentStatus.DISPUTED)
    Order.objects.filter(pk=held.pk).update(
        status=OrderStatus.CANCELLED, payment_status=PaymentStatus.AUTHORIZED
    )
    finished_long_ago(settled, awaiting, attention, disputed, held)
    kept = {o.order_id: history(o) for o in (awaiting, attention, disputed, held)}
    assert all(kept.values())

    report = runs_prune(policy=MONTH, pause=no_pause)

    assert report.pruned == [settled.run_id]
    assert set(report.kept) == {attention.run_id, disputed.run_id, held.run_id}
    assert history(settled) == 0
    assert {o.order_id: history(o) for o in (awaiting, attention, disputed, held)} == kept
    awaiting_run = WorkflowRun.objects.get(pk=awaiting.run_id)
    assert awaiting_run.status == RunStatus.SUSPENDED and awaiting_run.pruned_at is None


def test_a_review_opened_before_a_prune_is_approved_after_it(
    queue_capture, place_order, reviewer
):
    rita = api_client_for(reviewer)  # the API decides the reviewer's own orders
    neighbours = [place_order("10.00", order_id=f"n-{i}") for i in range(3)]
    awaiting = place_order("2500.00", client=reviewer, order_id="awaiting")
    queue_capture.drain()
    report = runs_prune(policy=EVERYTHING_FINISHED, pause=no_pause)
    assert set(report.pruned) == {o.run_id for o in neighbours}
    assert Wait.objects.get(run_id=awaiting.run_id).status == WaitStatus.WAITING

    url = "/api/orders/awaiting/review/"
    decided = rita.post(url, {"approved": True, "note": "checked the card"}, format="json")
    assert decided.status_code == 200, decided.json()
    assert queue_capture.drain() == ["completed"]
    awaiting.refresh_from_db()
    assert awaiting.status == OrderStatus.COMPLETED
    assert awaiting.payment_status == PaymentStatus.CAPTURED

    before = rita.get("/api/orders/awaiting/").json()
    runs_prune(policy=EVERYTHING_FINISHED, pause=no_pause)
    after = rita.get("/api/orders/awaiting/").json()
    assert history(awaiting) == 0 and after == before
    assert after["review"]["state"] == "approved" and after["review"]["note"] == "checked the card"
    # Deciding it again says what it was, as before the prune.
    again = rita.post(url, {"approved": False}, format="json")
    assert again.status_code == 409
    assert again.json()["detail"] == "The review of order awaiting was already decided (approved)"


def test_a_prune_of_10000_runs_beside_a_stream_of_orders(
    queue_capture, place_order, settings, monkeypatch
):
    """The prune works in batches of WORKFLOWS_RETENTION_BATCH runs, each one short
    transaction of a fixed number of statements whose DELETEs name at most that many
    runs; new orders run between two batches, never waiting for the whole prune."""
    settings.WORKFLOWS_RETENTION_BATCH = batch_size = 1000
    total = 10_000
    long_ago = timezone.now() - timedelta(days=40)
    runs = WorkflowRun.objects.bulk_create(
        [
            WorkflowRun(
                workflow_id=ORDER_WORKFLOW_ID,
                input={},
                status=RunStatus.COMPLETED,
                finished_at=long_ago + timedelta(seconds=i),
            )
            for i in range(total)
        ],
        batch_size=2000,
    )
    StepRecord.objects.bulk_create(
        [
            StepRecord(
                run=run,
                key=key,
                position=position,
                status="completed",
                output={"ok": True},
                started_at=long_ago,
                finished_at=long_ago,
            )
            for run in runs
            for position, key in enumerate(("register_order", "finish"))
        ],
        batch_size=2000,
    )

    # Which batch each SQL statement ran in (None: between batches), and whether it ran
    # inside a transaction.
    current: dict[str, int | None] = {"batch": None}
    statements: list[tuple[int | None, str, int, bool]] = []
    prune_batch = retention._prune_batch

    def counted_batch(**kwargs: Any) -> Any:
        current["batch"] = len({b for b, *_ in statements if b is not None})
        try:
            return prune_batch(**kwargs)
        finally:
            current["batch"] = None

    def record(execute, sql, params, many, context):
        statements.append((current["batch"], sql, len(params or ()), connection.in_atomic_block))
        return execute(sql, params, many, context)

    monkeypatch.setattr(retention, "_prune_batch", counted_batch)
    placed: list[Order] = []

    def next_order(seconds: float) -> None:
        """Between two batches, a new order goes through its whole flow."""
        placed.append(place_order(f"{10 + len(placed)}.00", order_id=f"stream-{len(placed)}"))
        assert queue_capture.drain() == ["completed"]

    with connection.execute_wrapper(record):
        report = runs_prune(policy=MONTH, pause=next_order)

    assert len(report.pruned) == total and report.steps_deleted == 2 * total
    batches = math.ceil(total / batch_size)
    assert report.batches == batches
    assert not StepRecord.objects.filter(run__in=runs[:10]).exists()
    # Every new order completed while the prune was going on: one between each batch.
    assert len(placed) == batches
    statuses = Order.objects.filter(pk__in=[p.pk for p in placed]).values_list("status", flat=True)
    assert set(statuses) == {OrderStatus.COMPLETED}

    by_batch: dict[int, list[tuple[str, int, bool]]] = {}
    for batch, sql, params, atomic in statements:
        if batch is not None:
            by_batch.setdefault(batch, []).append((sql, params, atomic))
    assert len(by_batch) == batches + 1  # the last one finds nothing left
    for batch, executed in by_batch.items():
        control = ("BEGIN", "COMMIT", "SAVEPOINT", "RELEASE")
        work = [s for s in executed if not s[0].upper().startswith(control)]
        assert all(atomic for _, _, atomic in work), f"batch {batch} ran outside a transaction"
        # Select and lock the batch, the orders' veto (2) and archive (1), one DELETE of
        # the steps, one of the waits, one UPDATE of the runs: never more, whatever the size.
        assert len(work) <= 7, [s[0][:80] for s in work]
        deletes = [(sql, params) for sql, params, _ in work if sql.upper().startswith("DELETE")]
        assert all(params <= batch_size for _, params in deletes)
    full = [p for batch in by_batch.values() for sql, p, _ in batch if sql.startswith("DELETE")]
    assert batch_size in full  # a full batch: one DELETE of all its runs' steps
    # The orders' own statements all ran between batches.
    assert any(batch is None and "orders_order" in sql for batch, sql, _, _ in statements)
    assert not any(batch is not None and "INSERT" in sql.upper() for batch, sql, _, _ in statements)
