"""`manage.py process_order`, `review`, `expire_reviews` and `demo`."""

import json
import queue
import threading
from datetime import timedelta
from io import StringIO

import pytest
from django.contrib.auth.models import User
from django.core.management import CommandError, call_command
from django.db import connection, transaction
from django.utils import timezone

from orders.models import FraudReview, Order
from workflows.engine import queue as workflow_queue
from workflows.engine.executor import run_execute
from workflows.engine.selectors import usage_cost
from workflows.models import Wait

pytestmark = pytest.mark.django_db(transaction=True)

ORDER = ["--customer-id", "cus_good", "--email", "ada@example.com"]


@pytest.fixture(autouse=True)
def simulated(settings):
    settings.LLM_PROVIDER = "simulated"
    settings.PAYMENT_GATEWAY = "simulated"


@pytest.fixture
def worker(transactional_db, monkeypatch):
    """A qcluster stand-in: a thread executes each queued run once its transaction
    commits, while the command under test polls the database."""
    jobs: queue.Queue[str | None] = queue.Queue()
    errors: list[BaseException] = []

    def send(run_id: str) -> None:
        transaction.on_commit(lambda: jobs.put(run_id))

    def loop() -> None:
        try:
            while (run_id := jobs.get()) is not None:
                run_execute(run_id)
        except BaseException as exc:
            errors.append(exc)
        finally:
            connection.close()

    monkeypatch.setattr(workflow_queue, "_send", send)
    thread = threading.Thread(target=loop, name="test-worker", daemon=True)
    thread.start()
    yield
    jobs.put(None)
    thread.join(timeout=30)
    assert not thread.is_alive() and errors == []


def run(*args: str) -> str:
    out = StringIO()
    call_command(*args, stdout=out, stderr=StringIO())
    return out.getvalue()


def fields(output: str) -> dict[str, str]:
    """`label  value` lines as a dict (labels may contain one space)."""
    pairs = {}
    for line in output.splitlines():
        label, sep, value = line.partition("  ")
        if sep and label and not label.startswith(" "):
            pairs[label] = value.strip()
    return pairs


# --- process_order ---------------------------------------------------------------------


def test_process_order_starts_the_order_once(queue_capture):
    output = run("process_order", "--order-id", "cli-1", *ORDER, "--amount", "12.34")
    order = Order.objects.get(order_id="cli-1")
    assert fields(output) == {
        "order": "cli-1 (created)",
        "status": "processing",
        "run": str(order.run_id),
        "trace": f"/runs/{order.run_id}/",
    }
    assert queue_capture.sent == [str(order.run_id)]

    again = run("process_order", "--order-id", "cli-1", *ORDER, "--amount", "12.34")
    assert "already existed" in fields(again)["order"] and str(order.run_id) in again
    assert Order.objects.count() == 1 and len(queue_capture.sent) == 1
    with pytest.raises(CommandError, match=r"^Order cli-1 already exists with a different"):
        run("process_order", "--order-id", "cli-1", *ORDER, "--amount", "12.35")


@pytest.mark.parametrize(
    ("amount", "message"),
    [
        ("12.345", "no more than 2 decimal places"),
        ("abc", "A valid number is required"),
        ("-5", "must be greater than 0"),
        ("0", "must be greater than 0"),
    ],
)
def test_process_order_refuses_bad_amounts(queue_capture, amount, message):
    with pytest.raises(CommandError, match=rf"^Invalid order: --amount: .*{message}"):
        run("process_order", "--order-id", "cli-bad", *ORDER, "--amount", amount)
    assert not Order.objects.exists() and queue_capture.sent == []


def test_process_order_refuses_bad_email_and_currency(queue_capture):
    with pytest.raises(CommandError, match=r"^Invalid order: --email: .*; --currency: Unknown"):
        run(
            "process_order",
            *["--order-id", "cli-bad", "--customer-id", "c", "--email", "not-an-email"],
            *["--amount", "5.00", "--currency", "xyz"],
        )


def test_process_order_wait_prints_the_result(worker):
    output = run("process_order", "--order-id", "cli-w", *ORDER, "--amount", "250.00", "--wait")
    order = Order.objects.get(order_id="cli-w")
    result = fields(output)
    assert result["run status"] == "completed" and result["order status"] == "completed"
    assert result["charge id"] == order.charge_id and order.charge_id.startswith("pi_sim")
    assert result["email sent"] == "yes" and result["refund id"] == "—"
    assert result["failure reason"] == "—"
    payload = json.loads(output[output.index("output:\n") + len("output:\n") :])
    assert payload["status"] == "completed" and payload["email_sent"] is True


def test_process_order_wait_stops_at_a_fraud_review(worker):
    output = run("process_order", "--order-id", "cli-big", *ORDER, "--amount", "2500.00", "--wait")
    result = fields(output)
    assert result["run status"] == "suspended" and result["order status"] == "awaiting_review"
    assert "manage.py review cli-big --approve|--reject" in output


def test_process_order_wait_times_out_without_a_worker(queue_capture):
    with pytest.raises(CommandError, match=r"still pending after 0\.3 s; is a qcluster running"):
        run(
            "process_order",
            *["--order-id", "cli-t", *ORDER, "--amount", "5.00", "--wait", "--timeout", "0.3"],
        )
    with pytest.raises(CommandError, match="argument --timeout: 'soon' is not a number"):
        run("process_order", "--order-id", "cli-t", *ORDER, "--amount", "5", "--timeout", "soon")


# --- review ----------------------------------------------------------------------------


def test_review_approves_and_the_run_resumes(queue_capture, place_order, reviewer):
    order = place_order("2500.00", order_id="big-1")
    assert queue_capture.drain() == ["suspended"]
    output = run("review", "big-1", "--approve", "--user", "rita", "--note", "known customer")
    assert output.strip() == (
        f"order big-1: fraud review approved by rita (known customer); "
        f"run {order.run_id} queued to resume"
    )
    assert queue_capture.drain() == ["completed"]
    order.refresh_from_db()
    assert order.status == "completed" and order.fraud_approved is True
    with pytest.raises(CommandError, match=r"^The review of order big-1 was already decided"):
        run("review", "big-1", "--reject", "--user", "rita")


def test_review_rejects(queue_capture, place_order, reviewer):
    place_order("4200.00", order_id="big-2")
    queue_capture.drain()
    assert "fraud review rejected by rita" in run("review", "big-2", "--reject", "--user", "rita")
    queue_capture.drain()
    order = Order.objects.get(order_id="big-2")
    assert order.status == "rejected" and order.payment_status == "canceled"
    assert order.refund_id == ""


def test_review_refuses_without_permission(queue_capture, place_order, staff_without_permission):
    place_order("2500.00", order_id="big-3")
    queue_capture.drain()
    with pytest.raises(CommandError, match=r"^user sam may not decide fraud reviews$"):
        run("review", "big-3", "--approve", "--user", "sam")
    assert FraudReview.objects.get().status == "waiting"


def test_review_refuses_unknown_user_and_order(reviewer):
    with pytest.raises(CommandError, match=r"^No user named 'nobody'$"):
        run("review", "big-1", "--approve", "--user", "nobody")
    with pytest.raises(CommandError, match=r"^No order 'nope'$"):
        run("review", "nope", "--approve", "--user", "rita")
    with pytest.raises(CommandError, match="one of the arguments --approve --reject is required"):
        run("review", "nope", "--user", "rita")


def test_review_refuses_when_there_is_nothing_to_decide(queue_capture, place_order, reviewer):
    place_order("25.00", order_id="small-1")
    queue_capture.drain()
    with pytest.raises(CommandError, match=r"^Order small-1 has no fraud review to decide$"):
        run("review", "small-1", "--approve", "--user", "rita")


# --- expire_reviews --------------------------------------------------------------------


def test_expire_reviews_times_out_overdue_reviews(queue_capture, place_order):
    place_order("2500.00", order_id="late-1")
    place_order("3000.00", order_id="on-time")
    queue_capture.drain()
    assert run("expire_reviews").strip() == "expired 0 wait(s), 0 of them fraud review(s)"

    Wait.objects.filter(data__order_id="late-1").update(
        deadline=timezone.now() - timedelta(seconds=1)
    )
    output = run("expire_reviews")
    assert output.splitlines() == [
        "expired 1 wait(s), 1 of them fraud review(s)",
        "  order late-1: review timed out; its payment will be released",
    ]
    assert queue_capture.drain() == ["completed"]
    late = Order.objects.get(order_id="late-1")
    assert late.status == "rejected" and late.failure_reason == "review_timeout"
    assert Order.objects.get(order_id="on-time").status == "awaiting_review"


def test_expire_reviews_takes_no_arguments():
    with pytest.raises(CommandError, match="unrecognized arguments: now"):
        run("expire_reviews", "now")


# --- demo ------------------------------------------------------------------------------


def test_demo_shows_every_path(worker, settings):
    settings.SITE_URL = "http://demo:1/"  # scripts/serve.sh sets it from its address
    output = run("demo", "--orders", "6", "--timeout", "30")
    lines = output.splitlines()
    progress = [line for line in lines if line.startswith("[")]
    assert progress[-1] == "[" + "#" * 20 + "] 6/6 settled"
    assert len(progress) == len(set(progress))  # one line per change, not per poll
    header = lines.index(next(line for line in lines if line.startswith("order ")))
    rows = {row.split()[0]: row for row in lines[header + 2 : header + 8]}
    assert len(rows) == 6
    orders = {o.order_id: o for o in Order.objects.select_related("run")}
    assert set(rows) == set(orders)
    outcomes = {}
    for order_id, row in rows.items():
        order = orders[order_id]
        assert f"http://demo:1/runs/{order.run_id}/" in row
        outcomes[str(order.amount)] = row
    assert "completed after approval" in outcomes["2500.00"]
    assert "approved by reviewer" in outcomes["2500.00"]
    assert "rejected by reviewer" in outcomes["4200.00"]
    assert " rejected " in outcomes["4200.00"].replace("rejected by", "")
    assert " failed " in outcomes["75.00"] and orders_with("cus_declined") == 1
    for small in ("49.99", "250.00", "1000.00"):
        assert " completed " in outcomes[small] and " yes " in outcomes[small]
    assert lines[-1] == "paths seen: completed, completed after approval, rejected, failed"
    # The simulated model has a price: every run that called it shows what it cost.
    assert all(usage_cost(order.run.usage) for order in orders.values())
    reviewer = User.objects.get(username="reviewer")
    assert not reviewer.has_usable_password()
    assert reviewer.has_perm("orders.decide_fraud_review")
    assert reviewer.groups.filter(name="Fraud reviewers").exists()


def orders_with(customer_id: str) -> int:
    return Order.objects.filter(customer_id=customer_id).count()


def test_demo_times_out_without_a_worker(queue_capture):
    with pytest.raises(CommandError, match=r"^Timed out after 0\.5 s .*is a qcluster running\?"):
        run("demo", "--orders", "2", "--timeout", "0.5")
    assert Order.objects.filter(status="processing").count() == 2


def test_bootstrap_demo_gives_the_admin_an_address_so_reviews_are_announced(
    settings, queue_capture, place_order, mailoutbox
):
    settings.DEBUG = True
    settings.SITE_URL = "http://127.0.0.1:8080"
    settings.LLM_PROVIDER = "simulated"
    settings.PAYMENT_GATEWAY = "simulated"
    output = run("bootstrap_demo")
    assert output.startswith("Demo admin: http://127.0.0.1:8080/admin/  user 'admin'")
    assert "email admin@example.com" in output
    admin = User.objects.get(username="admin")
    assert admin.is_superuser and admin.email == "admin@example.com"
    # An admin made before it had an address gets one; its password stays.
    User.objects.filter(pk=admin.pk).update(email="")
    assert "password unchanged" in run("bootstrap_demo")
    assert User.objects.get(pk=admin.pk).email == "admin@example.com"

    # The demo's reviewer has no address: the alert goes to the admin, with a link
    # that follows SITE_URL.
    place_order("2500.00")
    assert queue_capture.drain() == ["suspended"]
    [alert] = mailoutbox
    assert alert.to == ["admin@example.com"] and alert.subject.startswith("Review order")
    assert "http://127.0.0.1:8080/admin/orders/fraudreview/order/" in alert.body


def test_demo_refuses_a_bad_count():
    with pytest.raises(CommandError, match="argument --orders: 0 is not between 1 and 500"):
        run("demo", "--orders", "0")
    assert not Order.objects.exists()
