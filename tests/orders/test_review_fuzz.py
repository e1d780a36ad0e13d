"""A fuzzed review path: any sequence of decisions, through any channel (API, admin
button, admin action, command), with any note, decides a review exactly once."""

import itertools
from io import StringIO

import pytest
from django.core.management import CommandError, call_command
from django.test import Client
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from orders.models import FraudReview, ReviewState
from orders.rules import OrderRuleError, note_check
from tests.support.api import api_client_for
from workflows.models import StepRecord

pytestmark = pytest.mark.django_db(transaction=True)

CHANNELS = ("api", "admin_button", "admin_action", "command")
decisions = st.lists(
    st.tuples(st.sampled_from(CHANNELS), st.booleans(), st.text(max_size=40)),
    min_size=1,
    max_size=5,
)
order_numbers = itertools.count()


# Why a channel may refuse a decision; any other refusal fails the test.
REFUSALS = ("already decided", "Control characters")


def valid(note: str) -> bool:
    """Whether every channel must accept this note (the order rules' `note_check`)."""
    try:
        note_check(note)
    except OrderRuleError:
        return False
    return True


def decide(channel: str, review: FraudReview, approved: bool, note: str, reviewer) -> bool:
    """Send one decision; True when that channel reported it as decided. A refusal must
    say why, with one of the expected reasons: no channel swallows an error."""
    order_id = review.data["order_id"]
    if channel == "api":
        # The reviewer's own orders: it is their intake client too.
        response = api_client_for(reviewer).post(
            f"/api/orders/{order_id}/review/", {"approved": approved, "note": note}, format="json"
        )
        assert response.status_code in (200, 400, 409), response.content
        if response.status_code != 200:
            assert any(r in response.content.decode() for r in REFUSALS), response.content
        return response.status_code == 200
    if channel == "command":
        try:
            call_command(
                "review",
                order_id,
                "--approve" if approved else "--reject",
                "--note",
                note,
                "--user",
                reviewer.username,
                stdout=StringIO(),
            )
        except CommandError as exc:
            assert any(r in str(exc) for r in REFUSALS), f"unexpected refusal: {exc}"
            return False
        return True
    client = Client()
    client.force_login(reviewer)
    if channel == "admin_button":
        response = client.post(
            f"/admin/orders/fraudreview/{review.pk}/decide/",
            {"decision": "approve" if approved else "reject", "note": note},
            follow=True,
        )
    else:
        response = client.post(
            "/admin/orders/fraudreview/",
            {
                "action": "approve_selected" if approved else "reject_selected",
                "_selected_action": [review.pk],
                "note": note,
                "post": "yes",
            },
            follow=True,
        )
    assert response.status_code == 200
    texts = [str(m) for m in response.context["messages"]]
    assert texts, "the admin reported nothing"
    won = any(
        (
            "Approved the review" in t
            or "Rejected the review" in t
            or "review approved" in t
            or "review rejected" in t
        )
        for t in texts
    )
    if not won:
        assert any(r in t for t in texts for r in REFUSALS), f"unexpected refusal: {texts}"
    return won


@settings(
    max_examples=12,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(sequence=decisions)
def test_any_decision_sequence_decides_once(
    sequence, queue_capture, place_order, reviewer, settings
):
    settings.LLM_PROVIDER = "simulated"
    settings.PAYMENT_GATEWAY = "simulated"
    # The reviewer's own order: through the API a client decides only its own.
    order = place_order("2500.00", order_id=f"fuzz-{next(order_numbers)}", client=reviewer)
    queue_capture.drain()
    review = FraudReview.objects.get(run=order.run)

    outcomes = [
        decide(channel, review, approved, note, reviewer) for channel, approved, note in sequence
    ]

    review.refresh_from_db()
    # The first valid attempt decides, whatever its channel; every other one is refused.
    first_valid = next((i for i, (_, _, note) in enumerate(sequence) if valid(note)), None)
    expected = [i == first_valid for i in range(len(sequence))]
    assert outcomes == expected, f"{sequence}: decided {outcomes}, expected {expected}"
    assert_decided_once(order, review, None if first_valid is None else sequence[first_valid])


def assert_decided_once(order, review: FraudReview, decision) -> None:
    review.refresh_from_db()
    if decision is None:  # every attempt was refused (e.g. a note with a line break)
        assert review.state == ReviewState.PENDING
        return
    _, approved, note = decision
    assert review.state == (ReviewState.APPROVED if approved else ReviewState.REJECTED)
    assert review.note == note.strip()
    assert StepRecord.objects.filter(run=order.run, key="fraud_review").count() == 1


@pytest.mark.parametrize("channel", CHANNELS)
@pytest.mark.parametrize("approved", [True, False])
def test_each_channel_decides_a_valid_attempt_once(
    channel, approved, queue_capture, place_order, reviewer, settings
):
    settings.LLM_PROVIDER = "simulated"
    settings.PAYMENT_GATEWAY = "simulated"
    order = place_order("2500.00", order_id=f"chan-{next(order_numbers)}", client=reviewer)
    queue_capture.drain()
    review = FraudReview.objects.get(run=order.run)

    assert decide(channel, review, approved, " checked \t", reviewer) is True
    for other in CHANNELS:  # and then no channel decides it again
        assert decide(other, review, not approved, "again", reviewer) is False
    assert_decided_once(order, review, (channel, approved, " checked \t"))
