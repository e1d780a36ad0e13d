"""Defect 4: an order's status must not lie when the agent fails. A model that keeps
sending wrong arguments (the agent gives up) or never stops calling tools (max_steps)
fails no order: the workflow's own policy carries it through, in both agent steps.
And a run that fails for any other reason shows its order as needing attention."""

import json

import pytest
from django.contrib.auth.models import User
from django.core import mail
from django.test import Client
from django.urls import reverse

from orders.models import Order
from orders.services.reviews import review_decide
from tests.support.api import api_client_for
from tests.support.openai_server import reply_text, reply_tool_calls
from workflows.engine.services import run_retry
from workflows.models import RunStatus, StepRecord, WorkflowRun

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.usefixtures("reviewer_with_email"),  # production's reviewers: alerted
]

EMAIL = "ada@example.com"


@pytest.fixture(autouse=True)
def real_parts(openai_server, stripe_server):
    return openai_server, stripe_server


def charge(amount: str):
    return reply_tool_calls(
        [("charge_stripe", {"customer_id": "cus_good", "amount": amount, "currency": "usd"})]
    )


def email_with_amount_zero(order_id: str):
    return reply_tool_calls(
        [("send_confirmation_email", {"email": EMAIL, "order_id": order_id, "amount": 0})]
    )


def answer(action: str, requested: str | None = None):
    details = {"charge_id": None, "amount": None, "email_sent_to": None, "message_id": None}
    body = {
        "action": action,
        "action_details": details,
        "action_requested": requested,
        "status_message": f"did {action}",
    }
    return reply_text(json.dumps(body))


def settled(place_order, queue_capture, amount: str) -> Order:
    order = place_order(amount)
    queue_capture.drain()
    order.refresh_from_db()
    return order


def step_keys(order: Order) -> set[str]:
    return set(StepRecord.objects.filter(run=order.run).values_list("key", flat=True))


def test_agent_giving_up_on_the_email_still_completes_a_small_order(
    openai_server, stripe_server, place_order, queue_capture
):
    # 4 refused calls: more than the agent's max_tool_errors (3), so it gives up.
    openai_server.script([charge("250.00"), *[email_with_amount_zero("ord-250-00")] * 4])
    order = settled(place_order, queue_capture, "250.00")

    assert order.status == "completed" and order.payment_status == "captured"
    assert order.run.status == RunStatus.COMPLETED
    assert [m.to for m in mail.outbox] == [[EMAIL]]  # sent once, by the fallback
    assert {"start_order_failed", "confirm"} <= step_keys(order)
    assert len(stripe_server.successful_charges()) == 1


def email_with_a_wrong_amount(order_id: str):
    return reply_tool_calls(
        [("send_confirmation_email", {"email": EMAIL, "order_id": order_id, "amount": "15.00"})]
    )


def test_agent_giving_up_on_the_approved_confirmation_still_confirms(
    openai_server, stripe_server, place_order, queue_capture, reviewer
):
    """The reviewers' alert is an email recorded for the order, and not the customer's
    confirmation: the fallback still sends it, and only then does the order say so."""
    client = User.objects.create_user("shop")
    api = api_client_for(client)
    openai_server.script([charge("1500.00"), answer("charge", "fraud_review")])
    order = place_order("1500.00", client=client)
    queue_capture.drain()
    assert [m.to for m in mail.outbox] == [[reviewer.email]]  # the alert
    waiting = api.get(f"/api/orders/{order.order_id}/").json()
    assert waiting["status"] == "awaiting_review" and waiting["email_sent"] is False

    # Refused each time (the amount is not the order's), until the agent gives up.
    openai_server.script([email_with_a_wrong_amount("ord-1500-00")] * 4)
    review_decide(order=order, approved=True, by=reviewer)
    queue_capture.drain()
    order.refresh_from_db()
    assert order.status == "completed" and order.payment_status == "captured"
    assert order.run.status == RunStatus.COMPLETED
    assert [m.to for m in mail.outbox] == [[reviewer.email], [EMAIL]]
    assert mail.outbox[1].subject == "Your order ord-1500-00 is confirmed"
    assert {"send_confirmation_failed", "confirm"} <= step_keys(order)
    done = api.get(f"/api/orders/{order.order_id}/").json()
    assert done["email_sent"] is True and order.run.output["email_sent"] is True
    assert (
        StepRecord.objects.get(run=order.run, key="check_confirmation").output["email_sent"]
        is False
    )


def test_agent_that_never_stops_still_completes_a_small_order(
    openai_server, stripe_server, place_order, queue_capture
):
    openai_server.script([charge("250.00")] * 10)  # max_steps model calls, no answer
    order = settled(place_order, queue_capture, "250.00")

    assert order.status == "completed" and order.payment_status == "captured"
    assert [m.to for m in mail.outbox] == [[EMAIL]]
    assert len(stripe_server.successful_charges()) == 1
    failed = StepRecord.objects.get(run=order.run, key="start_order")
    assert failed.status == "failed" and "max_steps" in failed.error


def test_agent_that_never_stops_on_a_large_order_is_held_for_review(
    openai_server, stripe_server, place_order, queue_capture, reviewer
):
    """The policy still holds the order for review; after approval the run replays
    the agent's failure (it does not run it again) and completes."""
    openai_server.script([charge("1500.00")] * 10)
    order = settled(place_order, queue_capture, "1500.00")
    assert order.status == "awaiting_review" and order.payment_status == "authorized"
    assert [m.to for m in mail.outbox] == [[reviewer.email]]  # the reviewers' alert only

    openai_server.script(
        [
            reply_tool_calls(
                [
                    (
                        "send_confirmation_email",
                        {"email": EMAIL, "order_id": "ord-1500-00", "amount": "1500.00"},
                    )
                ]
            ),
            answer("email"),
        ]
    )
    review_decide(order=order, approved=True, by=reviewer)
    assert queue_capture.drain() == ["completed"]
    order.refresh_from_db()
    assert order.status == "completed" and order.payment_status == "captured"
    assert [m.to for m in mail.outbox] == [[reviewer.email], [EMAIL]]
    assert openai_server.pending == 0


def test_a_failed_run_shows_its_order_as_needing_attention(queue_capture, place_order):
    client = User.objects.create_user("shop")
    api = api_client_for(client)
    order = place_order("250.00", client=client)
    WorkflowRun.objects.filter(pk=order.run_id).update(
        status=RunStatus.FAILED, error="StepFailedError: the gateway is down"
    )

    body = api.get(f"/api/orders/{order.order_id}/").json()
    assert body["status"] == "needs_attention"
    assert body["failure_reason"] == "run failed: StepFailedError: the gateway is down"
    listed = api.get("/api/orders/", {"status": "needs_attention"}).json()["results"]
    assert [o["order_id"] for o in listed] == [order.order_id]
    assert api.get("/api/orders/", {"status": "processing"}).json()["results"] == []

    admin = Client()
    admin.force_login(User.objects.create_superuser("root"))
    changelist = reverse("admin:orders_order_changelist")
    page = admin.get(changelist, {"status": "needs_attention", "payment_status": "none"})
    assert order.order_id in page.content.decode() and "Needs attention" in page.content.decode()
    assert order.order_id not in admin.get(changelist, {"status": "processing"}).content.decode()

    run_retry(order.run_id)  # the way back: the order shows its own status again
    assert api.get(f"/api/orders/{order.order_id}/").json()["status"] == "processing"
