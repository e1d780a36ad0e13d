import json
import time
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.core.serializers.json import DjangoJSONEncoder
from django.urls import reverse
from pydantic import ValidationError

from orders.management.arguments import positive_seconds
from orders.management.lookups import user_get
from orders.models import Order
from orders.rules import payload_error_text, payload_errors
from orders.schemas import OrderPayload
from orders.services.intake import OrderConflictError, order_create
from workflows.models import EXECUTING_RUN_STATUSES, RunStatus, WorkflowRun

POLL_SECONDS = 0.2
QCLUSTER_HINT = "is a qcluster running? (scripts/serve.sh starts one)"
# The API's field names, as this command's options.
OPTION_OF_FIELD = {
    "order_id": "--order-id",
    "customer_id": "--customer-id",
    "customer_email": "--email",
    "amount": "--amount",
    "currency": "--currency",
}


def payload_validate(data: dict[str, Any]) -> OrderPayload:
    """The payload under the order rules the API applies, or a one-line CommandError."""
    try:
        return OrderPayload.model_validate(data)
    except ValidationError as exc:
        problems = payload_error_text(payload_errors(exc), OPTION_OF_FIELD)
        raise CommandError(f"Invalid order: {problems}") from None


def run_wait(run_id: Any, timeout: float) -> WorkflowRun:
    """Poll until the run leaves pending/running (suspended counts as settled)."""
    deadline = time.monotonic() + timeout
    while True:
        run = WorkflowRun.objects.get(pk=run_id)
        if run.status not in EXECUTING_RUN_STATUSES:
            return run
        if time.monotonic() >= deadline:
            raise CommandError(
                f"Run {run_id} is still {run.status} after {timeout:g} s; {QCLUSTER_HINT}"
            )
        time.sleep(POLL_SECONDS)


class Command(BaseCommand):
    help = (
        "Submit an order exactly as the API does (same validation, same service): it is "
        "saved and its order_processing run queued for a qcluster worker. Repeating the "
        "same body reports the existing order; --wait polls until the run settles."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--order-id", required=True, help="Your order id (1-64 chars).")
        parser.add_argument("--customer-id", required=True, help="The payment customer id.")
        parser.add_argument("--email", required=True, help="The customer's e-mail address.")
        parser.add_argument(
            "--amount", required=True, help="Amount in major units, e.g. 12.34 (> 0)."
        )
        parser.add_argument("--currency", default="usd", help="Currency code (default usd).")
        parser.add_argument(
            "--client",
            metavar="USERNAME",
            help="Submit as this API client (its order ids and the API see the order); "
            "by default the order has no client.",
        )
        parser.add_argument(
            "--wait",
            action="store_true",
            help="Wait until the run completes, fails or suspends, then print the result.",
        )
        parser.add_argument(
            "--timeout",
            type=positive_seconds,
            default=60.0,
            help="Seconds --wait waits before giving up (default 60).",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        payload = payload_validate(
            {
                "order_id": options["order_id"],
                "customer_id": options["customer_id"],
                "customer_email": options["email"],
                "amount": options["amount"],
                "currency": options["currency"],
            }
        )
        client = user_get(options["client"]) if options["client"] else None
        try:
            order, created = order_create(payload=payload, client=client)
        except OrderConflictError as exc:
            raise CommandError(str(exc)) from None
        news = "created" if created else "already existed: same request, nothing new started"
        self.write_fields(
            [
                ("order", f"{order.order_id} ({news})"),
                ("status", order.status),
                ("run", str(order.run_id)),
                ("trace", reverse("workflows:run_detail", args=[order.run_id])),
            ]
        )
        if not options["wait"]:
            return
        self.stdout.write(f"waiting for run {order.run_id} (up to {options['timeout']:g} s)…")
        run = run_wait(order.run_id, options["timeout"])
        self.write_result(Order.objects.get(pk=order.pk), run)

    def write_fields(self, pairs: list[tuple[str, str]]) -> None:
        width = max(len(label) for label, _ in pairs)
        for label, value in pairs:
            self.stdout.write(f"{label.ljust(width)}  {value}".rstrip())

    def write_result(self, order: Order, run: WorkflowRun) -> None:
        pairs = [
            ("run status", run.status),
            ("order status", order.status),
            ("charge id", order.charge_id or "—"),
            ("refund id", order.refund_id or "—"),
            ("email sent", "yes" if order.email_sent else "no"),
            ("failure reason", order.failure_reason or "—"),
        ]
        if run.error:
            pairs.append(("run error", run.error))
        self.write_fields(pairs)
        self.stdout.write("output:")
        self.stdout.write(json.dumps(run.output, cls=DjangoJSONEncoder, indent=2))
        if run.status == RunStatus.SUSPENDED:
            self.stdout.write(
                f"The order awaits a fraud review: manage.py review {order.order_id} "
                + (f"--client {order.client.get_username()} " if order.client else "")
                + "--approve|--reject --user USERNAME"
            )
