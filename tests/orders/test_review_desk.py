"""The reviewers' desk in admin (issue 21): the review page's decision bar and the
agent's steps in plain words, the queue's risk columns and filters, and claims
("being reviewed by ..."), driven through Django's test client."""

import json
from datetime import timedelta

import pytest
import time_machine
from django.contrib.auth.models import Group, Permission, User
from django.core.exceptions import PermissionDenied
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from orders.admin.agent_trace import reply_said, tool_said
from orders.admin.fraud_reviews import FraudReviewAdmin
from orders.models import FraudReview, FraudReviewClaim, Order, ReviewState
from orders.services.reviews import ReviewError, review_claim
from tests.support.admin_pages import change_url, decide_url, logged_in, texts

pytestmark = pytest.mark.django_db(transaction=True)

CHANGELIST = "admin:orders_fraudreview_changelist"


@pytest.fixture(autouse=True)
def simulated(settings):
    settings.LLM_PROVIDER = "simulated"
    settings.PAYMENT_GATEWAY = "simulated"


@pytest.fixture
def otto(reviewer) -> User:
    """A second fraud reviewer (rita is the first)."""
    user = User.objects.create_user("otto", password="review-pass-456", is_staff=True)
    user.groups.add(Group.objects.get(name="Fraud reviewers"))
    return User.objects.get(pk=user.pk)


@pytest.fixture
def queue(queue_capture, place_order):
    """Two open reviews: ada's 2500.00 (5x her one paid order of 500.00, a known
    domain) and bob's 1500.00 (his first order, from a domain never seen)."""
    place_order("500.00", order_id="ada-small")
    assert queue_capture.drain() == ["completed"]
    ada = place_order("2500.00", order_id="ada-big")
    bob = place_order(
        "1500.00", order_id="bob-first", customer_id="cus_bob", email="bob@freshmail.example"
    )
    assert queue_capture.drain() == ["suspended", "suspended"]
    return {
        name: FraudReview.objects.get(run_id=Order.objects.get(pk=order.pk).run_id)
        for name, order in (("ada", ada), ("bob", bob))
    }


def claim_url(review: FraudReview) -> str:
    return reverse("admin:orders_fraudreview_claim", args=[review.pk])


def listed(client: Client, **params: str) -> set[str]:
    html = client.get(reverse(CHANGELIST), params).content.decode()
    return {order_id for order_id in ("ada-big", "bob-first") if f">{order_id}<" in html}


def test_the_review_page_decision_bar_and_the_agents_steps_in_plain_words(queue, reviewer):
    page = logged_in(reviewer).get(change_url(queue["ada"])).content.decode()
    bar = page[page.index('class="decision-bar"') : page.index('class="review-columns"')]
    assert "2,500.00 USD" in bar and "hours" in bar
    # The six flags, coloured by level: 5x the average is high, the domain known.
    assert (
        'risk-high risk-flag-ratio" title="5.0\u00d7 average: 1 completed' in bar
        and "5.0\u00d7 average" in bar
    )
    assert 'risk-ok risk-flag-domain"' in bar and "example.com" in bar
    for flag in ("velocity", "rejections", "refunds", "stripe"):
        assert f"risk-flag-{flag}" in bar
    assert 'value="approve"' in bar and 'value="reject"' in bar and 'name="note"' in bar
    assert "decide and open the next" in bar and "<kbd>a</kbd> approve" in bar
    assert f'href="{change_url(queue["bob"])}"' in bar  # "n": the next review

    # The agent's steps in plain words; a hold is called a hold, in its message too.
    order = Order.objects.get(order_id="ada-big")
    steps = page[page.index('class="agent-steps"') : page.index('class="agent-raw"')]
    assert "asked to take the payment" in steps
    assert f"placed a hold of 2,500.00 USD, {order.charge_id}" in steps
    assert "reported: \u201cPlaced a hold of 2500.00 USD; amount is over the fraud" in steps
    assert "and asked for a fraud review" in steps
    assert "Charged" not in page
    # The raw JSON stays, behind a disclosure.
    raw = page[page.index('class="agent-raw"') :]
    assert raw.startswith('class="agent-raw">') or "<summary>" in raw
    assert "&quot;status&quot;: &quot;requires_capture&quot;" in raw

    # A bob's page: a new domain, nothing paid to compare with.
    page = logged_in(reviewer).get(change_url(queue["bob"])).content.decode()
    assert 'risk-high risk-flag-domain"' in page and "new domain freshmail.example" in page
    assert 'risk-warn risk-flag-ratio"' in page and "no paid orders" in page


def test_the_steps_in_plain_words_say_what_each_tool_did():
    hold = {
        "charge_id": "pi_1",
        "status": "requires_capture",
        "amount": "150000",
        "currency": "jpy",
    }
    assert tool_said("charge_stripe", {}, hold, "") == "placed a hold of 150,000 JPY, pi_1"
    captured = {**hold, "status": "succeeded", "amount": "49.9", "currency": "usd"}
    assert tool_said("charge_stripe", {}, captured, "") == "charged 49.90 USD, pi_1"
    assert tool_said("charge_stripe", {"amount": "5", "currency": "eur"}, None, "declined") == (
        "could not take the payment of 5.00 EUR: declined"
    )
    email = {"email": "ada@example.com", "order_id": "o", "amount": "1"}
    assert tool_said("send_confirmation_email", json.dumps(email), {"sent": True}, "") == (
        "sent the confirmation to ada@example.com"
    )
    assert reply_said(None, ["charge_stripe", "send_confirmation_email"], "") == (
        "asked to take the payment; asked to send the confirmation"
    )


def test_decide_and_open_the_next(queue, reviewer, queue_capture):
    client = logged_in(reviewer)
    response = client.post(decide_url(queue["ada"]), {"decision": "reject", "open_next": "1"})
    assert response.status_code == 302 and response["Location"] == change_url(queue["bob"])
    response = client.post(decide_url(queue["bob"]), {"decision": "reject", "open_next": "1"})
    assert response["Location"] == reverse(CHANGELIST)
    assert texts(response)[-1] == "No other review is waiting."
    queue_capture.drain()
    assert {r.state for r in FraudReview.objects.all()} == {ReviewState.REJECTED}


def test_queue_filters_risk_first(queue, reviewer):
    client = logged_in(reviewer)
    html = client.get(reverse(CHANGELIST)).content.decode()
    header = html[html.index('id="result_list"') : html.index("</thead>")].lower()
    assert header.index("\u00d7 avg") < header.index("time left") < header.index("customer")
    assert "charge id" not in header and "agent" not in header
    assert listed(client) == {"ada-big", "bob-first"}
    assert listed(client, domain="new") == {"bob-first"}
    assert listed(client, ratio="high") == {"ada-big"}
    assert listed(client, currency="usd") == {"ada-big", "bob-first"}
    assert listed(client, currency="eur") == set()
    assert listed(client, amount="1k-5k") == {"ada-big", "bob-first"}
    assert listed(client, amount="lt1k") == set()
    assert listed(client, left="1h") == set()
    assert listed(client, left="24h") == {"ada-big", "bob-first"}
    with time_machine.travel(queue["ada"].deadline - timedelta(minutes=30)):
        assert listed(client, left="1h") == {"ada-big", "bob-first"}
    # Sorting by time left, both ways.
    column = str(FraudReviewAdmin.list_display.index("time_left_column") + 1)  # after the checkbox
    ascending = client.get(reverse(CHANGELIST), {"o": column}).content.decode()
    descending = client.get(reverse(CHANGELIST), {"o": f"-{column}"}).content.decode()
    assert ascending.index(">ada-big<") < ascending.index(">bob-first<")
    assert descending.index(">bob-first<") < descending.index(">ada-big<")


def test_claims_show_lapse_and_filter(queue, reviewer, otto, settings):
    settings.FRAUD_REVIEW_CLAIM_MINUTES = 5
    rita, other = logged_in(reviewer), logged_in(otto)
    done = rita.post(
        reverse(CHANGELIST),
        {"action": "claim_selected", "index": 0, "_selected_action": [queue["ada"].pk]},
    )
    assert texts(done) == ["Claimed: ada-big."]
    claimed_at = FraudReviewClaim.objects.get(review=queue["ada"]).claimed_at

    # Others see who is on it, in the queue and on the page, and cannot take it over.
    assert "being reviewed by rita" in other.get(reverse(CHANGELIST)).content.decode()
    page = other.get(change_url(queue["ada"])).content.decode()
    assert "being reviewed by <strong>rita</strong>" in page and ">Claim<" not in page
    refused = other.post(claim_url(queue["ada"]))
    assert texts(refused) == [f"{queue['ada']} is being reviewed by rita: not claimed."]
    assert "claimed by you" in rita.get(change_url(queue["ada"])).content.decode()
    # "n" skips the review someone else is on.
    bob_page = other.get(change_url(queue["bob"])).content.decode()
    assert f'href="{change_url(queue["ada"])}"' not in bob_page.split("decision-bar")[1][:3000]

    assert listed(rita, claim="mine") == {"ada-big"}
    assert listed(other, claim="mine") == set()
    assert listed(other, claim="others") == {"ada-big"}
    assert listed(other, claim="free") == {"bob-first"}

    with time_machine.travel(claimed_at + timedelta(minutes=4, seconds=59)):
        assert listed(rita, claim="mine") == {"ada-big"}  # not lapsed yet, at 4:59
    # FRAUD_REVIEW_CLAIM_MINUTES later the claim has lapsed: free for all.
    with time_machine.travel(claimed_at + timedelta(minutes=5, seconds=1)):
        assert "being reviewed by" not in other.get(reverse(CHANGELIST)).content.decode()
        assert listed(rita, claim="mine") == set()
        assert texts(other.post(claim_url(queue["ada"])))[0].startswith(
            "You are reviewing order ada-big"
        )
        assert listed(other, claim="mine") == {"ada-big"}


def test_release_gives_the_review_back(queue, reviewer, otto):
    rita = logged_in(reviewer)
    rita.post(claim_url(queue["bob"]))
    assert listed(rita, claim="mine") == {"bob-first"}
    assert texts(rita.post(claim_url(queue["bob"]), {"release": "1"})) == [
        "Released your claim on order bob-first."
    ]
    assert listed(logged_in(otto), claim="free") == {"ada-big", "bob-first"}


def test_deciding_over_a_claim_asks_a_confirmation_naming_the_claimant(
    queue, reviewer, otto, queue_capture
):
    review_claim(review=queue["ada"], by=reviewer)
    other = logged_in(otto)
    page = other.get(change_url(queue["ada"])).content.decode()
    assert 'name="over_claim" value="rita" required' in page
    assert "decide although <strong>rita</strong> is reviewing it" in page

    refused = other.post(decide_url(queue["ada"]), {"decision": "approve"})
    assert texts(refused)[0].startswith("rita is reviewing this order. Nothing was decided")
    wrong = other.post(decide_url(queue["ada"]), {"decision": "approve", "over_claim": "bob"})
    assert texts(wrong)[-1].startswith("rita is reviewing this order.")
    assert FraudReview.objects.get(pk=queue["ada"].pk).state == ReviewState.PENDING
    assert queue_capture.sent == []

    done = other.post(decide_url(queue["ada"]), {"decision": "approve", "over_claim": "rita"})
    assert texts(done)[-1] == "Approved the review of order ada-big."
    assert FraudReview.objects.get(pk=queue["ada"].pk).resumed_by == otto


def test_the_list_actions_name_the_claimant_too(queue, reviewer, otto, queue_capture):
    review_claim(review=queue["ada"], by=reviewer)
    other = logged_in(otto)
    selected = {"action": "reject_selected", "_selected_action": [queue["ada"].pk, queue["bob"].pk]}
    confirm = other.post(reverse(CHANGELIST), {**selected, "index": 0}).content.decode()
    assert "being reviewed by rita</strong>: you decide it over their claim" in confirm
    assert f'name="over_claim" value="{queue["ada"].pk}"' in confirm

    # A post that did not see the claim (no over_claim) leaves that review alone.
    done = other.post(reverse(CHANGELIST), {**selected, "post": "yes"})
    assert texts(done) == [
        f"{queue['ada']} is being reviewed by rita: not decided (the confirmation did not "
        "name them).",
        "1 review rejected: bob-first.",
    ]
    done = other.post(
        reverse(CHANGELIST), {**selected, "post": "yes", "over_claim": [queue["ada"].pk]}
    )
    assert texts(done)[-1] == "1 review rejected: ada-big."


def test_without_the_decide_permission_nobody_claims(queue, staff_without_permission):
    user = staff_without_permission
    user.user_permissions.add(Permission.objects.get(codename="view_fraudreview"))
    client = logged_in(User.objects.get(pk=user.pk))
    html = client.get(reverse(CHANGELIST)).content.decode()
    assert "ada-big" in html and "claim_selected" not in html
    client.post(
        reverse(CHANGELIST),
        {"action": "claim_selected", "index": 0, "_selected_action": [queue["ada"].pk]},
    )
    assert client.post(claim_url(queue["ada"])).status_code == 403
    assert not FraudReviewClaim.objects.exists()
    page = client.get(change_url(queue["ada"])).content.decode()
    assert ">Claim<" not in page and 'value="approve"' not in page
    with pytest.raises(PermissionDenied):
        review_claim(review=queue["ada"], by=user)


def test_a_decided_review_cannot_be_claimed(queue, reviewer, queue_capture):
    logged_in(reviewer).post(decide_url(queue["bob"]), {"decision": "reject"})
    with pytest.raises(ReviewError, match="not open"):
        review_claim(review=FraudReview.objects.get(pk=queue["bob"].pk), by=reviewer)
    queue_capture.drain()
    assert timezone.now()  # the clock is the real one again after the travels above
