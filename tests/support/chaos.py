"""The chaos experiment's driver, shared by `tests/orders/test_chaos.py` (24 orders) and
`bench/chaos.py` (500): it submits orders, decides their reviews as they come due, kills
and restarts the qcluster, reaps as the scheduled reaper would, and settles the
confirmations left in doubt as an operator would. Import it after `django.setup()`.
"""

import contextlib
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from django.test import override_settings
from django.utils import timezone
from django_q.models import OrmQ

from orders.models import EmailKind, Order, OrderStatus
from orders.schemas import OrderPayload
from orders.services.intake import order_create
from orders.services.lifecycle import order_confirmation_resolve
from orders.services.reviews import ReviewError, review_decide
from tests.support.cluster import QCluster
from workflows.engine.services import runs_reap
from workflows.models import RunStatus, WorkflowRun


@dataclass(frozen=True)
class Planned:
    """An order of the experiment and the path it must take."""

    order_id: str
    amount: str
    customer_id: str
    path: str  # small | threshold | approve | reject | declined

    @property
    def expected_status(self) -> str:
        return {"reject": OrderStatus.REJECTED, "declined": OrderStatus.FAILED}.get(
            self.path, OrderStatus.COMPLETED
        )

    @property
    def charged(self) -> bool:
        """Captured: a rejected order's authorization is cancelled, never captured."""
        return self.path not in ("declined", "reject")

    @property
    def held_then_released(self) -> bool:
        return self.path == "reject"

    @property
    def emailed(self) -> bool:
        return self.expected_status == OrderStatus.COMPLETED

    @property
    def subject(self) -> str:
        """Of its confirmation email."""
        return f"Your order {self.order_id} is confirmed"


class ChaosDriver:
    def __init__(
        self,
        *,
        start_cluster: Callable[[int], QCluster],
        reviewer: Any,
        pending_requeue_seconds: float,
    ) -> None:
        """`start_cluster(n)` starts the n-th qcluster and returns it (with `kill()`)."""
        self._start_cluster = start_cluster
        self.reviewer = reviewer
        self.pending_requeue_seconds = pending_requeue_seconds
        self.clusters: list[QCluster] = []
        self.decisions: dict[str, bool] = {}
        self.decided: set[str] = set()
        self.kills: list[int] = []  # runs `running` at each kill
        self.held_tasks: set[int] = set()  # queue tasks the killed clusters had dequeued
        self.reaped_running: set[Any] = set()
        self.reaped_pending: set[Any] = set()
        self.resolved: list[str] = []

    def start_cluster(self) -> None:
        self.clusters.append(self._start_cluster(len(self.clusters)))

    def kill_and_restart(self) -> None:
        self.kills.append(WorkflowRun.objects.filter(status=RunStatus.RUNNING).count())
        self.clusters[-1].kill()
        held = OrmQ.objects.filter(lock__gt=timezone.now()).values_list("pk", flat=True)
        self.held_tasks |= set(held)
        self.start_cluster()

    def submit(self, planned: Iterable[Planned]) -> None:
        for p in planned:
            order_create(
                payload=OrderPayload(
                    order_id=p.order_id,
                    customer_id=p.customer_id,
                    customer_email=f"{p.order_id}@example.com",
                    amount=Decimal(p.amount),
                )
            )
            if p.path in ("approve", "reject"):
                self.decisions[p.order_id] = p.path == "approve"

    def decide_reviews(self) -> None:
        due = Order.objects.filter(
            order_id__in=set(self.decisions) - self.decided,
            status=OrderStatus.AWAITING_REVIEW,
            run__status=RunStatus.SUSPENDED,
        )
        for order in due:
            with contextlib.suppress(ReviewError):
                review_decide(
                    order=order, approved=self.decisions[order.order_id], by=self.reviewer
                )
                self.decided.add(order.order_id)

    def reap(self) -> None:
        now = timezone.now()
        expired = set(
            WorkflowRun.objects.filter(
                status=RunStatus.RUNNING, lease_expires_at__lt=now
            ).values_list("pk", flat=True)
        )
        with override_settings(WORKFLOWS_PENDING_REQUEUE_SECONDS=self.pending_requeue_seconds):
            reaped = set(runs_reap(now=now))
        self.reaped_running |= reaped & expired
        self.reaped_pending |= reaped - expired

    def resolve_confirmations_in_doubt(self, smtp_server: Any) -> None:
        """The operator's part: a run failed because its confirmation is in doubt (its
        worker died between claim and SMTP); the mail server says whether it left."""
        received = {m["Message-ID"].strip() for m in smtp_server.messages}
        for order in Order.objects.filter(
            run__status=RunStatus.FAILED, run__error__contains="ConfirmationUncertainError"
        ):
            sent = order.emails.get(kind=EmailKind.CONFIRMATION).message_id in received
            order_confirmation_resolve(order=order, sent=sent)
            self.resolved.append(f"{order.order_id} ({'sent' if sent else 'resent'})")

    def pump(self, seconds: float) -> None:
        """Decide the reviews that come due during `seconds`."""
        until = time.monotonic() + seconds
        while True:
            self.decide_reviews()
            if time.monotonic() >= until:
                return
            time.sleep(min(0.05, max(0.0, until - time.monotonic())))

    def pump_until_working(self, timeout: float) -> None:
        """Decide reviews until the cluster is executing a run (or `timeout` passes)."""
        self.pump_until_running(at_least=1, timeout=timeout)

    def pump_until_running(self, *, at_least: int, timeout: float) -> None:
        """Decide reviews until `at_least` runs execute at once (or `timeout` passes)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if WorkflowRun.objects.filter(status=RunStatus.RUNNING).count() >= at_least:
                return
            self.pump(0.05)
