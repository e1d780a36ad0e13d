"""The three crash points of the charge that matter, in-process, for a 250.00 order with
the `stripe` gateway (the real SDK against the local Stripe-compatible server) and email
through the local SMTP server.

A crash is a `WorkerCrash` (a BaseException, as a SIGKILL would be: nothing in the engine
catches it) raised from a patched method. It leaves the run `running` with the dead
worker's lease; the test expires the lease, reaps, executes the run again and checks that
the customer was charged once and confirmed once:

    (a) before the Stripe call: the charge tool step started, nothing sent to Stripe;
    (b) after Stripe answered, before the step committed: the retry finds the first
        PaymentIntent by listing the customer's, and creates nothing;
    (c) after the step committed, before the next model call: replay sends nothing.
"""

from datetime import timedelta

import pytest
from django.db.models import Q
from django.utils import timezone

from orders.models import Order
from orders.payments import StripeGateway, payment_key
from workflows.engine.context import StepContext, WorkflowContext
from workflows.engine.services import runs_reap
from workflows.models import RunStatus, StepRecord, WorkflowRun

pytestmark = pytest.mark.django_db(transaction=True)

CHARGE_STEP = "start_order/tool/1/charge_stripe"
NEXT_MODEL_CALL = "start_order/llm/2"


class WorkerCrash(BaseException):
    """The worker dies here: not an Exception, so no retry policy or handler sees it."""


@pytest.fixture(autouse=True)
def simulated_model(settings):
    settings.LLM_PROVIDER = "simulated"
    settings.SIMULATED_MODEL_LATENCY = 0


def step_keys(order: Order) -> list[str]:
    return list(StepRecord.objects.filter(run_id=order.run_id).values_list("key", flat=True))


def charge_key(order: Order) -> str:
    return payment_key(operation="charge", order_pk=order.pk)


def charge_requests(stripe_server) -> list:
    return [
        r for r in stripe_server.requests if r.method == "POST" and r.path == "/v1/payment_intents"
    ]


def execute_until_crash(order: Order, queue_capture) -> WorkflowRun:
    """Execute the order's run until the patched crash: it is left `running`, with the
    dead worker's lease still valid, so nobody takes it over yet."""
    with pytest.raises(WorkerCrash):
        queue_capture.drain()
    assert queue_capture.sent == []
    run = WorkflowRun.objects.get(pk=order.run_id)
    assert run.status == RunStatus.RUNNING and run.lease_owner
    assert run.lease_expires_at > timezone.now()
    assert runs_reap() == []
    return run


def recover(run: WorkflowRun, queue_capture) -> WorkflowRun:
    """The lease expires, the reaper re-queues the run, a worker executes it again."""
    WorkflowRun.objects.filter(pk=run.pk).update(
        lease_expires_at=timezone.now() - timedelta(seconds=1)
    )
    assert runs_reap() == [run.pk]
    assert queue_capture.drain() == ["completed"]
    run.refresh_from_db()
    return run


def assert_charged_and_confirmed_once(order: Order, run: WorkflowRun, stripe_server, smtp_server):
    order.refresh_from_db()
    assert run.status == RunStatus.COMPLETED and run.attempts == 2, (run.status, run.error)
    assert order.status == "completed" and not order.fraud_review_required
    [intent] = [
        pi
        for pi in stripe_server.successful_charges()
        if pi["metadata"]["order_id"] == order.order_id
    ]
    assert intent["amount"] == 25000 and intent["id"] == order.charge_id
    assert len(stripe_server.payment_intents) == 1  # nothing else was created, declined or not
    [message] = smtp_server.messages
    assert message["To"] == order.customer_email
    assert message["Subject"] == f"Your order {order.order_id} is confirmed"
    assert order.emails.get().message_id == message["Message-ID"].strip()
    stranded = WorkflowRun.objects.filter(status=RunStatus.RUNNING).filter(
        Q(lease_owner="") | Q(lease_expires_at__isnull=True)
    )
    assert not stranded.exists()
    assert run.lease_owner == "" and run.lease_expires_at is None


def test_crash_before_stripe_call(
    queue_capture, stripe_server, smtp_server, place_order, monkeypatch
):
    """(a) The charge tool step is running; the worker dies before any request leaves."""
    crashed: list[str] = []
    original = StripeGateway.charge

    def crash_before_request(self, **kwargs):
        if not crashed:
            crashed.append(kwargs["idempotency_key"])
            raise WorkerCrash
        return original(self, **kwargs)

    monkeypatch.setattr(StripeGateway, "charge", crash_before_request)
    order = place_order("250.00")
    run = execute_until_crash(order, queue_capture)
    assert crashed == [charge_key(order)]
    assert stripe_server.requests == []
    assert step_keys(order) == ["register_order", "start_order/llm/1"]

    run = recover(run, queue_capture)

    [request] = charge_requests(stripe_server)
    assert request.idempotency_key == charge_key(order)
    assert not request.replayed
    assert_charged_and_confirmed_once(order, run, stripe_server, smtp_server)


@pytest.mark.parametrize("window", ["gateway_answered", "order_recorded"])
def test_crash_after_stripe_answered_before_step_committed(
    window, queue_capture, stripe_server, smtp_server, place_order, monkeypatch
):
    """(b) Stripe created the PaymentIntent and answered; the worker dies before the tool
    step is committed. `gateway_answered`: before the order row records the charge, so
    the re-executed tool looks the order's PaymentIntent up at Stripe and adopts it.
    `order_recorded`: after it (the fenced INSERT of the step fails), so the re-executed
    tool finds the charge on the order and sends nothing."""
    crashed: list[str] = []
    if window == "gateway_answered":
        original_charge = StripeGateway.charge

        def crash_after_answer(self, **kwargs):
            charge = original_charge(self, **kwargs)
            if not crashed:
                crashed.append(charge.charge_id)
                raise WorkerCrash
            return charge

        monkeypatch.setattr(StripeGateway, "charge", crash_after_answer)
    else:
        original_commit = WorkflowContext._commit_step

        def crash_before_commit(self, record):
            if record.key == CHARGE_STEP and not crashed:
                crashed.append(record.key)
                raise WorkerCrash
            return original_commit(self, record)

        monkeypatch.setattr(WorkflowContext, "_commit_step", crash_before_commit)

    order = place_order("250.00")
    run = execute_until_crash(order, queue_capture)
    # At the crash Stripe had charged, and the engine had not recorded the tool call.
    [intent] = stripe_server.successful_charges()
    assert CHARGE_STEP not in step_keys(order)
    order.refresh_from_db()
    assert order.charge_id == ("" if window == "gateway_answered" else intent["id"])

    run = recover(run, queue_capture)

    [request] = charge_requests(stripe_server)
    assert request.idempotency_key == charge_key(order) and request.status == 200
    tool_step = StepRecord.objects.get(run=run, key=CHARGE_STEP)
    assert tool_step.output["output"]["charge_id"] == intent["id"]
    assert_charged_and_confirmed_once(order, run, stripe_server, smtp_server)


def test_crash_after_charge_step_committed(
    queue_capture, stripe_server, smtp_server, place_order, monkeypatch
):
    """(c) The charge tool step is committed; the worker dies before the next model
    call. Replay returns the recorded charge: Stripe sees no second request."""
    original_call = StepContext.execute_step
    crashed: list[str] = []

    async def crash_before_next_model_call(self, key, *args, **kwargs):
        if key == NEXT_MODEL_CALL and not crashed:
            crashed.append(key)
            raise WorkerCrash
        return await original_call(self, key, *args, **kwargs)

    monkeypatch.setattr(StepContext, "execute_step", crash_before_next_model_call)
    order = place_order("250.00")
    run = execute_until_crash(order, queue_capture)
    assert step_keys(order) == ["register_order", "start_order/llm/1", CHARGE_STEP]
    assert len(charge_requests(stripe_server)) == 1 and smtp_server.messages == []

    run = recover(run, queue_capture)

    [request] = charge_requests(stripe_server)
    assert request.idempotency_key == charge_key(order)
    assert step_keys(order)[:6] == [
        "register_order",
        "start_order/llm/1",
        CHARGE_STEP,
        NEXT_MODEL_CALL,
        "start_order/tool/2/send_confirmation_email",
        "start_order/llm/3",
    ]
    assert_charged_and_confirmed_once(order, run, stripe_server, smtp_server)


def test_crash_between_claiming_and_sending_the_email_is_settled_by_an_operator(
    queue_capture, stripe_server, smtp_server, place_order, monkeypatch
):
    """The one window no provider key covers: the confirmation is claimed, then the worker
    dies before the mail server took it. Nobody can know whether it left, so the run
    fails saying so (instead of completing without an email), and `resolve_confirmation`
    settles it: here the mail log shows nothing, so `--resend`."""
    from django.core.mail import EmailMultiAlternatives
    from django.core.management import call_command

    original_send = EmailMultiAlternatives.send
    crashed: list[str] = []

    def crash_before_smtp(self, *args, **kwargs):
        if not crashed:
            crashed.append(self.to[0])
            raise WorkerCrash
        return original_send(self, *args, **kwargs)

    monkeypatch.setattr(EmailMultiAlternatives, "send", crash_before_smtp)
    order = place_order("250.00")
    run = execute_until_crash(order, queue_capture)
    assert order.emails.get().status == "sending" and smtp_server.messages == []

    WorkflowRun.objects.filter(pk=run.pk).update(
        lease_expires_at=timezone.now() - timedelta(seconds=1)
    )
    assert runs_reap() == [run.pk]
    assert queue_capture.drain() == ["failed"]
    run.refresh_from_db()
    assert "ConfirmationUncertainError" in run.error and "resolve_confirmation" in run.error
    assert smtp_server.messages == []

    call_command("resolve_confirmation", order.order_id, "--resend")
    assert queue_capture.drain() == ["completed"]
    run.refresh_from_db()
    order.refresh_from_db()
    assert order.status == "completed" and len(smtp_server.messages) == 1
    assert len(stripe_server.successful_charges()) == 1
