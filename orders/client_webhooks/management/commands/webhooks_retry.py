from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from orders.client_webhooks.models import WebhookDelivery
from orders.client_webhooks.selectors import webhook_deliveries_failed
from orders.client_webhooks.services import WebhookRetryError, webhook_delivery_retry


class Command(BaseCommand):
    help = (
        "Deliver webhook deliveries again, from a fresh retry schedule and with the same "
        "event id: the ones named, or every failed one with --failed. Deliveries already "
        "delivered, still in flight, or whose endpoint is disabled are refused."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("delivery_ids", nargs="*", type=int, metavar="DELIVERY_ID")
        parser.add_argument("--failed", action="store_true", help="Every failed delivery.")

    def handle(self, *args: Any, **options: Any) -> None:
        ids = options["delivery_ids"]
        if bool(ids) == options["failed"]:
            raise CommandError("Name deliveries, or give --failed (not both).")
        if options["failed"]:
            deliveries = list(webhook_deliveries_failed())
        else:
            deliveries = list(WebhookDelivery.objects.filter(pk__in=ids))
            missing = set(ids) - {d.pk for d in deliveries}
            if missing:
                raise CommandError(f"No delivery {', '.join(map(str, sorted(missing)))}")
        refused = []
        for delivery in deliveries:
            try:
                webhook_delivery_retry(delivery=delivery)
            except WebhookRetryError as exc:
                refused.append(str(exc))
                self.stderr.write(str(exc))
                continue
            self.stdout.write(f"delivery {delivery.pk} ({delivery.event_type}): retrying")
        self.stdout.write(f"{len(deliveries) - len(refused)} retried, {len(refused)} refused")
        if refused and not options["failed"]:
            raise CommandError(" ".join(refused))
