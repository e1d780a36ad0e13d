"""Twenty reviewers deciding the same review at once: one decision, one resume."""

import threading

import pytest
from django.db import connection

from orders.models import FraudReview
from orders.services.reviews import ReviewError, review_decide
from workflows.models import StepRecord

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.db_engine]


def test_twenty_concurrent_decisions_resume_once(queue_capture, place_order, reviewer, settings):
    settings.LLM_PROVIDER = "simulated"
    settings.PAYMENT_GATEWAY = "simulated"
    order = place_order("2500.00")
    queue_capture.drain()
    barrier = threading.Barrier(20)
    outcomes: list[str] = []

    def decide(approved: bool) -> None:
        barrier.wait()
        try:
            review_decide(order=order, approved=approved, by=reviewer)
            outcomes.append("decided")
        except ReviewError as exc:
            assert "already decided" in str(exc)
            outcomes.append("refused")
        finally:
            connection.close()

    threads = [threading.Thread(target=decide, args=(i % 2 == 0,)) for i in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert sorted(outcomes) == ["decided"] + ["refused"] * 19
    assert queue_capture.sent == [str(order.run_id)]  # one resume queued
    assert StepRecord.objects.filter(run=order.run, key="fraud_review").count() == 1
    review = FraudReview.objects.get(run=order.run)
    assert review.resumed_by == reviewer
