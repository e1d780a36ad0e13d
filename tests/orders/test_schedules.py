"""A fraud review nobody decides: the cluster's own schedule (the migration's
Schedule row, run by django-q2's scheduler) expires it and the order is rejected."""

import pytest
from django_q.models import Schedule

from orders.models import FraudReview
from tests.support.cluster import QCluster, wait_past, wait_until
from tests.workflows.test_schedules import EXPIRY, FAST_SCHEDULER, schedules_recreate
from workflows.models import Wait

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.qcluster, pytest.mark.db_engine]

OFFLINE = {"LLM_PROVIDER": "simulated", "PAYMENT_GATEWAY": "simulated"}


def test_the_clusters_schedule_expires_an_undecided_review(place_order, settings):
    settings.LLM_PROVIDER = "simulated"
    settings.PAYMENT_GATEWAY = "simulated"
    schedules_recreate()
    short_review = {**OFFLINE, "FRAUD_REVIEW_TIMEOUT": "3"}
    order = place_order("2500.00")
    with QCluster(env=short_review):
        wait_until(lambda: FraudReview.objects.filter(run=order.run).exists(), timeout=60)
    wait = Wait.objects.get(run=order.run)
    assert (wait.deadline - wait.created_at).total_seconds() == pytest.approx(3, abs=1)
    order.refresh_from_db()
    assert order.status == "awaiting_review"

    wait_past(wait.deadline, timeout=15)
    wait.refresh_from_db()
    assert wait.status == "waiting"  # overdue, and nothing but the schedule will expire it

    with QCluster(env={**short_review, **FAST_SCHEDULER}) as cluster:
        try:
            wait_until(lambda: _status(order) == "rejected", timeout=60)
        except AssertionError:
            raise AssertionError(cluster.output()) from None

    order.refresh_from_db()
    assert order.failure_reason == "review_timeout" and order.email_sent is False
    wait.refresh_from_db()
    assert wait.status != "waiting"
    assert Schedule.objects.get(name=EXPIRY).task  # the schedule queued the sweep


def _status(order) -> str:
    order.refresh_from_db()
    return order.status
