"""The fraud reviewers' emails: an alert when a review opens, a reminder when most of
its time has passed, each delivered once (to the local SMTP server), through the
existing expiry sweep."""

import re
from datetime import timedelta
from io import StringIO

import pytest
from django.contrib.auth.models import Group, Permission, User
from django.core.management import call_command
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from orders import notifications
from orders.models import EmailRecord, EmailStatus, FraudReview
from orders.notifications import (
    REVIEW_ALERT,
    REVIEW_REMINDER,
    order_confirmation_send,
    review_email_send,
)
from orders.selectors import reviewers_to_tell
from orders.services.lifecycle import order_snapshot
from orders.services.reviews import order_review_open, review_reminders_send
from tests.support.api import api_client_for
from workflows.engine import hooks
from workflows.engine.services import waits_expire

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
def simulated(settings):
    settings.LLM_PROVIDER = "simulated"
    settings.PAYMENT_GATEWAY = "simulated"
    settings.SITE_URL = "https://orders.example.com/"
    settings.FRAUD_REVIEW_REMINDER_AT = 0.75


@pytest.fixture
def reviewers(reviewer):
    """Rita (in the group, no email: not told), Rob and Ria (told), an inactive member
    and a superuser outside the group (neither told)."""
    group = Group.objects.get(name="Fraud reviewers")
    for name, active in (("rob", True), ("ria", True), ("old", False)):
        user = User.objects.create_user(name, email=f"{name}@example.com", is_active=active)
        user.groups.add(group)
    User.objects.create_superuser("root", email="root@example.com", password="x-root-pass-1")
    return ["ria@example.com", "rob@example.com"]


@pytest.fixture
def suspended(queue_capture, place_order):
    order = place_order("2500.00")
    assert queue_capture.drain() == ["suspended"]
    order.refresh_from_db()
    return order, FraudReview.objects.get(run_id=order.run_id)


def kinds(smtp_server) -> list[str]:
    return [m["Subject"].split(" order ")[0] for m in smtp_server.messages]


def test_sweep_hook_is_registered():
    assert review_reminders_send in hooks.registry.wait_sweep_hooks


def test_alert_reaches_the_reviewers_once(smtp_server, reviewers, suspended):
    order, review = suspended
    assert len(smtp_server.messages) == 1
    message = smtp_server.messages[0]
    assert sorted(a.strip() for a in message["To"].split(",")) == reviewers
    assert "root@example.com" not in message["To"] and "old@" not in message["To"]
    assert message["Subject"].startswith("Review order ord-2500-00 (2,500.00 USD) by ")
    text = message.get_body(("plain",)).get_content()
    html = message.get_body(("html",)).get_content()
    link = f"https://orders.example.com/admin/orders/fraudreview/order/{order.pk}/"
    for body in (text, html):
        assert "ord-2500-00" in body and "2,500.00 USD" in body and link in body
        # The alert's deadline is taken a moment before the suspend records its own.
        minutes = {
            (review.deadline - timedelta(seconds=s)).strftime("%Y-%m-%d %H:%M") for s in (0, 5)
        }
        assert any(minute in body for minute in minutes)
    record = EmailRecord.objects.get(order=order, kind=REVIEW_ALERT)
    assert record.status == EmailStatus.SENT and record.recipient == ", ".join(reviewers)

    # The step again (a worker died before committing it), and the sweep, twice, long
    # before the reminder is due: nothing more.
    order_review_open(run_id=order.run_id)
    waits_expire()
    waits_expire()
    assert len(smtp_server.messages) == 1

    # The link lands on the review's page.
    client = Client()
    client.force_login(User.objects.get(username="rita"))
    response = client.get(link.removeprefix("https://orders.example.com"))
    assert response.status_code == 302
    assert response["Location"] == reverse("admin:orders_fraudreview_change", args=[review.pk])


def test_reminder_once_when_three_quarters_have_passed(smtp_server, reviewers, suspended):
    order, review = suspended
    window = review.deadline - review.created_at
    waits_expire(now=review.created_at + window * 0.74)
    assert kinds(smtp_server) == ["Review"]
    due = review.created_at + window * 0.76
    waits_expire(now=due)
    waits_expire(now=due + timedelta(minutes=1))
    assert kinds(smtp_server) == ["Review", "Reminder: review"]
    reminder = smtp_server.messages[1]
    assert sorted(a.strip() for a in reminder["To"].split(",")) == reviewers
    assert "still open" in reminder.get_body(("plain",)).get_content()
    assert EmailRecord.objects.get(order=order, kind=REVIEW_REMINDER).status == EmailStatus.SENT


def test_no_reminder_once_decided(smtp_server, reviewers, suspended):
    _, review = suspended
    FraudReview.objects.filter(pk=review.pk).update(status="resumed")
    waits_expire(now=review.deadline - timedelta(minutes=1))
    assert kinds(smtp_server) == ["Review"]


def test_mail_server_down_fails_no_order_and_the_sweep_sends_later(
    smtp_server, settings, reviewers, queue_capture, place_order
):
    port = settings.EMAIL_PORT
    settings.EMAIL_PORT = 1  # nothing listens: connection refused
    order = place_order("2500.00")
    assert queue_capture.drain() == ["suspended"]
    record = EmailRecord.objects.get(order=order, kind=REVIEW_ALERT)
    assert record.status == EmailStatus.FAILED and "refused" in record.error.lower()
    assert smtp_server.messages == []

    settings.EMAIL_PORT = port
    waits_expire()
    waits_expire()
    assert kinds(smtp_server) == ["Review"]
    record.refresh_from_db()
    assert record.status == EmailStatus.SENT and record.error == ""


class WorkerKilled(BaseException):
    """Stands for SIGKILL: no `except Exception` catches it."""


def test_crash_between_claim_and_send_is_not_sent_again(
    smtp_server, reviewers, suspended, monkeypatch
):
    order, review = suspended
    due = review.created_at + (review.deadline - review.created_at) * 0.8

    def killed(self, fail_silently=False):
        raise WorkerKilled

    with monkeypatch.context() as patch:
        patch.setattr(notifications.EmailMultiAlternatives, "send", killed)
        with pytest.raises(WorkerKilled):
            review_reminders_send(now=due)
    record = EmailRecord.objects.get(order=order, kind=REVIEW_REMINDER)
    assert record.status == EmailStatus.SENDING  # claimed; whether it left is unknown

    waits_expire(now=due)
    waits_expire(now=due + timedelta(minutes=1))
    assert review_email_send(order=order, kind=REVIEW_REMINDER, deadline=review.deadline) == record
    assert kinds(smtp_server) == ["Review"]  # in doubt: not sent blindly
    record.refresh_from_db()
    assert record.status == EmailStatus.SENDING

    # The operator sees it for what it is: no confirmation, which `resolve_confirmation`
    # would settle.
    an_hour_ago = timezone.now() - timedelta(hours=1)
    EmailRecord.objects.filter(pk=record.pk).update(created_at=an_hour_ago)
    out = StringIO()
    call_command("ops_status", stdout=out)
    assert (
        "reviewer emails in doubt (not sent again; check the mail log): ord-2500-00 "
        "(review_reminder)" in out.getvalue()
    )
    assert "confirmations in doubt" not in out.getvalue()


def test_the_alert_is_not_the_customers_confirmation(smtp_server, reviewers, suspended):
    """Recorded for the order, but nowhere is it taken for the confirmation: the order,
    the API, the admin and the workflow's snapshot all say none was sent."""
    order, _ = suspended
    assert EmailRecord.objects.get(order=order).kind == REVIEW_ALERT
    order.client = User.objects.create_user("shop")
    order.save(update_fields=["client"])
    assert not order.email_sent and not order_snapshot(run_id=order.run_id).email_sent
    api = api_client_for(order.client)
    assert api.get("/api/orders/ord-2500-00/").json()["email_sent"] is False
    assert [o["email_sent"] for o in api.get("/api/orders/").json()["results"]] == [False]

    admin = Client()
    admin.force_login(User.objects.get(username="root"))
    page = admin.get(reverse("admin:orders_order_change", args=[order.pk])).content.decode()
    field = re.search(r'field-confirmation_column.*?alt="(True|False)"', page, re.S)
    assert field is not None and field.group(1) == "False"
    assert "reviewers&#x27; alert" in page  # listed with the order's emails, for what it is

    order_confirmation_send(order=order)
    assert order.email_sent
    page = admin.get(reverse("admin:orders_order_change", args=[order.pk])).content.decode()
    field = re.search(r'field-confirmation_column.*?alt="(True|False)"', page, re.S)
    assert field is not None and field.group(1) == "True"
    assert api.get("/api/orders/").json()["results"][0]["email_sent"] is True


def test_superusers_are_told_when_the_group_has_nobody(smtp_server, reviewer, suspended):
    assert smtp_server.messages == []  # rita has no email, and there is no superuser
    User.objects.create_superuser("root", email="root@example.com", password="x-root-pass-1")
    waits_expire()
    waits_expire()
    assert len(smtp_server.messages) == 1
    assert smtp_server.messages[0]["To"] == "root@example.com"


def test_whoever_holds_the_permission_is_told_through_any_group_or_directly(
    smtp_server, queue_capture, place_order
):
    """Not only the "Fraud reviewers" group: a user granted the permission directly, and
    a member of another group that holds it; not a member of a group without it, an
    inactive holder, or (with holders there) a superuser."""
    decide = Permission.objects.get(codename="decide_fraud_review")
    direct = User.objects.create_user("dee", email="dee@example.com")
    direct.user_permissions.add(decide)
    risk_team = Group.objects.create(name="Risk team")
    risk_team.permissions.add(decide)
    User.objects.create_user("gus", email="gus@example.com").groups.add(risk_team)
    # The "Fraud reviewers" group without its permission (an admin took it away).
    Group.objects.get_or_create(name="Fraud reviewers")[0].permissions.clear()
    User.objects.create_user("fay", email="fay@example.com").groups.add(
        Group.objects.get(name="Fraud reviewers")
    )
    User.objects.create_user("ina", email="ina@example.com", is_active=False).user_permissions.add(
        decide
    )
    User.objects.create_superuser("root", email="root@example.com", password="x-root-pass-1")
    told = ["dee@example.com", "gus@example.com"]
    assert list(reviewers_to_tell().values_list("email", flat=True)) == told

    order = place_order("2500.00")
    assert queue_capture.drain() == ["suspended"]
    [alert] = smtp_server.messages
    assert sorted(a.strip() for a in alert["To"].split(",")) == told
    # The reminder goes to the same people: one query decides both.
    review = FraudReview.objects.get(run_id=order.run_id)
    waits_expire(now=review.created_at + (review.deadline - review.created_at) * 0.8)
    assert kinds(smtp_server) == ["Review", "Reminder: review"]
    assert sorted(a.strip() for a in smtp_server.messages[1]["To"].split(",")) == told

    # Each may decide, as they were told.
    assert all(User.objects.get(email=e).has_perm("orders.decide_fraud_review") for e in told)
