import argparse
import time
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group, Permission
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.urls import reverse
from django.utils import timezone
from pydantic import ValidationError

from orders.management.arguments import positive_seconds
from orders.models import Order, OrderStatus
from orders.money import amount_display
from orders.rules import payload_error_text, payload_errors
from orders.schemas import OrderPayload
from orders.selectors import order_email_sent, order_review_info, orders_list
from orders.services import ReviewError, order_create, review_decide
from workflows.models import RunStatus

POLL_SECONDS = 0.2
STALL_SECONDS = 10.0
QCLUSTER_HINT = "is a qcluster running? (scripts/serve.sh starts one)"
REVIEWER_USERNAME = "reviewer"
REVIEWERS_GROUP = "Fraud reviewers"
SETTLED = (
    OrderStatus.COMPLETED,
    OrderStatus.REJECTED,
    OrderStatus.FAILED,
    OrderStatus.CANCELLED,
)
BAR_WIDTH = 20

# The paths an order can take, as the summary names them.
COMPLETED = "completed"
APPROVED = "completed after approval"
REJECTED = "rejected"
FAILED = "failed"
PATHS = (COMPLETED, APPROVED, REJECTED, FAILED)


@dataclass(frozen=True)
class Sample:
    amount: str
    expected: str
    declined_customer: bool = False


# Every path within the first four orders, so that a short demo still shows them all.
MIX = (
    Sample("49.99", COMPLETED),
    Sample("2500.00", APPROVED),  # above the fraud threshold: approved
    Sample("4200.00", REJECTED),  # above the fraud threshold: rejected (hold released)
    Sample("75.00", FAILED, declined_customer=True),  # the simulated gateway declines it
    Sample("1000.00", COMPLETED),  # exactly the threshold: no review
    Sample("250.00", COMPLETED),
)


def bounded_int(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a whole number") from None
    if not 1 <= number <= 500:
        raise argparse.ArgumentTypeError(f"{value} is not between 1 and 500")
    return number


def demo_reviewer() -> Any:
    """The `reviewer` user in the "Fraud reviewers" group, both created when missing."""
    group, _ = Group.objects.get_or_create(name=REVIEWERS_GROUP)
    group.permissions.add(
        Permission.objects.get(content_type__app_label="orders", codename="decide_fraud_review")
    )
    User = get_user_model()
    user, created = User._default_manager.get_or_create(username=REVIEWER_USERNAME)
    if created:
        user.set_unusable_password()
        user.save(update_fields=["password"])
    user.groups.add(group)
    return User._default_manager.get(pk=user.pk)  # no stale permission cache


def outcome_of(order: Order) -> str:
    if order.status == OrderStatus.COMPLETED:
        return APPROVED if order.fraud_approved else COMPLETED
    return str(order.status)


def table(headers: list[str], rows: list[list[str]]) -> list[str]:
    widths = [max(len(cell) for cell in column) for column in zip(headers, *rows, strict=True)]
    lines = [headers, ["-" * w for w in widths], *rows]
    return [
        "  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip() for line in lines
    ]


class Command(BaseCommand):
    help = (
        "Submit a mix of demo orders through the same service as the API (small, exactly "
        "the fraud threshold, large, and a declined card), approve one large order and "
        "reject another as the demo user 'reviewer', wait until all settle, and print a "
        "summary with trace links. A qcluster executes the runs (scripts/serve.sh starts "
        "one); exits non-zero on timeout or when an order ends off its expected path."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--orders",
            type=bounded_int,
            default=len(MIX),
            help=f"How many orders (default {len(MIX)}; the mix repeats beyond).",
        )
        parser.add_argument(
            "--timeout",
            type=positive_seconds,
            default=120.0,
            help="Seconds to wait for every order to settle (default 120).",
        )
        parser.add_argument(
            "--base-url",
            default="http://127.0.0.1:8000",
            help="Where the web server runs, for the trace links (default %(default)s).",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        count: int = options["orders"]
        reviewer = demo_reviewer()
        samples = [MIX[i % len(MIX)] for i in range(count)]
        ids = self.submit(samples)
        expected = dict(zip(ids, (s.expected for s in samples), strict=True))
        self.stdout.write(
            f"submitted {count} order(s); waiting for a qcluster to process them "
            f"(up to {options['timeout']:g} s)"
        )
        settled = self.follow(ids, expected, reviewer, options["timeout"])
        self.summary(ids, options["base_url"])
        if not settled:
            raise CommandError(
                f"Timed out after {options['timeout']:g} s before every order settled; "
                f"{QCLUSTER_HINT}"
            )
        self.verdict(ids, expected)

    def submit(self, samples: list[Sample]) -> list[str]:
        stamp = timezone.now().strftime("%Y%m%d%H%M%S%f")[:-3]
        ids = []
        for n, sample in enumerate(samples, start=1):
            try:
                payload = OrderPayload(
                    order_id=f"demo-{stamp}-{n}",
                    customer_id="cus_declined" if sample.declined_customer else f"cus_demo_{n}",
                    customer_email=f"customer{n}@example.com",
                    amount=Decimal(sample.amount),
                )
            except ValidationError as exc:  # e.g. ORDER_CURRENCIES without usd
                problems = payload_error_text(payload_errors(exc))
                raise CommandError(f"The demo orders break the order rules: {problems}") from None
            order, _ = order_create(payload=payload)
            ids.append(order.order_id)
        return ids

    def follow(
        self, ids: list[str], expected: dict[str, str], reviewer: Any, timeout: float
    ) -> bool:
        """Poll until every order settles, deciding reviews as they open. False on timeout."""
        start = last_change = time.monotonic()
        deadline = start + timeout
        decided: set[str] = set()
        previous: Any = None
        hinted = False
        tty = self.stdout.isatty()
        try:
            while True:
                demo_orders = Order.objects.filter(client=None, order_id__in=ids)
                orders = list(demo_orders.select_related("run"))
                for order in orders:
                    if (
                        order.order_id not in decided
                        and order.status == OrderStatus.AWAITING_REVIEW
                        and order.run.status == RunStatus.SUSPENDED
                    ):
                        self.decide(order, expected[order.order_id] == APPROVED, reviewer)
                        decided.add(order.order_id)
                state = sorted((o.order_id, o.status, o.run.status) for o in orders)
                settled = sum(o.status in SETTLED for o in orders)
                now = time.monotonic()
                if state != previous:
                    previous, last_change = state, now
                    self.progress(orders, len(ids), tty)
                if settled == len(ids):
                    return True
                if not hinted and now - last_change >= STALL_SECONDS:
                    hinted = True
                    self.stderr.write(
                        ("\n" if tty else "") + f"No progress for {STALL_SECONDS:g} s: "
                        f"{QCLUSTER_HINT}"
                    )
                if now >= deadline:
                    return False
                time.sleep(POLL_SECONDS)
        finally:
            if tty:
                self.stdout.write("")

    def decide(self, order: Order, approve: bool, reviewer: Any) -> None:
        verb = "approve" if approve else "reject"
        try:
            review_decide(order=order, approved=approve, by=reviewer, note=f"demo: {verb}")
        except ReviewError as exc:
            self.stderr.write(f"could not {verb} {order.order_id}: {exc}")

    def progress(self, orders: list[Order], total: int, tty: bool) -> None:
        settled = sum(o.status in SETTLED for o in orders)
        waiting = sum(o.status == OrderStatus.AWAITING_REVIEW for o in orders)
        filled = BAR_WIDTH * settled // total
        line = f"[{'#' * filled}{'-' * (BAR_WIDTH - filled)}] {settled}/{total} settled" + (
            f", {waiting} awaiting review" if waiting else ""
        )
        if tty:
            self.stdout.write(f"\r{line}\033[K", ending="")
            self.stdout.flush()
        else:
            self.stdout.write(line)

    def summary(self, ids: list[str], base_url: str) -> None:
        orders = {o.order_id: o for o in orders_list().filter(client=None, order_id__in=ids)}
        rows = []
        for order_id in ids:
            order = orders[order_id]
            review = order_review_info(order)
            if review is None:
                decision = "—"
            elif review["decided_by"]:
                decision = f"{review['state']} by {review['decided_by']}"
            else:
                decision = review["state"]
            settled = order.status in SETTLED
            rows.append(
                [
                    order.order_id,
                    amount_display(order.amount, order.currency),
                    outcome_of(order) if settled else f"({order.status})",
                    decision,
                    order.charge_id or "—",
                    "yes" if order_email_sent(order) else "no",
                    base_url.rstrip("/") + reverse("workflows:run_detail", args=[order.run_id]),
                ]
            )
        headers = ["order", "amount", "outcome", "review", "charge id", "email", "trace"]
        self.stdout.write("\n".join(table(headers, rows)))

    def verdict(self, ids: list[str], expected: dict[str, str]) -> None:
        orders = {o.order_id: o for o in Order.objects.filter(client=None, order_id__in=ids)}
        off_path = [
            f"{i} ended {outcome_of(orders[i])}, expected {expected[i]}"
            for i in ids
            if outcome_of(orders[i]) != expected[i]
        ]
        if off_path:
            raise CommandError("Unexpected outcome: " + "; ".join(off_path))
        seen = [path for path in PATHS if path in expected.values()]
        self.stdout.write(f"paths seen: {', '.join(seen)}")
        missing = [path for path in PATHS if path not in seen]
        if missing:
            self.stdout.write(
                f"not in this mix: {', '.join(missing)} (use --orders 4 or more to see all)"
            )
