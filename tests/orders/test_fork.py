"""Recovering an order run that failed on a bug: `fork_run` from the step after the
charge, once the fix is deployed, through the real `stripe` SDK."""

import re
from io import StringIO

import pytest
from django.contrib.auth.models import Permission, User
from django.contrib.messages import get_messages
from django.core.cache import cache
from django.core.management import call_command
from django.core.management.base import CommandError
from rest_framework.test import APIClient

from orders import order_processing
from orders.models import Order, OrderStatus
from orders.payments import StripeGateway
from orders.services.cancellation import order_cancel
from orders.services.lifecycle import OrderForkError
from orders.services.reviews import review_decide
from tests.support.api import api_client_for
from workflows import NonRetryableError
from workflows.engine.services import run_fork
from workflows.models import RunStatus, StepRecord, WorkflowRun

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def simulated_model(settings):
    settings.LLM_PROVIDER = "simulated"
    cache.clear()


def broken_policy(*args: object) -> None:
    raise NonRetryableError("bug: the fraud policy crashed")


def fail_with_the_bug(queue_capture, place) -> Order:
    """The bug ships, an order's run fails on it after the charge; then the fix ships."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(order_processing, "_fraud_policy", broken_policy)
        order = place()
        assert queue_capture.drain() == ["failed"]
    return order


def test_a_failed_order_run_forked_after_its_charge_is_not_charged_again(
    stripe_server, smtp_server, place_order, queue_capture
):
    client = User.objects.create_user("shop")
    order = fail_with_the_bug(queue_capture, lambda: place_order("250.00", client=client))
    origin = WorkflowRun.objects.get(pk=order.run_id)
    assert "the fraud policy crashed" in origin.error
    assert len(stripe_server.successful_charges()) == 1  # charged before the bug

    out = StringIO()
    call_command("fork_run", str(origin.id), "--from-step", "fraud_policy", stdout=out)
    fork = WorkflowRun.objects.get(forked_from=origin)
    assert queue_capture.drain() == ["completed"]

    order.refresh_from_db()
    assert order.run_id == fork.id  # the order continues in the fork
    assert order.status == OrderStatus.COMPLETED
    [intent] = stripe_server.successful_charges()  # still one PaymentIntent
    assert order.charge_id == intent["id"]
    creates = [
        r for r in stripe_server.requests if r.method == "POST" and r.path == "/v1/payment_intents"
    ]
    assert len(creates) == 1
    assert len(smtp_server.messages) == 1
    copied = StepRecord.objects.filter(run=fork, key="register_order").get()
    assert copied.output == StepRecord.objects.get(run=origin, key="register_order").output

    # Links both ways: the console, the admin and the client's API.
    staff = User.objects.create_superuser("ops", "ops@example.com", "ops-pass-123")
    api = api_client_for(client)
    fork_detail = api.get(f"/api/runs/{fork.id}/").json()
    assert fork_detail["forked_from"] == str(origin.id)
    assert fork_detail["forked_at_step"] == "fraud_policy"
    assert api.get(f"/api/runs/{origin.id}/").json()["forks"] == [str(fork.id)]
    assert APIClient().get(f"/api/runs/{origin.id}/").status_code == 401

    from django.test import Client

    console = Client()
    console.force_login(staff)
    origin_page = console.get(f"/runs/{origin.id}/").content.decode()
    assert f"/runs/{fork.id}/" in origin_page
    fork_page = console.get(f"/runs/{fork.id}/").content.decode()
    assert f"/runs/{origin.id}/" in fork_page and "fraud_policy" in fork_page
    admin_page = console.get(f"/admin/workflows/workflowrun/{origin.id}/change/").content
    assert str(fork.id) in admin_page.decode()


def test_another_client_cannot_read_a_fork_or_its_origin(place_order, queue_capture):
    owner = User.objects.create_user("shop")
    other = User.objects.create_user("rival")
    order = fail_with_the_bug(queue_capture, lambda: place_order("250.00", client=owner))
    call_command("fork_run", str(order.run_id), "--from-step", "fraud_policy", stdout=StringIO())
    fork = WorkflowRun.objects.get(forked_from_id=order.run_id)
    api = api_client_for(other)
    assert api.get(f"/api/runs/{fork.id}/").status_code == 404
    assert api.get(f"/api/runs/{order.run_id}/").status_code == 404


def test_forking_in_the_admin_needs_the_start_permission(place_order, queue_capture):
    order = fail_with_the_bug(queue_capture, lambda: place_order("250.00"))
    from django.test import Client

    viewer = User.objects.create_user("viewer", password="viewer-pass-123", is_staff=True)
    viewer.user_permissions.add(
        Permission.objects.get(codename="view_workflowrun"),
        Permission.objects.get(codename="change_workflowrun"),
    )
    browser = Client()
    browser.force_login(viewer)
    changelist = "/admin/workflows/workflowrun/"
    form = {"action": "fork_selected", "_selected_action": [str(order.run_id)]}
    refused = browser.post(changelist, {**form, "post": "yes", "from_step": "fraud_policy"})
    assert refused.status_code in (200, 302)
    assert not WorkflowRun.objects.filter(forked_from_id=order.run_id).exists()

    operator = User.objects.create_superuser("root", "root@example.com", "root-pass-123")
    browser.force_login(operator)
    page = browser.post(changelist, form)
    assert page.status_code == 200 and b"Continue from step" in page.content
    assert b"fraud_policy" in page.content
    done = browser.post(changelist, {**form, "post": "yes", "from_step": "fraud_policy"})
    assert done.status_code == 302
    fork = WorkflowRun.objects.get(forked_from_id=order.run_id)
    assert fork.status == RunStatus.PENDING and fork.forked_at_step == "fraud_policy"
    assert queue_capture.drain() == ["completed"]
    assert Order.objects.get(pk=order.pk).run_id == fork.id


# --- a finished order is never moved backwards --------------------------------------------

REFUSED = (
    r"^Order {} is {}: forking its run would move a finished order backwards\. "
    r"Fork is for failed and needs_attention runs\.$"
)


@pytest.fixture(params=["completed", "rejected", "cancelled"])
def finished(request, place_order, queue_capture, reviewer) -> Order:
    """An order its run settled: confirmed, rejected by its reviewer, or cancelled while
    it waited for review."""
    if request.param == "completed":
        order = place_order("250.00")
        assert queue_capture.drain() == ["completed"]
    else:
        order = place_order("2500.00")
        assert queue_capture.drain() == ["suspended"]
        if request.param == "rejected":
            review_decide(order=order, approved=False, by=reviewer)
            assert queue_capture.drain() == ["completed"]
        else:
            order_cancel(order=order)
    order.refresh_from_db()
    assert order.status == request.param
    return order


def assert_not_forked(order: Order) -> None:
    before = Order.objects.get(pk=order.pk)
    assert not WorkflowRun.objects.filter(forked_from_id=order.run_id).exists()
    assert (before.status, before.run_id) == (order.status, order.run_id)
    assert before.payment_status == order.payment_status


def test_the_service_refuses_to_fork_a_finished_order(finished, queue_capture):
    with pytest.raises(OrderForkError, match=REFUSED.format(finished.order_id, finished.status)):
        run_fork(finished.run_id, from_step="fraud_policy")
    assert_not_forked(finished)
    assert queue_capture.sent == []


def test_fork_run_refuses_a_finished_order(finished):
    with pytest.raises(CommandError, match=REFUSED.format(finished.order_id, finished.status)):
        call_command("fork_run", str(finished.run_id), "--from-step", "fraud_policy")
    assert_not_forked(finished)


def test_the_admin_fork_action_refuses_a_finished_order(finished):
    from django.test import Client

    operator = Client()
    operator.force_login(User.objects.create_superuser("root", "root@example.com", "root-pw-123"))
    response = operator.post(
        "/admin/workflows/workflowrun/",
        {
            "action": "fork_selected",
            "_selected_action": [str(finished.run_id)],
            "post": "yes",
            "from_step": "fraud_policy",
        },
    )
    assert response.status_code == 302
    shown = [(m.level_tag, str(m)) for m in get_messages(response.wsgi_request)]
    [(level, message)] = shown
    assert level == "error"
    assert re.match(REFUSED.format(finished.order_id, finished.status), message)
    assert_not_forked(finished)


# --- a fork made before the charge was recorded charges under the order's own key -----


class _AnswerLostGateway:
    """The bug of the first run: the charge reaches Stripe, then its answer is lost and
    the step fails without recording it on the order."""

    def __init__(self, gateway: object) -> None:
        self._gateway = gateway

    def charge(self, **kwargs: object) -> None:
        self._gateway.charge(**kwargs)  # type: ignore[attr-defined]
        raise NonRetryableError("bug: the charge's answer was dropped")

    def __getattr__(self, name: str) -> object:
        return getattr(self._gateway, name)


def test_a_run_forked_before_its_charge_was_recorded_charges_under_the_same_key(
    stripe_server, smtp_server, place_order, queue_capture
):
    from orders.services import payments as payment_services

    real_gateway = payment_services.payment_gateway
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(
            payment_services, "payment_gateway", lambda: _AnswerLostGateway(real_gateway())
        )
        order = place_order("250.00")
        assert queue_capture.drain() == ["failed"]
    order.refresh_from_db()
    assert not order.charge_id, "the first run recorded its charge: the fork would not charge"
    [first] = stripe_server.successful_charges()  # Stripe did charge

    origin = WorkflowRun.objects.get(pk=order.run_id)
    with pytest.MonkeyPatch.context() as patch:
        # Stripe's list does not show the first PaymentIntent yet, so the gateway's
        # lookup cannot recover it: only the idempotency key stands between the fork
        # and a second charge.
        patch.setattr(StripeGateway, "_find_intent", lambda self, **kwargs: None)
        call_command("fork_run", str(origin.id), "--from-step", "check_order", stdout=StringIO())
        assert queue_capture.drain() == ["completed"]

    order.refresh_from_db()
    assert order.status == OrderStatus.COMPLETED
    assert stripe_server.successful_charges() == [first], "the fork charged the customer again"
    assert order.charge_id == first["id"]
    keys = {
        r.idempotency_key
        for r in stripe_server.requests
        if r.method == "POST" and r.path == "/v1/payment_intents"
    }
    assert len(keys) == 1, f"the fork charged under another key: {keys}"
