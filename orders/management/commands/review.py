from typing import Any

from django.core.exceptions import PermissionDenied
from django.core.management.base import BaseCommand, CommandError, CommandParser

from orders.management.lookups import add_client_argument, order_for_command, user_get
from orders.services.reviews import ReviewError, review_decide


class Command(BaseCommand):
    help = (
        "Approve or reject an order's pending fraud review as USERNAME (who needs the "
        "orders.decide_fraud_review permission, e.g. the 'Fraud reviewers' group). The "
        "order's workflow resumes: approved orders are captured and confirmed, rejected "
        "ones released (the hold is cancelled)."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("order_id", help="The order's id.")
        add_client_argument(parser)
        decision = parser.add_mutually_exclusive_group(required=True)
        decision.add_argument("--approve", action="store_true", help="Approve the order.")
        decision.add_argument(
            "--reject", action="store_true", help="Reject (and release the payment) it."
        )
        parser.add_argument("--note", default="", help="A note kept with the decision.")
        parser.add_argument("--user", required=True, help="The deciding user's username.")

    def handle(self, *args: Any, **options: Any) -> None:
        username: str = options["user"]
        user = user_get(username)
        order = order_for_command(order_id=options["order_id"], client_username=options["client"])
        approved = bool(options["approve"])
        try:
            review = review_decide(order=order, approved=approved, by=user, note=options["note"])
        except PermissionDenied:
            raise CommandError(f"user {username} may not decide fraud reviews") from None
        except ReviewError as exc:
            raise CommandError(str(exc)) from None
        self.stdout.write(
            f"order {order.order_id}: fraud review {review.state} by {username}"
            + (f" ({review.note})" if review.note else "")
            + f"; run {order.run_id} queued to resume"
        )
