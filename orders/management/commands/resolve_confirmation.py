from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from orders.management.lookups import add_client_argument, order_for_command
from orders.services.lifecycle import NoConfirmationInDoubtError, order_confirmation_resolve


class Command(BaseCommand):
    help = (
        "Settle an order's confirmation email left in doubt by a worker that died while "
        "sending it (its run failed with ConfirmationUncertainError). Check the mail log "
        "for the Message-ID the error names: --sent if it left, --resend if not. The run "
        "is then retried."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("order_id", help="The order's id.")
        add_client_argument(parser)
        outcome = parser.add_mutually_exclusive_group(required=True)
        outcome.add_argument("--sent", action="store_true", help="The mail log shows it left.")
        outcome.add_argument("--resend", action="store_true", help="It did not leave: send it.")

    def handle(self, *args: Any, **options: Any) -> None:
        order = order_for_command(order_id=options["order_id"], client_username=options["client"])
        try:
            run = order_confirmation_resolve(order=order, sent=options["sent"])
        except NoConfirmationInDoubtError as exc:
            raise CommandError(str(exc)) from None
        action = "recorded as sent" if options["sent"] else "released to be sent again"
        retried = f"; run {run.id} retried" if run else ""
        self.stdout.write(f"order {order.order_id}: confirmation {action}{retried}")
