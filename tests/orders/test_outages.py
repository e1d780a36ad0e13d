"""An order riding out a dependency's outage, in-process: Stripe, the mail server and the
model provider down (the suite's local servers, with their outage switches), the order
waiting and saying what for at every door, then completing once, with one charge and one
email; past the horizon, needing attention and retried in bulk. A send cut off after its
data is never sent again on a guess.

Runs execute inline (`queue_capture`); time moves by passing `now` to the wake-up and by
moving the recorded first failure back, never by sleeping. The long outages through real
`qcluster` workers are in `test_outages_cluster.py`.
"""

import json
import smtplib
from datetime import timedelta
from io import StringIO

import pytest
from django.contrib.auth.models import Group, User
from django.core.management import call_command
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from orders.client_webhooks.models import WebhookDelivery, WebhookEndpoint, WebhookEvent
from orders.client_webhooks.services import webhook_secret_new
from orders.mail import EmailRejectedError, TransientEmailError, email_failure
from orders.models import EmailRecord, EmailStatus, FraudReview, Order
from tests.support.api import api_client_for
from tests.support.openai_server import reply_text, reply_tool_calls
from tests.workflows.test_metrics import TOKEN, scrape
from workflows.engine import circuits
from workflows.engine.retry import RetryPolicy
from workflows.engine.services import retry_waits_wake
from workflows.models import RETRY_WAIT, Circuit, CircuitState, RunStatus, Wait, WorkflowRun

pytestmark = pytest.mark.django_db(transaction=True)

EMAIL = "ada@example.com"


@pytest.fixture(autouse=True)
def quick(settings, monkeypatch):
    """The simulated model, and every retry's pause a hundredth of a second: the order
    parks after its policy's attempts in the worker, as it would after a few seconds."""
    settings.LLM_PROVIDER = "simulated"
    settings.STRIPE_MAX_NETWORK_RETRIES = 0
    monkeypatch.setattr(RetryPolicy, "delay", lambda self, attempt, exc=None: 0.01)


@pytest.fixture
def client_user(db) -> User:
    user = User.objects.create_user("shop")
    group = Group.objects.filter(name="Intake clients").first()
    if group is not None:
        user.groups.add(group)
    return user


def later(seconds: float):
    return timezone.now() + timedelta(seconds=seconds)


def order_charges(stripe_server, order: Order) -> list[dict]:
    return [
        pi
        for pi in stripe_server.payment_intents.values()
        if pi["metadata"].get("order_id") == order.order_id and pi["status"] == "succeeded"
    ]


def ops_status() -> str:
    out = StringIO()
    call_command("ops_status", stdout=out)
    return out.getvalue()


def test_stripe_down_the_order_waits_says_so_everywhere_and_completes_once(
    stripe_server, smtp_server, place_order, queue_capture, client_user, settings
):
    settings.METRICS_TOKEN = TOKEN
    stripe_server.outage(status=503)
    order = place_order("250.00", client=client_user)
    assert queue_capture.drain() == ["suspended"]

    order.refresh_from_db()
    run = order.run
    assert (order.status, run.status) == ("processing", RunStatus.SUSPENDED)
    wait = Wait.objects.get(run=run, kind=RETRY_WAIT, status="waiting")
    assert wait.key == "charge" and wait.data["dependency"] == "stripe"
    assert Circuit.objects.get(dependency="stripe").state == CircuitState.OPEN

    body = api_client_for(client_user).get(f"/api/orders/{order.order_id}/").json()
    assert body["status"] == "processing" and body["failure_reason"] == ""
    assert body["waiting_for"].startswith("waiting for Stripe (attempt ")
    assert "circuit open, next at " in body["waiting_for"]
    run_body = api_client_for(client_user).get(f"/api/runs/{run.pk}/").json()
    assert run_body["waiting_for"] == body["waiting_for"]
    listed = api_client_for(client_user).get("/api/orders/").json()["results"]
    assert [o["waiting_for"] for o in listed] == [body["waiting_for"]]

    staff = Client()
    staff.force_login(User.objects.create_superuser("root"))
    admin_page = staff.get(reverse("admin:orders_order_change", args=[order.pk])).text
    assert "waiting for Stripe (attempt " in admin_page
    run_admin = staff.get(reverse("admin:workflows_workflowrun_change", args=[run.pk])).text
    assert "waiting for Stripe (attempt " in run_admin
    console = staff.get(reverse("workflows:run_detail", args=[run.pk])).text
    assert "Waiting for Stripe (attempt " in console
    status = ops_status()
    assert "waiting for Stripe: 1 run(s); circuit open since " in status
    assert f"run {run.pk}: waiting for Stripe (attempt " in status
    metrics = scrape(Client())
    assert metrics.value("workflows_circuit_state", dependency="stripe", state="open") == 1
    assert metrics.value("workflows_runs_waiting_for_dependency", dependency="stripe") == 1
    assert metrics.value("workflows_step_retries_total", dependency="stripe") >= 1
    assert not FraudReview.objects.exists()  # the reviewers' queue knows nothing of it

    stripe_server.end_outage()
    assert retry_waits_wake(now=later(60)) == 1  # the circuit's probe: this run
    assert queue_capture.drain() == ["completed"]
    order.refresh_from_db()
    assert order.status == "completed" and order.email_sent
    assert len(order_charges(stripe_server, order)) == 1
    assert len(smtp_server.messages_to(EMAIL)) == 1
    body = api_client_for(client_user).get(f"/api/orders/{order.order_id}/").json()
    assert body["waiting_for"] is None
    assert Circuit.objects.get(dependency="stripe").state == CircuitState.CLOSED
    assert "waiting for Stripe" not in ops_status()


def test_a_client_hears_of_no_outage_only_of_its_order_completing(
    stripe_server, smtp_server, place_order, queue_capture, client_user, settings
):
    """The client's webhooks announce order statuses; an order waiting for Stripe is
    still processing, so they say nothing until it completes."""
    settings.WEBHOOKS_RETRY_SCHEDULE = [600]  # a failed delivery waits, durably
    WebhookEndpoint.objects.create(
        client=client_user,
        url="http://127.0.0.1:9/hooks",
        events=[event.value for event in WebhookEvent],
        secret=webhook_secret_new(),
    )
    stripe_server.outage(status=503)
    order = place_order("250.00", client=client_user)
    queue_capture.drain()
    order.refresh_from_db()
    assert order.run.status == RunStatus.SUSPENDED
    announced = lambda: list(  # noqa: E731
        WebhookDelivery.objects.filter(order=order).order_by("pk").values_list("event_type")
    )
    assert announced() == [(WebhookEvent.CREATED,)]

    stripe_server.end_outage()
    retry_waits_wake(now=later(60))
    queue_capture.drain()
    order.refresh_from_db()
    assert order.status == "completed"
    assert announced() == [(WebhookEvent.CREATED,), (WebhookEvent.COMPLETED,)]


def test_mail_server_down_the_confirmation_waits_and_is_sent_once(
    smtp_server, place_order, queue_capture, settings
):
    settings.PAYMENT_GATEWAY = "simulated"
    smtp_server.outage()
    order = place_order("250.00")
    assert queue_capture.drain() == ["suspended"]
    order.refresh_from_db()
    assert order.charge_id and order.status == "processing" and not order.email_sent
    wait = Wait.objects.get(run=order.run, kind=RETRY_WAIT)
    assert wait.key == "confirm" and "ConnectionRefusedError" in wait.data["error"]
    assert not EmailRecord.objects.exists()  # no claim left behind by the refused sends

    smtp_server.end_outage()
    retry_waits_wake(now=later(60))
    assert queue_capture.drain() == ["completed"]
    order.refresh_from_db()
    assert order.status == "completed" and order.email_sent
    assert len(smtp_server.messages_to(EMAIL)) == 1


def test_a_send_cut_off_after_its_data_is_never_sent_twice(
    smtp_server, place_order, queue_capture, settings
):
    """The mail server takes the message and hangs up before answering: whether it was
    delivered is unknown, so nothing sends it again; the operator decides from the mail
    log (`resolve_confirmation`)."""
    settings.PAYMENT_GATEWAY = "simulated"
    smtp_server.hang_up_after_data_next(1)
    order = place_order("250.00")
    assert queue_capture.drain() == ["failed"]
    assert len(smtp_server.messages_to(EMAIL)) == 1  # it did arrive
    record = EmailRecord.objects.get(order=order)
    assert record.status == EmailStatus.SENDING  # the claim stays: in doubt
    order.refresh_from_db()
    run = WorkflowRun.objects.get(pk=order.run_id)
    assert "ConfirmationUncertainError" in run.error and record.message_id in run.error
    assert not Wait.objects.filter(run=run, kind=RETRY_WAIT).exists()

    call_command("resolve_confirmation", order.order_id, "--sent", stdout=StringIO())
    assert queue_capture.drain() == ["completed"]
    order.refresh_from_db()
    assert order.status == "completed" and order.email_sent
    assert len(smtp_server.messages_to(EMAIL)) == 1


def test_a_message_the_server_took_is_sent_even_if_the_goodbye_fails(
    smtp_server, place_order, queue_capture, settings, monkeypatch
):
    """The server answered 250 and the connection broke at QUIT: delivered, recorded
    sent, not sent again."""
    settings.PAYMENT_GATEWAY = "simulated"

    def reset(self):
        raise ConnectionResetError(104, "Connection reset by peer")

    monkeypatch.setattr(smtplib.SMTP, "quit", reset)
    order = place_order("250.00")
    assert queue_capture.drain() == ["completed"]
    order.refresh_from_db()
    assert order.email_sent and len(smtp_server.messages_to(EMAIL)) == 1
    assert EmailRecord.objects.get(order=order).status == EmailStatus.SENT


@pytest.mark.parametrize(
    ("exc", "kind"),
    [
        (ConnectionRefusedError(111, "Connection refused"), TransientEmailError),
        (smtplib.SMTPServerDisconnected("Connection unexpectedly closed"), TransientEmailError),
        (TimeoutError("timed out"), TransientEmailError),
        (smtplib.SMTPDataError(451, b"try again later"), TransientEmailError),
        (smtplib.SMTPRecipientsRefused({EMAIL: (450, b"mailbox busy")}), TransientEmailError),
        (smtplib.SMTPDataError(554, b"transaction failed"), EmailRejectedError),
        (smtplib.SMTPRecipientsRefused({EMAIL: (550, b"no such user")}), EmailRejectedError),
        (smtplib.SMTPAuthenticationError(535, b"bad credentials"), EmailRejectedError),
    ],
)
def test_which_mail_failures_are_waited_out(exc, kind):
    error = email_failure(exc)
    assert type(error) is kind and type(exc).__name__ in str(error)


def test_the_model_provider_down_the_order_waits_for_it(
    openai_server, stripe_server, smtp_server, place_order, queue_capture, settings
):
    settings.LLM_PROVIDER = "openai"
    openai_server.outage(status=503)
    order = place_order("250.00")
    assert queue_capture.drain() == ["suspended"]
    wait = Wait.objects.get(run=order.run_id, kind=RETRY_WAIT)
    assert wait.key == "start_order/llm/1" and wait.data["dependency"] == "openai"
    assert openai_server.outage_answered == 3  # the model step's policy: 3 attempts
    assert stripe_server.successful_charges() == []

    openai_server.end_outage()
    arguments = {"customer_id": "cus_good", "amount": "250.00", "currency": "usd"}
    email = {"email": EMAIL, "order_id": order.order_id, "amount": "250.00"}
    final = {
        "action": "email",
        "action_details": {"charge_id": None, "amount": None, "email_sent_to": EMAIL},
        "action_requested": None,
        "status_message": "charged and confirmed",
    }
    final["action_details"]["message_id"] = None
    openai_server.script(
        [
            reply_tool_calls([("charge_stripe", arguments)]),
            reply_tool_calls([("send_confirmation_email", email)]),
            reply_text(json.dumps(final)),
        ]
    )
    retry_waits_wake(now=later(60))
    assert queue_capture.drain() == ["completed"]
    order.refresh_from_db()
    assert order.status == "completed" and order.email_sent
    assert len(order_charges(stripe_server, order)) == 1
    assert len(smtp_server.messages_to(EMAIL)) == 1
    assert openai_server.pending == 0


def test_the_charge_tool_does_not_call_stripe_while_its_circuit_is_open(
    stripe_server, smtp_server, place_order, queue_capture
):
    Circuit.objects.create(
        dependency="stripe", state=CircuitState.OPEN, probe_at=later(600), opened_at=timezone.now()
    )
    order = place_order("250.00")
    assert queue_capture.drain() == ["suspended"]
    assert stripe_server.requests == []  # neither the tool nor the workflow's step called
    tool = order.run.steps.get(key="start_order/tool/1/charge_stripe")
    assert tool.output["error"] == "Stripe is unavailable; not attempted."


def test_past_the_horizon_the_order_needs_attention_and_retry_runs_completes_it(
    stripe_server, smtp_server, place_order, queue_capture, client_user, settings, monkeypatch
):
    settings.WORKFLOWS_TRANSIENT_RETRY_HORIZONS = {"stripe": 20}
    monkeypatch.setattr(circuits, "FIRST_PROBE_SECONDS", 30.0)  # no probe before we say
    stripe_server.outage(status=503)
    order = place_order("250.00", client=client_user)
    assert queue_capture.drain() == ["suspended"]
    wait = Wait.objects.get(run=order.run_id, kind=RETRY_WAIT)
    first = timezone.now() - timedelta(seconds=21)  # the outage has lasted 21 s
    Wait.objects.filter(pk=wait.pk).update(data={**wait.data, "first_failed_at": first.isoformat()})

    retry_waits_wake(now=later(30))
    assert queue_capture.drain() == ["failed"]
    api = api_client_for(client_user)
    body = api.get(f"/api/orders/{order.order_id}/").json()
    assert body["status"] == "needs_attention" and body["waiting_for"] is None
    assert "Stripe stayed unavailable for 20 s" in body["failure_reason"]

    stripe_server.end_outage()
    out = StringIO()
    dry_run = ["--error-contains", "stripe", "--since", "1h", "--dry-run"]
    call_command("retry_runs", *dry_run, stdout=out)
    assert str(order.run_id) in out.getvalue() and "Would retry 1 run(s)" in out.getvalue()
    assert queue_capture.sent == [] and WorkflowRun.objects.get(pk=order.run_id).status == "failed"

    out = StringIO()
    call_command(
        "retry_runs", "--status", "failed", "--error-contains", "Stripe", "--since", "1h",
        stdout=out,
    )  # fmt: skip
    assert "Queued again 1 run(s)" in out.getvalue()
    # A new horizon; Stripe's circuit is still open until its next probe, this run's.
    assert queue_capture.drain() == ["suspended"]
    assert api.get(f"/api/orders/{order.order_id}/").json()["status"] == "processing"
    assert retry_waits_wake(now=later(60)) == 1
    assert queue_capture.drain() == ["completed"]
    order.refresh_from_db()
    assert order.status == "completed" and len(order_charges(stripe_server, order)) == 1
    assert len(smtp_server.messages_to(EMAIL)) == 1


def test_a_declined_card_still_fails_at_once(
    stripe_server, smtp_server, place_order, queue_capture
):
    order = place_order("80.00", customer_id="cus_declined")
    assert queue_capture.drain() == ["completed"]  # the workflow finishes the order failed
    order.refresh_from_db()
    assert order.status == "failed" and not Wait.objects.filter(run=order.run_id).exists()
    assert not Circuit.objects.filter(consecutive_failures__gt=0).exists()
    assert smtp_server.messages == []
