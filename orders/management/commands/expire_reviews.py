from typing import Any

from django.core.management.base import BaseCommand

from orders.models import FRAUD_REVIEW_KEY, ORDER_WORKFLOW_ID
from workflows.engine.services import waits_expire


class Command(BaseCommand):
    help = (
        "Time out every wait past its deadline (fraud reviews included: those orders are "
        "released and rejected with review_timeout). Also runs every minute as a "
        "django-q2 schedule; this runs the sweep now."
    )

    def handle(self, *args: Any, **options: Any) -> None:
        expired = waits_expire()
        reviews = [
            str(wait.data.get("order_id", "?"))
            for wait in expired
            if wait.key == FRAUD_REVIEW_KEY and wait.run.workflow_id == ORDER_WORKFLOW_ID
        ]
        self.stdout.write(f"expired {len(expired)} wait(s), {len(reviews)} of them fraud review(s)")
        for order_id in reviews:
            self.stdout.write(f"  order {order_id}: review timed out; its payment will be released")
