import argparse
import re
from datetime import UTC, datetime, timedelta
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.utils import timezone
from django.utils.dateparse import parse_datetime

from workflows.engine.errors import UnknownWorkflowError
from workflows.engine.services import runs_retry_failed
from workflows.management.tables import table_write
from workflows.models import RunStatus, WorkflowRun

HEADERS = ["id", "workflow", "failed", "error"]
ERROR_WIDTH = 90
_DURATION = re.compile(r"^(\d+)\s*([smhd])$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}


def moment(value: str) -> datetime:
    """`90s`, `30m`, `1h`, `2d` ago, or an ISO date-time (UTC unless it says)."""
    match = _DURATION.match(value.strip().lower())
    if match:
        return timezone.now() - timedelta(**{_UNITS[match[2]]: int(match[1])})
    parsed = parse_datetime(value.strip())
    if parsed is None:
        raise argparse.ArgumentTypeError(
            f"{value!r} is neither a duration (90s, 30m, 1h, 2d) nor a date-time "
            "(2026-12-06T14:00:00)"
        )
    return parsed if timezone.is_aware(parsed) else timezone.make_aware(parsed, UTC)


def run_row(run: WorkflowRun) -> list[str]:
    finished = run.finished_at or run.updated_at
    error = " ".join(run.error.split())
    return [
        str(run.id),
        run.workflow_id,
        timezone.localtime(finished).strftime("%Y-%m-%d %H:%M:%S"),
        error if len(error) <= ERROR_WIDTH else error[: ERROR_WIDTH - 1] + "…",
    ]


class Command(BaseCommand):
    help = (
        "Retry failed runs in bulk, each from its last completed step (as retry_run does): "
        "those of a workflow, whose error contains a text, that failed within a time range. "
        "For after an outage that outlasted the retry horizon: "
        "retry_runs --status failed --error-contains SMTP --since 1h. "
        "--dry-run lists them and changes nothing."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--status",
            choices=[RunStatus.FAILED.value],
            default=RunStatus.FAILED.value,
            help="Runs in this status (only failed runs can be retried).",
        )
        parser.add_argument("--workflow", help="Only runs of this workflow id.")
        parser.add_argument(
            "--error-contains", help="Only runs whose error contains this text (any case)."
        )
        parser.add_argument(
            "--since",
            type=moment,
            help="Only runs that failed since then: 90s, 30m, 1h, 2d ago, or a date-time.",
        )
        parser.add_argument(
            "--until", type=moment, help="Only runs that failed until then (same forms)."
        )
        parser.add_argument(
            "--dry-run", action="store_true", help="List the runs it would retry; change nothing."
        )

    def handle(self, *args: Any, **options: Any) -> None:
        error_contains = options["error_contains"]
        if error_contains is not None and not error_contains.strip():
            raise CommandError("--error-contains needs a text")
        if not (options["workflow"] or error_contains or options["since"] or options["until"]):
            raise CommandError(
                "Name the runs: at least one of --workflow, --error-contains, --since, --until"
            )
        since, until = options["since"], options["until"]
        if since is not None and until is not None and since > until:
            raise CommandError("--since is after --until: the time range is empty")
        try:
            result = runs_retry_failed(
                workflow_id=options["workflow"],
                error_contains=error_contains,
                since=since,
                until=until,
                dry_run=options["dry_run"],
            )
        except UnknownWorkflowError as exc:
            raise CommandError(str(exc)) from None
        if not result.selected:
            self.stdout.write("No failed run matches.")
            return
        table_write(self.stdout, HEADERS, [run_row(run) for run in result.selected])
        if result.dry_run:
            self.stdout.write(f"Would retry {len(result.selected)} run(s) (dry run: nothing done).")
            return
        for reason in result.refused:
            self.stderr.write(reason)
        self.stdout.write(
            f"Queued again {len(result.retried)} run(s); qcluster workers continue each from "
            "its last completed step."
        )
