"""Cancelling an order whose money moved: the run stops, the payment is released (a
hold cancelled, a capture refunded) and the order says cancelled, whichever door is
used: `order_cancel`, `cancel_order`, the orders admin, or cancelling its run from the
console or `cancel_run`."""

import re
import threading
from io import StringIO

import pytest
from django.contrib.auth.models import User
from django.contrib.messages import get_messages
from django.core import mail
from django.core.exceptions import PermissionDenied
from django.core.mail import EmailMessage
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import connections
from django.test import Client
from django.urls import reverse

from orders.errors import PaymentReleasePendingError
from orders.models import EmailRecord, EmailStatus, FraudReview, Order
from orders.notifications import CONFIRMATION
from orders.services import cancellation
from orders.services.cancellation import OrderCancelError, order_cancel
from orders.services.lifecycle import order_confirm
from orders.services.payments import order_capture, order_charge
from workflows import NonRetryableError
from workflows.engine.services import run_cancel
from workflows.models import RunStatus, WaitStatus

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.db_engine]


@pytest.fixture(autouse=True)
def parts(settings, stripe_server):
    settings.LLM_PROVIDER = "simulated"
    return stripe_server


@pytest.fixture
def held(place_order, queue_capture) -> Order:
    """A 1500.00 order waiting for its review, its payment held."""
    order = place_order("1500.00")
    assert queue_capture.drain() == ["suspended"]
    order.refresh_from_db()
    assert order.payment_status == "authorized"
    return order


@pytest.fixture
def superuser() -> User:
    return User.objects.create_superuser("root", password="root-pass-123")


def assert_cancelled(order: Order, payment_status: str) -> Order:
    order.refresh_from_db()
    assert order.status == "cancelled" and order.payment_status == payment_status
    assert order.run.status == RunStatus.CANCELLED
    assert FraudReview.objects.get(run=order.run).status == WaitStatus.CANCELLED
    return order


def test_cancel_after_the_hold_voids_it(held, stripe_server, superuser):
    order_cancel(order=held, by=superuser)
    order = assert_cancelled(held, "canceled")
    assert stripe_server.payment_intents[order.charge_id]["status"] == "canceled"
    assert stripe_server.refunds == {} and order.failure_reason == "cancelled by root"


def test_cancel_after_the_capture_refunds_it(held, stripe_server):
    order_capture(run_id=held.run_id)  # a capture already made: a run from before holds
    out = call_command_output("cancel_order", held.order_id)
    order = assert_cancelled(held, "refunded")
    [refund] = stripe_server.refunds_for(order.charge_id)
    assert refund["amount"] == 150000 and order.refund_id == refund["id"]
    assert out == f"order {order.order_id}: cancelled; payment refunded\n"


def test_cancelling_the_run_cancels_the_order(held, stripe_server):
    call_command("cancel_run", str(held.run_id))
    order = assert_cancelled(held, "canceled")
    assert stripe_server.payment_intents[order.charge_id]["status"] == "canceled"


def test_the_consoles_cancel_action_cancels_the_order(held, stripe_server, superuser):
    client = Client()
    client.force_login(superuser)
    response = client.post(
        reverse("admin:workflows_workflowrun_changelist"),
        {"action": "cancel_selected", "_selected_action": [str(held.run_id)]},
    )
    assert response.status_code == 302
    assert_cancelled(held, "canceled")


def test_the_orders_admin_cancels_and_a_finished_order_is_refused(
    held, place_order, queue_capture, stripe_server, superuser
):
    done = place_order("25.00", order_id="small")
    queue_capture.drain()
    client = Client()
    client.force_login(superuser)
    response = client.post(
        reverse("admin:orders_order_changelist"),
        {"action": "cancel_selected", "_selected_action": [held.pk, done.pk]},
    )
    messages = [str(m) for m in get_messages(response.wsgi_request)]
    assert (
        "Order small can no longer be cancelled: its confirmation email went out, so the "
        "customer was told it is confirmed. Return the money with a refund instead." in messages
    )
    assert f"Cancelled: {held.order_id} (payment canceled)." in messages
    assert_cancelled(held, "canceled")
    assert Order.objects.get(pk=done.pk).status == "completed"


def test_cancel_needs_the_permission_and_an_unsettled_order(held, place_order, queue_capture):
    nobody = User.objects.create_user("sam", is_staff=True)
    with pytest.raises(PermissionDenied, match="may not cancel orders"):
        order_cancel(order=held, by=nobody)
    assert Order.objects.get(pk=held.pk).status == "awaiting_review"
    order_cancel(order=held)
    with pytest.raises(CommandError, match=r"^Order ord-1500-00 is already cancelled$"):
        call_command("cancel_run", str(held.run_id))
    done = place_order("25.00", order_id="small")
    queue_capture.drain()
    with pytest.raises(OrderCancelError, match="refund instead"):
        order_cancel(order=done)


def call_command_output(*args: str) -> str:
    out = StringIO()
    call_command(*args, stdout=out)
    return out.getvalue()


def test_a_release_the_gateway_failed_is_one_error_every_door_reports(
    held, stripe_server, superuser
):
    """Stripe down while the hold is released: the order stays cancelled with its money
    held, each door says so in its own words and how to retry, and a later cancel, once
    Stripe is back, releases it."""
    not_released = f"Order {held.order_id} is cancelled, but its payment was not released: "
    stripe_server.outage()
    with pytest.raises(PaymentReleasePendingError, match=f"^{not_released}"):
        order_cancel(order=held, by=superuser)
    held.refresh_from_db()
    assert (held.status, held.payment_status) == ("cancelled", "authorized")
    with pytest.raises(
        CommandError, match=rf"(?s)^{not_released}.+\. Run cancel_order again to retry\.$"
    ):
        call_command("cancel_order", held.order_id)
    with pytest.raises(CommandError, match=rf"(?s)^{not_released}.+\. Cancel it again to retry\.$"):
        call_command("cancel_run", str(held.run_id))
    admin = Client()
    admin.force_login(superuser)
    response = admin.post(
        reverse("admin:orders_order_changelist"),
        {"action": "cancel_selected", "_selected_action": [held.pk]},
    )
    [message] = [str(m) for m in get_messages(response.wsgi_request)]
    assert re.match(rf"(?s)^{not_released}.+; cancel it again to retry\.$", message)

    stripe_server.end_outage()
    order_cancel(order=held, by=superuser)
    assert_cancelled(held, "canceled")


# --- after the confirmation: the customer was told, so a refund instead ------------------

TOLD = (
    "can no longer be cancelled: its confirmation email went out, so the customer was told "
    "it is confirmed. Return the money with a refund instead."
)


@pytest.fixture
def charged(place_order, queue_capture) -> Order:
    """A 25.00 order its run has charged (captured) and not confirmed yet: the run is
    still active, as between the charge and the email tool."""
    order = place_order("25.00", order_id="told")
    order_charge(order=order)
    order.refresh_from_db()
    assert order.status == "processing" and order.payment_status == "captured"
    return order


def assert_untouched(order: Order) -> None:
    """Still the run's to finish: not cancelled, nothing refunded."""
    order.refresh_from_db()
    assert order.status == "processing" and order.payment_status == "captured"
    assert order.refund_id == "" and order.run.status == RunStatus.PENDING


def test_every_door_refuses_once_the_confirmation_went_out(
    charged, queue_capture, stripe_server, superuser
):
    order_confirm(order=charged)
    assert [m.subject for m in mail.outbox] == ["Your order told is confirmed"]

    with pytest.raises(OrderCancelError, match=f"^Order told {TOLD}$"):
        order_cancel(order=charged, by=superuser)
    for command, arg in (("cancel_order", charged.order_id), ("cancel_run", str(charged.run_id))):
        with pytest.raises(CommandError, match=f"^Order told {TOLD}$"):
            call_command(command, arg)
    for changelist, selected in (
        ("admin:orders_order_changelist", charged.pk),
        ("admin:workflows_workflowrun_changelist", str(charged.run_id)),  # the console's
    ):
        admin = Client()
        admin.force_login(superuser)
        response = admin.post(
            reverse(changelist), {"action": "cancel_selected", "_selected_action": [selected]}
        )
        assert [str(m) for m in get_messages(response.wsgi_request)] == [f"Order told {TOLD}"]
    assert_untouched(charged)
    assert stripe_server.refunds == {}

    assert queue_capture.drain() == ["completed"]  # the run finishes what it started
    assert Order.objects.get(pk=charged.pk).status == "completed" and len(mail.outbox) == 1


def test_a_confirmation_in_doubt_refuses_the_cancel_too(charged):
    EmailRecord.objects.create(order=charged, kind=CONFIRMATION, recipient="ada@example.com")
    with pytest.raises(OrderCancelError, match=r"its confirmation email is being sent .* may "):
        order_cancel(order=charged)
    assert_untouched(charged)


def in_thread(target, outcome: dict, done: threading.Event) -> threading.Thread:
    """Run `target` on its own thread and database connection, as a second worker or
    an operator's request would; its result or exception lands in `outcome`."""

    def run() -> None:
        try:
            outcome["result"] = target()
        except Exception as exc:
            outcome["error"] = exc
        finally:
            connections.close_all()
            done.set()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def test_race_the_claim_first_the_cancel_is_refused(charged, stripe_server, superuser, monkeypatch):
    """The confirmation is claimed, its message not yet sent, when the cancel comes: the
    cancel refuses; the confirmation goes out."""
    claimed, go_on = threading.Event(), threading.Event()
    send = EmailMessage.send

    def send_when_told(message, *args, **kwargs):
        claimed.set()
        go_on.wait(30)
        return send(message, *args, **kwargs)

    monkeypatch.setattr(EmailMessage, "send", send_when_told)
    try:
        confirming, confirmed = {}, threading.Event()
        claim = in_thread(lambda: order_confirm(order=charged), confirming, confirmed)
        assert claimed.wait(30)
        cancelling, cancel_done = {}, threading.Event()
        in_thread(lambda: order_cancel(order=charged, by=superuser), cancelling, cancel_done)
        assert cancel_done.wait(30), "the cancel must not wait for the message"
        go_on.set()
        claim.join(30)
    finally:
        go_on.set()

    assert "error" not in confirming and confirming["result"].status == EmailStatus.SENT
    # Refused once the claim committed, while the message was still on its way.
    assert isinstance(cancelling.get("error"), OrderCancelError)
    assert re.fullmatch(
        r"Order told can no longer be cancelled: its confirmation email is being sent .*, "
        r"so the customer may already have been told it is confirmed\. "
        r"Return the money with a refund instead\.",
        str(cancelling["error"]),
    )
    assert [m.to for m in mail.outbox] == [["ada@example.com"]]
    assert_untouched(charged)


def test_race_the_cancel_first_no_confirmation_is_sent(
    charged, stripe_server, superuser, monkeypatch
):
    """The cancel is under way when the run's email step comes: the step waits for it,
    sees the order cancelled and sends nothing; the capture is refunded."""
    cancelling_now, go_on = threading.Event(), threading.Event()

    def slow_run_cancel(run_id):
        cancelling_now.set()
        go_on.wait(30)
        return run_cancel(run_id)

    monkeypatch.setattr(cancellation, "run_cancel", slow_run_cancel)
    try:
        cancelling, cancel_done = {}, threading.Event()
        cancel = in_thread(
            lambda: order_cancel(order=charged, by=superuser), cancelling, cancel_done
        )
        assert cancelling_now.wait(30)
        confirming, confirmed = {}, threading.Event()
        claim = in_thread(lambda: order_confirm(order=charged), confirming, confirmed)
        assert not confirmed.wait(1), "the claim must wait for the cancel's lock"
        go_on.set()
        cancel.join(30)
        claim.join(30)
    finally:
        go_on.set()

    assert "error" not in cancelling and cancelling["result"].status == "cancelled"
    assert isinstance(confirming.get("error"), NonRetryableError)
    assert "cancelled" in str(confirming["error"])
    assert mail.outbox == [] and not EmailRecord.objects.filter(order=charged).exists()
    order = Order.objects.get(pk=charged.pk)
    assert order.payment_status == "refunded" and order.run.status == RunStatus.CANCELLED
    [refund] = stripe_server.refunds_for(order.charge_id)
    assert refund["amount"] == 2500
