"""Riding out outages through real `qcluster` workers, the `stripe` SDK against the local
Stripe-compatible server, Django's SMTP backend against the local SMTP server and the
simulated model (issue 22):

- Stripe answering 503, and the mail server refusing connections, each with 40 orders in
  flight and for longer than anything waits in a worker (the in-worker retries end
  within seconds; the runs park, the circuit opens and its probes reach their longest
  pause, WORKFLOWS_CIRCUIT_PROBE_SECONDS): every order completes once the dependency is
  back, with one charge and one email, within 30 s of the recovery; and the same with
  the whole cluster SIGKILLed in the middle of the outage.
- A 10-minute outage under the default horizon (1 h): no order fails.
- A horizon of 10 s: the orders end `needs_attention` naming Stripe, and `retry_runs`
  completes them once Stripe is back.

The outages last seconds, not minutes: what they prove is set by the engine's clocks
(in-worker retries up to INLINE_SLEEP_MAX_SECONDS, probes doubling from 1 s up to
WORKFLOWS_CIRCUIT_PROBE_SECONDS, 2 s here, the lease and the re-queue), and each drill
outlasts them and checks it did (every order parked and waiting, the circuit open,
several probes refused; after a SIGKILL, the dead cluster's runs taken over while the
dependency is still down). Ten minutes of outage pass durably, by moving the recorded failures
back. Still long: marked `outage`, and run only in the SQLite pass of scripts/test.sh.
Select them with `-m outage`.
"""

import time
from collections import Counter
from datetime import datetime, timedelta
from decimal import Decimal
from io import StringIO

import pytest
from django.core.management import call_command
from django.db.models import F
from django.test import override_settings
from django.utils import timezone

from orders.models import FraudReview, Order, OrderStatus
from orders.schemas import OrderPayload
from orders.selectors import NEEDS_ATTENTION, order_status_shown, order_waiting_for
from orders.services.intake import order_create
from tests.support.cluster import QCluster, chaos_settings, wait_until
from workflows.engine.services import runs_reap
from workflows.models import RETRY_WAIT, Circuit, CircuitState, RunStatus, Wait, WorkflowRun

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.qcluster,
    pytest.mark.outage,
]

ORDERS = 40
LEASE_SECONDS = 5  # a killed cluster's runs are taken over this soon
PENDING_REQUEUE_SECONDS = 3  # and its lost tasks queued again this soon
PROBE_SECONDS = 2  # the longest pause between an open circuit's probes
SETTLE_SECONDS = 30  # the target, from the moment the dependency is back
# How long each dependency stays down once every order has parked (the in-worker retries
# are over by then): the probes' longest pause reached and repeated, and, in the SIGKILL
# variant, the killed cluster's runs taken over (lease, re-queue) while it is still down.
DOWN_AFTER_PARKED_SECONDS = 4 * PROBE_SECONDS
DOWN_AFTER_KILL_SECONDS = LEASE_SECONDS + PENDING_REQUEUE_SECONDS + 2 * PROBE_SECONDS


class Outage:
    """Orders in flight through a cluster while one dependency is down."""

    def __init__(self, stripe_server, smtp_server, *, env: dict[str, str] | None = None):
        self.stripe_server = stripe_server
        self.smtp_server = smtp_server
        self.env = {
            **chaos_settings(
                stripe_server, smtp_server, model_latency=0, lease_seconds=LEASE_SECONDS
            ),
            "WORKFLOWS_CIRCUIT_PROBE_SECONDS": str(PROBE_SECONDS),
            **(env or {}),
        }
        self.clusters: list[QCluster] = []
        self.order_ids: list[str] = []

    def start_cluster(self) -> None:
        self.clusters.append(QCluster(env=self.env).start())

    def kill_and_restart(self) -> None:
        self.clusters[-1].kill()
        self.start_cluster()

    def submit(self, count: int, prefix: str) -> None:
        for i in range(count):
            order_id = f"{prefix}-{i:03d}"
            order_create(
                payload=OrderPayload(
                    order_id=order_id,
                    customer_id=f"cus_{i:03d}",
                    customer_email=f"{order_id}@example.com",
                    amount=Decimal(f"{10 + i}.50"),
                )
            )
            self.order_ids.append(order_id)

    def orders(self):
        return Order.objects.filter(order_id__in=self.order_ids).select_related("run")

    def reap(self) -> None:
        """What the scheduled reaper does every minute, done every second here."""
        with override_settings(WORKFLOWS_PENDING_REQUEUE_SECONDS=PENDING_REQUEUE_SECONDS):
            runs_reap()

    def pump(self, seconds: float) -> None:
        """Reap every second for `seconds`, the dependency still down."""
        until = time.monotonic() + seconds
        while time.monotonic() < until:
            self.reap()
            time.sleep(min(1.0, max(0.0, until - time.monotonic())))

    def waiting(self, dependency_name: str) -> int:
        """How many orders say they wait for the dependency, as the API shows them."""
        prefix = f"waiting for {dependency_name} (attempt "
        return sum((order_waiting_for(o) or "").startswith(prefix) for o in self.orders())

    def until_all(self, status: str, timeout: float) -> float:
        """Seconds until every order shows `status` with its run at rest."""
        started = time.monotonic()
        deadline = started + timeout
        while time.monotonic() < deadline:
            shown = Counter(order_status_shown(o) for o in self.orders())
            at_rest = self.orders().filter(run__status__in=[RunStatus.COMPLETED, RunStatus.FAILED])
            if shown[status] == len(self.order_ids) and at_rest.count() == len(self.order_ids):
                return time.monotonic() - started
            self.reap()
            time.sleep(0.25)
        raise AssertionError(
            f"not all {status} within {timeout} s: "
            f"{Counter(order_status_shown(o) for o in self.orders())}; "
            f"{self.clusters[-1].log_tail(8)}"
        )

    def assert_once_each(self) -> None:
        """One successful charge and one confirmation per order, none for anything else."""
        charges = Counter(
            pi["metadata"].get("order_id") for pi in self.stripe_server.successful_charges()
        )
        emails = Counter(m["To"] for m in self.smtp_server.messages)
        assert charges == Counter(self.order_ids), charges
        assert emails == Counter(f"{o}@example.com" for o in self.order_ids), emails

    def stop(self) -> None:
        for cluster in self.clusters:
            cluster.kill()


@pytest.fixture
def outage(stripe_server, smtp_server, settings):
    settings.LLM_PROVIDER = "simulated"
    running = Outage(stripe_server, smtp_server)
    yield running
    running.stop()


def parked(outage: Outage, dependency: str, timeout: float) -> None:
    """Every order's run has parked, waiting for `dependency`."""
    wait_until(
        lambda: (
            Wait.objects.filter(
                kind=RETRY_WAIT,
                status="waiting",
                data__dependency=dependency,
                run__in=WorkflowRun.objects.filter(order__order_id__in=outage.order_ids),
            ).count()
            == len(outage.order_ids)
        ),
        timeout=timeout,
    )


@pytest.mark.timeout(300)
@pytest.mark.parametrize("kill", [False, True], ids=["", "sigkill"])
def test_stripe_down_with_40_orders_in_flight(outage, stripe_server, kill):
    stripe_server.outage(status=503)  # 503 to everything, until it ends
    outage.start_cluster()
    outage.submit(ORDERS, "stripe")
    # Every order says what it waits for (a probe's run, briefly, is executing).
    wait_until(lambda: outage.waiting("Stripe") == ORDERS, timeout=60, interval=0.5)
    assert Circuit.objects.get(dependency="stripe").state != CircuitState.CLOSED
    refused_before = len(stripe_server.requests)
    outage.pump(DOWN_AFTER_PARKED_SECONDS)
    if kill:
        outage.kill_and_restart()
        outage.pump(DOWN_AFTER_KILL_SECONDS)
    # Longer than the workers wait: parked, the circuit's probes went on being refused.
    assert len(stripe_server.requests) - refused_before >= 2
    assert Circuit.objects.get(dependency="stripe").state != CircuitState.CLOSED
    shown = Counter(order_status_shown(o) for o in outage.orders())
    assert shown == {OrderStatus.PROCESSING: ORDERS}, shown  # nothing failed meanwhile
    assert stripe_server.successful_charges() == []
    assert not FraudReview.objects.exists()

    stripe_server.end_outage()
    settled = outage.until_all(OrderStatus.COMPLETED, timeout=SETTLE_SECONDS)
    print(f"Stripe back: {ORDERS} orders completed {settled:.1f} s later (kill={kill})")
    outage.assert_once_each()
    assert Circuit.objects.get(dependency="stripe").state == CircuitState.CLOSED


@pytest.mark.timeout(300)
@pytest.mark.parametrize("kill", [False, True], ids=["", "sigkill"])
def test_mail_server_down_with_40_orders_in_flight(outage, smtp_server, kill):
    smtp_server.outage()  # connections refused, until it ends
    outage.start_cluster()
    outage.submit(ORDERS, "smtp")
    wait_until(lambda: outage.waiting("the mail server") == ORDERS, timeout=60, interval=0.5)
    outage.pump(DOWN_AFTER_PARKED_SECONDS)
    if kill:
        outage.kill_and_restart()
        outage.pump(DOWN_AFTER_KILL_SECONDS)
    orders = list(outage.orders())
    assert Counter(order_status_shown(o) for o in orders) == {OrderStatus.PROCESSING: ORDERS}
    assert all(o.charge_id for o in orders)  # charged, waiting to confirm
    assert outage.smtp_server.messages == []

    smtp_server.end_outage()
    settled = outage.until_all(OrderStatus.COMPLETED, timeout=SETTLE_SECONDS)
    print(f"mail server back: {ORDERS} orders completed {settled:.1f} s later (kill={kill})")
    outage.assert_once_each()


@pytest.mark.timeout(240)
def test_a_ten_minute_outage_fails_no_order_under_the_default_horizon(outage, stripe_server):
    """Ten minutes pass durably, not in real time: once the runs are parked, their
    recorded first failures (and the circuit's opening) are moved ten minutes back, as if
    Stripe had been down that long; they go on waiting (the default horizon is an hour)
    through several more probes, and complete once Stripe is back."""
    stripe_server.outage(status=503)
    outage.start_cluster()
    outage.submit(10, "long")
    parked(outage, "stripe", timeout=60)
    ten_minutes = timedelta(minutes=10)
    for wait in Wait.objects.filter(kind=RETRY_WAIT, status="waiting"):
        first = datetime.fromisoformat(wait.data["first_failed_at"]) - ten_minutes
        moved = {**wait.data, "first_failed_at": first.isoformat()}
        Wait.objects.filter(pk=wait.pk).update(data=moved)
    Circuit.objects.filter(dependency="stripe").update(opened_at=F("opened_at") - ten_minutes)
    probes_before = len(stripe_server.requests)

    outage.pump(DOWN_AFTER_PARKED_SECONDS)  # probes every few seconds: each finds Stripe down
    assert len(stripe_server.requests) > probes_before
    assert Counter(order_status_shown(o) for o in outage.orders()) == {"processing": 10}
    assert not WorkflowRun.objects.filter(status=RunStatus.FAILED).exists()
    oldest = min(
        datetime.fromisoformat(w.data["first_failed_at"])
        for w in Wait.objects.filter(kind=RETRY_WAIT, status="waiting")
    )
    assert timezone.now() - oldest > ten_minutes

    stripe_server.end_outage()
    outage.until_all(OrderStatus.COMPLETED, timeout=SETTLE_SECONDS)
    outage.assert_once_each()


@pytest.mark.timeout(240)
def test_past_a_10_s_horizon_orders_need_attention_and_retry_runs_completes_them(
    stripe_server, smtp_server, settings
):
    settings.LLM_PROVIDER = "simulated"
    outage = Outage(
        stripe_server, smtp_server, env={"WORKFLOWS_TRANSIENT_RETRY_HORIZON": "10"}
    )
    try:
        stripe_server.outage(status=503)
        outage.start_cluster()
        outage.submit(10, "short")
        outage.until_all(NEEDS_ATTENTION, timeout=90)
        for order in outage.orders():
            reason = order.run.error
            assert "Stripe stayed unavailable for 10 s" in reason, reason
        assert stripe_server.successful_charges() == []

        stripe_server.end_outage()
        out = StringIO()
        call_command(
            "retry_runs", "--status", "failed", "--error-contains", "Stripe", "--since", "1h",
            stdout=out,
        )  # fmt: skip
        assert "Queued again 10 run(s)" in out.getvalue()
        outage.until_all(OrderStatus.COMPLETED, timeout=SETTLE_SECONDS)
        outage.assert_once_each()
    finally:
        outage.stop()

