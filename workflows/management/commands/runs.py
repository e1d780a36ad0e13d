import argparse
from datetime import datetime
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.utils import timezone

from workflows.models import RunStatus, WorkflowRun
from workflows.registry import workflows_all
from workflows.selectors import usage_cost, usage_total


def positive_int(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a whole number") from None
    if number < 1:
        raise argparse.ArgumentTypeError(f"{value} is not a positive number")
    return number


def duration_text(started: datetime | None, finished: datetime | None) -> str:
    """ "1.23 s", "350 ms", "running 4.0 s" (no end yet) or "—" (never started)."""
    if started is None:
        return "—"
    seconds = ((finished or timezone.now()) - started).total_seconds()
    text = f"{seconds * 1000:.0f} ms" if seconds < 1 else f"{seconds:.2f} s"
    return text if finished else f"{text}…"


def table(headers: list[str], rows: list[list[str]]) -> list[str]:
    widths = [max(len(str(cell)) for cell in column) for column in zip(headers, *rows, strict=True)]
    lines = [headers, ["-" * w for w in widths], *rows]
    return [
        "  ".join(str(c).ljust(w) for c, w in zip(line, widths, strict=True)).rstrip()
        for line in lines
    ]


class Command(BaseCommand):
    help = (
        "List workflow runs, newest first: id, workflow, status, created, duration, "
        "attempts and model tokens. Filter with --status and --workflow."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--status", help=f"Only runs in this status ({', '.join(RunStatus.values)})."
        )
        parser.add_argument("--workflow", help="Only runs of this workflow id.")
        parser.add_argument(
            "--limit", type=positive_int, default=20, help="How many runs (default 20)."
        )

    def handle(self, *args: Any, **options: Any) -> None:
        status, workflow_id = options["status"], options["workflow"]
        runs = WorkflowRun.objects.order_by("-created_at")
        if status is not None:
            if status not in RunStatus.values:
                raise CommandError(
                    f"Unknown status {status!r}; valid: {', '.join(RunStatus.values)}"
                )
            runs = runs.filter(status=status)
        if workflow_id is not None:
            known = [d.id for d in workflows_all()]
            runs = runs.filter(workflow_id=workflow_id)
            if workflow_id not in known and not runs.exists():
                raise CommandError(
                    f"Unknown workflow {workflow_id!r}; known: {', '.join(known) or 'none'}"
                )
        page = list(runs.defer("input", "output", "error_traceback")[: options["limit"]])
        if not page:
            self.stdout.write("No runs.")
            return
        rows = [
            [
                str(run.id),
                run.workflow_id,
                run.status,
                timezone.localtime(run.created_at).strftime("%Y-%m-%d %H:%M:%S"),
                duration_text(run.started_at, run.finished_at),
                str(run.attempts),
                str(usage_total(run.usage)),
                f"${cost}" if (cost := usage_cost(run.usage)) else "—",
            ]
            for run in page
        ]
        headers = ["id", "workflow", "status", "created", "duration", "attempts", "tokens", "cost"]
        self.stdout.write("\n".join(table(headers, rows)))
