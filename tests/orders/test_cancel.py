"""Cancelling an order whose money moved: the run stops, the payment is released (a
hold cancelled, a capture refunded) and the order says cancelled, whichever door is
used: `order_cancel`, `cancel_order`, the orders admin, or cancelling its run from the
console or `cancel_run`."""

from io import StringIO

import pytest
from django.contrib.auth.models import User
from django.contrib.messages import get_messages
from django.core.exceptions import PermissionDenied
from django.core.management import call_command
from django.core.management.base import CommandError
from django.test import Client
from django.urls import reverse

from orders.models import FraudReview, Order
from orders.services import OrderCancelError, order_cancel, order_capture
from workflows.models import RunStatus, WaitStatus

pytestmark = pytest.mark.django_db(transaction=True)


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
    assert "Order small is completed: nothing to cancel" in messages
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
    with pytest.raises(OrderCancelError, match="completed"):
        order_cancel(order=done)


def call_command_output(*args: str) -> str:
    out = StringIO()
    call_command(*args, stdout=out)
    return out.getvalue()
