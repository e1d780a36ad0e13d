import argparse
import json
import time
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, TextIO, cast

from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group, Permission
from django.core.management.base import BaseCommand, CommandError, CommandParser, OutputWrapper
from django.urls import reverse
from django.utils import timezone
from pydantic import ValidationError
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from orders.management.arguments import positive_seconds
from orders.models import Order, OrderStatus
from orders.money import amount_display, amount_plain
from orders.policy import fraud_review_required
from orders.roles import REVIEWERS_GROUP
from orders.rules import payload_error_text, payload_errors
from orders.schemas import OrderPayload
from orders.selectors import order_email_sent, order_review_info, orders_list
from orders.services.intake import order_create
from orders.services.reviews import ReviewError, review_decide
from workflows.management.tables import table_write
from workflows.models import RunStatus

POLL_SECONDS = 0.2
STALL_SECONDS = 10.0
QCLUSTER_HINT = "is a qcluster running? (scripts/serve.sh starts one)"
REVIEWER_USERNAME = "reviewer"
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
    approve: bool = True  # what the demo reviewer decides, if the fraud policy asks
    declined_customer: bool = False

    def expected_path(self, currency: str) -> str:
        """The path the order should take: the fraud policy says whether it is reviewed."""
        if self.declined_customer:
            return FAILED
        if not fraud_review_required(amount=Decimal(self.amount), currency=currency):
            return COMPLETED
        return APPROVED if self.approve else REJECTED


# Every path within the first four orders (at the default threshold, 1000.00 USD), so
# that a short demo still shows them all.
MIX = (
    Sample("49.99"),
    Sample("2500.00"),  # reviewed and approved
    Sample("4200.00", approve=False),  # reviewed and rejected (hold released)
    Sample("75.00", declined_customer=True),  # the simulated gateway declines it
    Sample("1000.00"),  # exactly the default threshold: not reviewed
    Sample("250.00"),
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


class _Stream:
    """A command's output stream as rich writes to it: text as given, no line ending
    added (Django's `OutputWrapper.write` adds one)."""

    def __init__(self, wrapper: Any) -> None:
        self._wrapper = wrapper
        self.encoding = getattr(wrapper, "encoding", None) or "utf-8"

    def write(self, text: str) -> int:
        self._wrapper.write(text, ending="")
        return len(text)

    def flush(self) -> None:
        self._wrapper.flush()

    def isatty(self) -> bool:
        return self._wrapper.isatty()


def live_progress(
    stream: OutputWrapper, *, no_color: bool = False, force_color: bool = False
) -> Progress | None:
    """rich's live progress bar on `stream` when it is a terminal (`--no-color`,
    `--force-color` and NO_COLOR honoured); None elsewhere: a pipe, a file or a log gets
    one `progress_line` per change instead."""
    console = Console(
        file=cast(TextIO, _Stream(stream)),
        force_terminal=True if force_color else None,
        no_color=no_color or None,
        highlight=False,
    )
    if not console.is_terminal:
        return None
    return Progress(
        BarColumn(bar_width=BAR_WIDTH),
        MofNCompleteColumn(),
        TextColumn("settled{task.fields[waiting]}"),
        TimeElapsedColumn(),
        console=console,
    )


def progress_line(settled: int, total: int) -> str:
    """The progress as a log line, where no live bar can be drawn (not a terminal)."""
    filled = BAR_WIDTH * settled // total
    return f"[{'#' * filled}{'-' * (BAR_WIDTH - filled)}] {settled}/{total} settled"


class Command(BaseCommand):
    help = (
        "Submit a mix of demo orders through the same service as the API (small, exactly "
        "the default fraud threshold, large, and a declined card), approve one order the "
        "fraud policy sends to review and reject another as the demo user 'reviewer', wait "
        "until all settle, and print a summary with trace links (--json: one JSON document "
        "instead). A qcluster executes the runs (scripts/serve.sh starts one); exits "
        "non-zero on timeout or when an order ends off its expected path."
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
            default=settings.SITE_URL,
            help="Where the web server runs, for the trace links (default SITE_URL, "
            "%(default)s; scripts/serve.sh sets it from its address).",
        )
        parser.add_argument(
            "--json",
            action="store_true",
            help="Print the result as one JSON document on stdout, for scripts; progress "
            "and notes go to stderr.",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        count: int = options["orders"]
        as_json: bool = options["json"]
        # What a person reads (progress, the table) goes to stdout, or to stderr when
        # stdout carries the JSON document.
        self.human = self.stderr if as_json else self.stdout
        self.live = live_progress(
            self.human, no_color=options["no_color"], force_color=options["force_color"]
        )
        reviewer = demo_reviewer()
        samples = [MIX[i % len(MIX)] for i in range(count)]
        expected = self.submit(samples)
        ids = list(expected)
        self.human.write(
            f"submitted {count} order(s); waiting for a qcluster to process them "
            f"(up to {options['timeout']:g} s)"
        )
        settled = self.follow(ids, expected, reviewer, options["timeout"])
        results = self.results(ids, expected, options["base_url"])
        seen = [path for path in PATHS if path in expected.values()]
        off_path = [
            f"{r['order_id']} ended {r['outcome']}, expected {r['expected']}"
            for r in results
            if r["outcome"] != r["expected"]
        ]
        if as_json:
            document = {
                "settled": settled,
                "orders": results,
                "paths_seen": seen,
                "unexpected": off_path if settled else [],
            }
            self.stdout.write(json.dumps(document, indent=2))
        else:
            self.summary(results)
        if not settled:
            raise CommandError(
                f"Timed out after {options['timeout']:g} s before every order settled; "
                f"{QCLUSTER_HINT}"
            )
        if off_path:
            raise CommandError("Unexpected outcome: " + "; ".join(off_path))
        if not as_json:
            self.verdict(seen, shown=count)

    def submit(self, samples: list[Sample]) -> dict[str, str]:
        """Create the orders; returns each one's expected path, by order id."""
        stamp = timezone.now().strftime("%Y%m%d%H%M%S%f")[:-3]
        expected = {}
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
            expected[order.order_id] = sample.expected_path(payload.currency)
        return expected

    def follow(
        self, ids: list[str], expected: dict[str, str], reviewer: Any, timeout: float
    ) -> bool:
        """Poll until every order settles, deciding reviews as they open. False on timeout.

        A terminal gets rich's live bar; anything else one line per change, a log."""
        start = last_change = time.monotonic()
        deadline = start + timeout
        decided: set[str] = set()
        previous: Any = None
        written = ""
        hinted = False
        task = self.live.add_task("orders", total=len(ids), waiting="") if self.live else None
        try:
            if self.live:
                self.live.start()
            while True:
                demo_orders = Order.objects.filter(client=None, order_id__in=ids)
                orders = list(demo_orders.select_related("run"))
                for order in orders:
                    if (
                        order.order_id not in decided
                        and order.status == OrderStatus.AWAITING_REVIEW
                        and order.run is not None
                        and order.run.status == RunStatus.SUSPENDED
                    ):
                        self.decide(order, expected[order.order_id] == APPROVED, reviewer)
                        decided.add(order.order_id)
                state = sorted((o.order_id, o.status, o.run and o.run.status) for o in orders)
                settled = sum(o.status in SETTLED for o in orders)
                waiting = sum(o.status == OrderStatus.AWAITING_REVIEW for o in orders)
                waiting_text = f", {waiting} awaiting review" if waiting else ""
                now = time.monotonic()
                if state != previous:
                    previous, last_change = state, now
                    line = progress_line(settled, len(ids)) + waiting_text
                    if self.live and task is not None:
                        self.live.update(task, completed=settled, waiting=waiting_text)
                    elif line != written:  # a run's own moves change no count
                        written = line
                        self.human.write(line)
                if settled == len(ids):
                    return True
                if not hinted and now - last_change >= STALL_SECONDS:
                    hinted = True
                    self.note(f"No progress for {STALL_SECONDS:g} s: {QCLUSTER_HINT}")
                if now >= deadline:
                    return False
                time.sleep(POLL_SECONDS)
        finally:
            if self.live:
                self.live.stop()
                self.live = None  # notes go to stderr again

    def note(self, text: str) -> None:
        """A warning for the person watching: above the live bar on a terminal (so that
        it does not garble it), on stderr otherwise."""
        if self.live:
            self.live.console.print(text, style="yellow", markup=False)
        else:
            self.stderr.write(text)

    def decide(self, order: Order, approve: bool, reviewer: Any) -> None:
        verb = "approve" if approve else "reject"
        try:
            review_decide(order=order, approved=approve, by=reviewer, note=f"demo: {verb}")
        except ReviewError as exc:
            self.note(f"could not {verb} {order.order_id}: {exc}")

    def results(
        self, ids: list[str], expected: dict[str, str], base_url: str
    ) -> list[dict[str, Any]]:
        """Each order as it ended (or stands), in submission order: the summary's rows and
        the JSON document's `orders`."""
        orders = {o.order_id: o for o in orders_list().filter(client=None, order_id__in=ids)}
        results = []
        for order_id in ids:
            order = orders[order_id]
            review = order_review_info(order)
            results.append(
                {
                    "order_id": order.order_id,
                    "amount": amount_plain(order.amount, order.currency),
                    "currency": order.currency,
                    "status": str(order.status),
                    "outcome": outcome_of(order) if order.status in SETTLED else None,
                    "expected": expected[order_id],
                    "review": None
                    if review is None
                    else {"state": review["state"], "decided_by": review["decided_by"]},
                    "charge_id": order.charge_id or None,
                    "email_sent": order_email_sent(order),
                    "trace_url": base_url.rstrip("/")
                    + reverse("workflows:run_detail", args=[order.run_id]),
                }
            )
        return results

    def summary(self, results: list[dict[str, Any]]) -> None:
        rows = []
        for row in results:
            review = row["review"]
            if review is None:
                decision = "—"
            elif review["decided_by"]:
                decision = f"{review['state']} by {review['decided_by']}"
            else:
                decision = review["state"]
            rows.append(
                [
                    row["order_id"],
                    amount_display(Decimal(row["amount"]), row["currency"]),
                    row["outcome"] or f"({row['status']})",
                    decision,
                    row["charge_id"] or "—",
                    "yes" if row["email_sent"] else "no",
                    row["trace_url"],
                ]
            )
        headers = ["order", "amount", "outcome", "review", "charge id", "email", "trace"]
        table_write(self.human, headers, rows)

    def verdict(self, seen: list[str], *, shown: int) -> None:
        self.human.write(f"paths seen: {', '.join(seen)}")
        missing = [path for path in PATHS if path not in seen]
        if missing:
            # At the default threshold the first four orders take every path.
            hint = " (use --orders 4 or more to see all)" if shown < 4 else ""
            self.human.write(f"not in this mix: {', '.join(missing)}{hint}")
