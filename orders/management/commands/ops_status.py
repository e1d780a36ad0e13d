from django.core.management.base import BaseCommand
from django.utils.timesince import timesince

from orders.selectors import ops_overview


class Command(BaseCommand):
    help = "Show queue depth, runs by status and the oldest pending fraud review."

    def handle(self, *args: object, **options: object) -> None:
        overview = ops_overview()
        self.stdout.write(f"queue ({overview.queue}): {overview.queued_tasks} task(s) waiting")
        self.stdout.write(
            "runs: " + ", ".join(f"{s} {n}" for s, n in overview.runs_by_status.items())
        )
        self.stdout.write(
            f"model calls: {overview.model_tokens} tokens, ${overview.model_cost_usd} "
            "(all runs; unpriced models count as $0)"
        )
        if overview.confirmations_in_doubt:
            self.stdout.write(
                "confirmations in doubt (see `resolve_confirmation`): "
                + ", ".join(overview.confirmations_in_doubt)
            )
        if overview.reviewer_emails_in_doubt:
            self.stdout.write(
                "reviewer emails in doubt (not sent again; check the mail log): "
                + ", ".join(overview.reviewer_emails_in_doubt)
            )
        oldest = overview.oldest_pending_review
        if oldest is None:
            self.stdout.write("fraud reviews: none pending")
            return
        self.stdout.write(
            f"fraud reviews: {overview.pending_reviews} pending; oldest is order "
            f"{oldest.data.get('order_id')}, waiting {timesince(oldest.created_at)}, "
            f"{oldest.time_left_text()} left"
        )
