from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from orders.errors import PaymentReleasePendingError
from orders.management.lookups import add_client_argument, order_for_command
from orders.services.cancellation import OrderCancelError, order_cancel


class Command(BaseCommand):
    help = (
        "Cancel an unsettled order whose confirmation email was not sent: stop its run, "
        "release its payment (cancel the hold, or refund a capture) and mark it cancelled. "
        "Run it again if the gateway failed midway: it retries the release. `cancel_run` "
        "on the order's run does the same."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("order_id", help="The order's id.")
        add_client_argument(parser)

    def handle(self, *args: Any, **options: Any) -> None:
        order = order_for_command(order_id=options["order_id"], client_username=options["client"])
        try:
            order = order_cancel(order=order, by=None)
        except OrderCancelError as exc:
            raise CommandError(str(exc)) from None
        except PaymentReleasePendingError as exc:
            raise CommandError(f"{exc}. Run cancel_order again to retry.") from None
        self.stdout.write(f"order {order.order_id}: cancelled; payment {order.payment_status}")
