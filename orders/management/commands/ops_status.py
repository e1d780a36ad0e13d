from datetime import UTC, datetime

from django.core.management.base import BaseCommand
from django.utils.timesince import timesince

from orders.ops_selectors import ops_overview
from workflows.console.presenters import waiting_for_text
from workflows.engine.selectors import DependencyStatus, dependencies_troubled, runs_waiting_longest


def _clock(moment: datetime | None) -> str:
    return f"{moment.astimezone(UTC):%H:%M:%S} UTC" if moment else "?"


def dependency_line(status: DependencyStatus) -> str:
    """`waiting for Stripe: 40 run(s); circuit open since 14:00:02 UTC, next probe at
    14:02:10 UTC; last error: ...`"""
    line = f"waiting for {status.name}: {status.waiting_runs} run(s)"
    if status.state == "open":
        line += (
            f"; circuit open since {_clock(status.opened_at)}, next probe at "
            f"{_clock(status.probe_at)}"
        )
    elif status.state == "half_open":
        line += f"; circuit open since {_clock(status.opened_at)}, probing now"
    if status.last_error and status.state != "closed":
        line += f"; last error: {status.last_error}"
    return line


class Command(BaseCommand):
    help = (
        "Show queue depth, runs by status, the dependencies runs wait for (with their "
        "circuits) and the oldest pending fraud review."
    )

    def handle(self, *args: object, **options: object) -> None:
        overview = ops_overview()
        self.stdout.write(f"queue ({overview.queue}): {overview.queued_tasks} task(s) waiting")
        self.stdout.write(
            "runs: " + ", ".join(f"{s} {n}" for s, n in overview.runs_by_status.items())
        )
        for label, counts in overview.runs_apart.items():  # webhook deliveries
            self.stdout.write(f"{label} runs: " + ", ".join(f"{s} {n}" for s, n in counts.items()))
        self.stdout.write(
            f"model calls: {overview.model_tokens} tokens, ${overview.model_cost_usd} "
            "(all runs; unpriced models count as $0)"
        )
        for status in dependencies_troubled():
            self.stdout.write(dependency_line(status))
        for run_id, waiting in runs_waiting_longest():
            self.stdout.write(f"  run {run_id}: {waiting_for_text(waiting)}")
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
