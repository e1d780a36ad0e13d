"""The fraud-review queue and the orders in admin, driven through Django's test client."""

import threading
from datetime import timedelta

import pytest
import time_machine
from django.contrib.auth.models import Permission
from django.core import mail
from django.db import connection
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from orders.models import FraudReview, Order, ReviewState
from tests.support.admin_pages import change_url, decide_url, logged_in, texts

pytestmark = pytest.mark.django_db(transaction=True)

CHANGELIST = "admin:orders_fraudreview_changelist"


@pytest.fixture(autouse=True)
def simulated(settings):
    settings.LLM_PROVIDER = "simulated"
    settings.PAYMENT_GATEWAY = "simulated"


@pytest.fixture
def suspended(queue_capture, place_order):
    """A 2500.00 order suspended at its fraud review: (order, review)."""
    order = place_order("2500.00")
    assert queue_capture.drain() == ["suspended"]
    order.refresh_from_db()
    return order, FraudReview.objects.get(run_id=order.run_id)


def test_queue_lists_the_pending_review_and_filters(suspended, reviewer):
    order, review = suspended
    client = logged_in(reviewer)
    index = client.get(reverse("admin:index")).content.decode()
    assert "Fraud reviews" in index and "Orders" in index
    # The index counts the reviews waiting, linking to them.
    assert '<strong class="reviews-waiting-count">1</strong> fraud review pending' in index

    # Read 30 s into the review's 24 hours, however long the set-up took.
    instant = review.deadline - timedelta(hours=23, minutes=59, seconds=30)
    with time_machine.travel(instant, tick=False):
        html = client.get(reverse(CHANGELIST)).content.decode()
    assert order.order_id in html and "cus_good" in html and "2500.00 USD" in html
    # Narrow rows, risk first: no charge id, no agent's message repeated on every row.
    assert order.charge_id not in html and "over the fraud threshold" not in html
    assert 'class="risk-chip risk-high risk-flag-domain"' in html  # example.com is new here
    assert "23\xa0hours" in html and ">Pending<" in html
    assert change_url(review) in html  # the order column links to the review's page
    assert "approve_selected" in html and "reject_selected" in html

    assert order.order_id in client.get(reverse(CHANGELIST), {"state": "pending"}).content.decode()
    for state in ("approved", "rejected", "expired", "cancelled"):
        page = client.get(reverse(CHANGELIST), {"state": state}).content.decode()
        assert order.order_id not in page, state
    assert order.order_id in client.get(reverse(CHANGELIST), {"q": "cus_good"}).content.decode()
    assert order.order_id not in client.get(reverse(CHANGELIST), {"q": "nobody"}).content.decode()


def test_review_page_shows_order_trace_and_buttons(suspended, reviewer):
    order, review = suspended
    html = logged_in(reviewer).get(change_url(review)).content.decode()
    assert "Fraud review of order ord-2500-00" in html
    assert "ada@example.com" in html and "2500.00 USD" in html and "awaiting_review" in html
    assert order.charge_id in html and "hours" in html
    # The agent's tool call and its result, and its final message, from the trace.
    assert "start_order/tool/1/charge_stripe" in html and "calls charge_stripe" in html
    assert "&quot;status&quot;: &quot;requires_capture&quot;" in html  # a hold
    assert "human must review" in html
    # The console's full trace is for those who may read runs.
    assert f'href="/runs/{order.run_id}/"' not in html
    reviewer.user_permissions.add(Permission.objects.get(codename="view_workflowrun"))
    assert (
        f'href="/runs/{order.run_id}/"'
        in logged_in(reviewer).get(change_url(review)).content.decode()
    )
    assert f'action="{decide_url(review)}"' in html
    assert 'value="approve"' in html and 'value="reject"' in html and 'name="note"' in html


def test_approve_through_the_action(suspended, reviewer, queue_capture):
    order, review = suspended
    client = logged_in(reviewer)
    selected = {"action": "approve_selected", "_selected_action": [review.pk]}

    confirm = client.post(reverse(CHANGELIST), {**selected, "index": 0})
    assert confirm.status_code == 200
    page = confirm.content.decode()
    assert "Approve fraud reviews" in page and "2500.00 USD" in page
    assert '<textarea name="note"' in page and 'name="post" value="yes"' in page
    assert FraudReview.objects.get(pk=review.pk).state == ReviewState.PENDING

    done = client.post(reverse(CHANGELIST), {**selected, "post": "yes", "note": "known buyer"})
    assert done.status_code == 302
    assert texts(done) == ["1 review approved: ord-2500-00."]
    assert queue_capture.drain() == ["completed"]
    order.refresh_from_db()
    assert order.status == "completed" and order.fraud_approved is True
    assert len(mail.outbox) == 1
    review = FraudReview.objects.get(pk=review.pk)
    assert review.state == ReviewState.APPROVED and review.note == "known buyer"
    assert review.resumed_by == reviewer

    # The order's page shows the email sent, for a reviewer with no order permission.
    order_page = client.get(reverse("admin:orders_order_change", args=[order.pk]))
    assert order_page.status_code == 200
    assert "Your order ord-2500-00 is confirmed" in order_page.content.decode()
    assert client.get(reverse("admin:orders_order_add")).status_code == 403


def test_reject_through_the_action_releases_the_hold(suspended, reviewer, queue_capture):
    order, review = suspended
    client = logged_in(reviewer)
    done = client.post(
        reverse(CHANGELIST),
        {"action": "reject_selected", "_selected_action": [review.pk], "post": "yes"},
    )
    assert texts(done) == ["1 review rejected: ord-2500-00."]
    queue_capture.drain()
    order.refresh_from_db()
    assert order.status == "rejected" and order.payment_status == "canceled"
    assert order.refund_id == "" and mail.outbox == []


def test_staff_without_permission_cannot_decide(suspended, staff_without_permission, queue_capture):
    _, review = suspended
    client = logged_in(staff_without_permission)
    assert client.get(reverse(CHANGELIST)).status_code == 403
    assert client.post(decide_url(review), {"decision": "approve"}).status_code == 403

    # With view permission they see the queue, but no actions, and forging one does nothing.
    staff_without_permission.user_permissions.add(
        Permission.objects.get(codename="view_fraudreview")
    )
    html = client.get(reverse(CHANGELIST)).content.decode()
    assert review.data["order_id"] in html and "approve_selected" not in html
    forged = {"action": "approve_selected", "_selected_action": [review.pk], "post": "yes"}
    client.post(reverse(CHANGELIST), forged)
    client.post(reverse(CHANGELIST), {**forged, "index": 0})
    page = client.get(change_url(review)).content.decode()
    assert 'value="approve"' not in page
    assert client.post(decide_url(review), {"decision": "approve"}).status_code == 403
    assert FraudReview.objects.get(pk=review.pk).state == ReviewState.PENDING
    assert queue_capture.sent == []


def test_decide_url_requires_csrf_and_post(suspended, reviewer):
    _, review = suspended
    client = Client(enforce_csrf_checks=True)
    client.force_login(reviewer)
    assert client.post(decide_url(review), {"decision": "approve"}).status_code == 403
    assert client.get(decide_url(review)).status_code == 405
    assert FraudReview.objects.get(pk=review.pk).state == ReviewState.PENDING


@pytest.mark.db_engine
def test_concurrent_decisions_one_wins(suspended, reviewer, queue_capture):
    _, review = suspended
    clients = [logged_in(reviewer), logged_in(reviewer)]
    barrier = threading.Barrier(2)
    results: dict[str, list[str]] = {}

    def decide(client: Client, decision: str) -> None:
        try:
            barrier.wait(timeout=10)
            response = client.post(decide_url(review), {"decision": decision})
            results[decision] = [str(response.status_code), *texts(response)]
        finally:
            connection.close()

    threads = [
        threading.Thread(target=decide, args=(clients[0], "approve")),
        threading.Thread(target=decide, args=(clients[1], "reject")),
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)

    assert sorted(results) == ["approve", "reject"]
    review = FraudReview.objects.get(pk=review.pk)
    winner = "approve" if review.state == ReviewState.APPROVED else "reject"
    loser = "reject" if winner == "approve" else "approve"
    assert results[winner][0] == "302" and "the review of order ord-2500-00" in results[winner][1]
    assert results[loser][0] == "302" and "already decided" in results[loser][1]
    assert len(queue_capture.sent) == 1  # one resume, one decision


def test_decided_review_page_is_read_only(suspended, reviewer, queue_capture):
    order, review = suspended
    client = logged_in(reviewer)
    response = client.post(decide_url(review), {"decision": "reject", "note": "stolen card"})
    assert texts(response) == ["Rejected the review of order ord-2500-00."]
    queue_capture.drain()

    html = client.get(change_url(review)).content.decode()
    assert ">Rejected<" in html and "rita" in html and "stolen card" in html
    assert 'value="approve"' not in html and decide_url(review) not in html
    html = client.get(reverse(CHANGELIST), {"state": "rejected"}).content.decode()
    assert order.order_id in html and "—" in html

    again = client.post(decide_url(review), {"decision": "approve"})
    assert any("already decided" in text for text in texts(again))


def test_expired_review_is_refused(suspended, reviewer, queue_capture):
    order, review = suspended
    FraudReview.objects.filter(pk=review.pk).update(deadline=timezone.now() - timedelta(minutes=1))
    client = logged_in(reviewer)
    assert "expired" in client.get(reverse(CHANGELIST)).content.decode()
    assert 'value="approve"' not in client.get(change_url(review)).content.decode()

    response = client.post(decide_url(review), {"decision": "approve"})
    assert any("expired" in text for text in texts(response))
    done = client.post(
        reverse(CHANGELIST),
        {"action": "approve_selected", "_selected_action": [review.pk], "post": "yes"},
    )
    assert texts(done)[-1] == (
        "The review of order ord-2500-00 expired; its payment will be released"
    )
    assert FraudReview.objects.get(pk=review.pk).status == "waiting"
    assert queue_capture.sent == []
    assert Order.objects.get(pk=order.pk).status == "awaiting_review"
