"""A fuzzed review path: any sequence of decisions, through any channel (API, admin
button, admin action, command), with any note, decides a review exactly once."""

import itertools
from io import StringIO

import pytest
from django.core.management import CommandError, call_command
from django.test import Client
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from rest_framework.test import APIClient

from orders.models import FraudReview, ReviewState
from workflows.models import StepRecord

pytestmark = pytest.mark.django_db(transaction=True)

CHANNELS = ("api", "admin_button", "admin_action", "command")
decisions = st.lists(
    st.tuples(st.sampled_from(CHANNELS), st.booleans(), st.text(max_size=40)),
    min_size=1,
    max_size=5,
)
order_numbers = itertools.count()


def decide(channel: str, review: FraudReview, approved: bool, note: str, reviewer) -> bool:
    """Send one decision; True when that channel reported it as decided."""
    order_id = review.data["order_id"]
    if channel == "api":
        api = APIClient()
        api.force_authenticate(reviewer)
        response = api.post(
            f"/api/orders/{order_id}/review/", {"approved": approved, "note": note}, format="json"
        )
        assert response.status_code in (200, 400, 409), response.content
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
        except CommandError:
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
    return any(
        (
            "Approved the review" in t
            or "Rejected the review" in t
            or "review approved" in t
            or "review rejected" in t
        )
        for t in texts
    )


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
    decided = [step for step, won in zip(sequence, outcomes, strict=True) if won]
    assert len(decided) <= 1, f"decided more than once: {decided}"
    assert StepRecord.objects.filter(run=order.run, key="fraud_review").count() == len(decided)
    if decided:
        ((_, approved, _),) = decided
        assert review.state == (ReviewState.APPROVED if approved else ReviewState.REJECTED)
    else:  # every attempt was refused (e.g. a note with a NUL character)
        assert review.state == ReviewState.PENDING
