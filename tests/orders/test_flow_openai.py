"""The order flow with the `openai` provider: a scripted model over real HTTP (the
official SDK), the `stripe` gateway against the local Stripe-compatible server.

Each script plays the model turn by turn, including models that misbehave: the
guardrails in the tools and the workflow must hold whatever the model does.
"""

import json

import pytest
from django.core import mail

from orders.models import FraudReview, Order
from orders.services.reviews import review_decide
from tests.support.openai_server import reply_text, reply_tool_calls
from workflows.models import StepRecord

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.usefixtures("reviewer_with_email"),  # production's reviewers: alerted
]

EMAIL = "ada@example.com"


@pytest.fixture(autouse=True)
def real_parts(openai_server, stripe_server):
    return openai_server, stripe_server


def charge(amount: str, customer_id: str = "cus_good", currency: str = "usd"):
    return reply_tool_calls(
        [("charge_stripe", {"customer_id": customer_id, "amount": amount, "currency": currency})]
    )


def send_email(order_id: str, amount: str, email: str = EMAIL):
    return reply_tool_calls(
        [("send_confirmation_email", {"email": email, "order_id": order_id, "amount": amount})]
    )


def answer(action: str, requested: str | None = None):
    return reply_text(
        json.dumps(
            {
                "action": action,
                "action_details": {
                    "charge_id": None,
                    "amount": None,
                    "email_sent_to": None,
                    "message_id": None,
                },
                "action_requested": requested,
                "status_message": f"did {action}",
            }
        )
    )


def tool_results(openai_server) -> list[dict]:
    """Every tool result the model was shown, in order, without repeats."""
    seen: dict[str, dict] = {}
    for request in openai_server.chat_requests:
        for message in request.json["messages"]:
            if message["role"] == "tool":
                seen[message["tool_call_id"]] = json.loads(message["content"])
    return list(seen.values())


def assert_the_agent_confirmed(order: Order, agent_key: str) -> None:
    """The agent's own email tool call succeeded, so the workflow's fallback did not run."""
    [email] = StepRecord.objects.filter(
        run=order.run,
        key__startswith=f"{agent_key}/tool/",
        key__endswith="/send_confirmation_email",
    )
    assert "error" not in email.output and email.output["output"]["sent"] is True
    assert not StepRecord.objects.filter(run=order.run, key="confirm").exists()


def test_the_workflow_confirms_when_the_model_does_not(
    openai_server, stripe_server, place_order, queue_capture
):
    openai_server.script([charge("250.00"), answer("charge")])  # never calls the email tool
    order = run_order(place_order, queue_capture, "250.00")
    assert order.status == "completed" and order.email_sent
    assert StepRecord.objects.get(run=order.run, key="confirm").status == "completed"
    assert [m.to for m in mail.outbox] == [[EMAIL]]


def run_order(place_order, queue_capture, amount: str, **kwargs) -> Order:
    order = place_order(amount, **kwargs)
    queue_capture.drain()
    order.refresh_from_db()
    return order


def test_small_order(openai_server, stripe_server, place_order, queue_capture):
    openai_server.script([charge("250.00"), send_email("ord-250-00", "250.00"), answer("email")])
    order = run_order(place_order, queue_capture, "250.00")
    assert order.status == "completed"
    assert [c["amount"] for c in stripe_server.successful_charges()] == [25000]
    assert [m.to for m in mail.outbox] == [[EMAIL]]
    assert_the_agent_confirmed(order, "start_order")
    # The model saw the real charge, and what it was sent included the order's details.
    assert tool_results(openai_server)[0]["charge_id"] == order.charge_id
    first_prompt = openai_server.chat_requests[0].json["messages"][1]["content"]
    assert "ord-250-00" in first_prompt and EMAIL in first_prompt and "250.00 USD" in first_prompt


def test_large_order_approved(openai_server, stripe_server, place_order, queue_capture, reviewer):
    openai_server.script([charge("1500.00"), answer("charge", "fraud_review")])
    order = run_order(place_order, queue_capture, "1500.00")
    assert order.status == "awaiting_review" and [m.to for m in mail.outbox] == [[reviewer.email]]

    openai_server.script([send_email("ord-1500-00", "1500.00"), answer("email")])
    review_decide(order=order, approved=True, by=reviewer)
    queue_capture.drain()
    order.refresh_from_db()
    assert order.status == "completed" and order.fraud_approved is True
    assert [m.to for m in mail.outbox] == [[reviewer.email], [EMAIL]]
    assert len(stripe_server.successful_charges()) == 1
    assert_the_agent_confirmed(order, "send_confirmation")
    approval_prompt = openai_server.chat_requests[-2].json["messages"][1]["content"]
    assert (
        "APPROVED" in approval_prompt and EMAIL in approval_prompt and "1500.00" in approval_prompt
    )


def test_large_order_rejected(openai_server, stripe_server, place_order, queue_capture, reviewer):
    openai_server.script([charge("1500.00"), answer("charge", "fraud_review")])
    order = run_order(place_order, queue_capture, "1500.00")
    review_decide(order=order, approved=False, by=reviewer)
    queue_capture.drain()
    order.refresh_from_db()
    assert order.status == "rejected" and order.payment_status == "canceled"
    [intent] = stripe_server.payment_intents.values()
    assert (intent["capture_method"], intent["status"]) == ("manual", "canceled")
    assert stripe_server.refunds == {} and order.refund_id == ""
    assert [m.to for m in mail.outbox] == [[reviewer.email]]
    assert openai_server.pending == 0  # no model call after a rejection


def test_model_that_forgets_the_review_is_overruled(
    openai_server, stripe_server, place_order, queue_capture, reviewer
):
    openai_server.script([charge("5000.00"), send_email("ord-5000-00", "5000.00"), answer("email")])
    order = run_order(place_order, queue_capture, "5000.00")

    assert order.status == "awaiting_review" and [m.to for m in mail.outbox] == [[reviewer.email]]
    refusal = tool_results(openai_server)[1]["error"]
    assert "above the fraud threshold" in refusal and "not been approved" in refusal
    policy = StepRecord.objects.get(run=order.run, key="fraud_policy")
    assert policy.output["overrides_agent"] is True
    assert policy.output["agent_requested_review"] is False
    assert FraudReview.objects.get(run=order.run).is_open


def test_model_emailing_before_approval_is_refused(
    openai_server, stripe_server, place_order, queue_capture, reviewer
):
    openai_server.script(
        [charge("2500.00"), send_email("ord-2500-00", "2500.00"), answer("charge", "fraud_review")]
    )
    order = run_order(place_order, queue_capture, "2500.00")
    assert order.status == "awaiting_review" and not order.email_sent
    assert [m.to for m in mail.outbox] == [[reviewer.email]]
    assert "error" in tool_results(openai_server)[1]


def test_wrong_arguments_are_refused_and_the_order_amount_is_charged(
    openai_server, stripe_server, place_order, queue_capture
):
    openai_server.script(
        [
            charge("2.50"),  # the model slips a decimal point
            charge("250.00", customer_id="cus_other"),
            charge("250.00"),
            charge("250.00"),  # and charges twice
            send_email("ord-250-00", "250.00", email="mallory@example.com"),
            send_email("ord-250-00", "250.00"),
            send_email("ord-250-00", "250.00"),  # and emails twice
            answer("email"),
        ]
    )
    order = run_order(place_order, queue_capture, "250.00")
    assert order.status == "completed"
    results = tool_results(openai_server)
    assert "amount 2.50 is not the order's amount 250.00" in results[0]["error"]
    assert "customer_id 'cus_other' is not the order's customer" in results[1]["error"]
    assert results[2]["charge_id"] == results[3]["charge_id"] == order.charge_id
    assert "email 'mallory@example.com' is not the order's customer email" in results[4]["error"]
    assert [c["amount"] for c in stripe_server.successful_charges()] == [25000]
    assert [m.to for m in mail.outbox] == [[EMAIL]]


def test_declined_card(openai_server, stripe_server, place_order, queue_capture):
    openai_server.script([charge("80.00", customer_id="cus_declined"), answer("charge")])
    order = run_order(place_order, queue_capture, "80.00", customer_id="cus_declined")
    assert order.status == "failed" and "insufficient_funds" in order.failure_reason
    assert "Payment declined" in tool_results(openai_server)[0]["error"]
    assert mail.outbox == [] and stripe_server.successful_charges() == []
