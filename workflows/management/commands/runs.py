import argparse
import json
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.utils import timezone

from workflows.console.presenters import run_duration_text
from workflows.engine.registry import workflows_all
from workflows.engine.selectors import (
    RUN_GROUP_ALL,
    RUN_GROUP_MAIN,
    run_group_choices,
    runs_list,
    usage_cost,
    usage_total,
)
from workflows.management.tables import table_write
from workflows.models import RunStatus, WorkflowRun

HEADERS = ["id", "workflow", "status", "created", "duration", "attempts", "tokens", "cost"]


def positive_int(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a whole number") from None
    if number < 1:
        raise argparse.ArgumentTypeError(f"{value} is not a positive number")
    return number


def run_json(run: WorkflowRun) -> dict[str, Any]:
    cost = usage_cost(run.usage)
    return {
        "id": str(run.id),
        "workflow": run.workflow_id,
        "status": run.status,
        "created_at": run.created_at.isoformat(),
        "started_at": run.started_at.isoformat() if run.started_at else None,
        "finished_at": run.finished_at.isoformat() if run.finished_at else None,
        "attempts": run.attempts,
        "tokens": usage_total(run.usage),
        "cost_usd": str(cost) if cost else None,
    }


def run_row(run: WorkflowRun) -> list[str]:
    cost = usage_cost(run.usage)
    return [
        str(run.id),
        run.workflow_id,
        run.status,
        timezone.localtime(run.created_at).strftime("%Y-%m-%d %H:%M:%S"),
        run_duration_text(run) + ("" if run.finished_at or not run.started_at else "…"),
        str(run.attempts),
        str(usage_total(run.usage)),
        f"${cost}" if cost else "—",
    ]


class Command(BaseCommand):
    help = (
        "List workflow runs, newest first: id, workflow, status, created, duration, "
        "attempts and model tokens. Filter with --status, --workflow and --group (runs an "
        "application keeps apart, such as webhook deliveries, are listed only with "
        "--group or --workflow); --json prints them as JSON."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--status", help=f"Only runs in this status ({', '.join(RunStatus.values)})."
        )
        parser.add_argument("--workflow", help="Only runs of this workflow id.")
        parser.add_argument(
            "--group",
            help=(
                "Which runs: the main runs (default), a group kept apart "
                f"({', '.join(k for k, _ in run_group_choices() if k) or 'none'}), "
                f"or {RUN_GROUP_ALL}."
            ),
        )
        parser.add_argument(
            "--limit", type=positive_int, default=20, help="How many runs (default 20)."
        )
        parser.add_argument("--json", action="store_true", help="Print the runs as JSON.")

    def handle(self, *args: Any, **options: Any) -> None:
        status, workflow_id = options["status"], options["workflow"]
        if status is not None and status not in RunStatus.values:
            raise CommandError(f"Unknown status {status!r}; valid: {', '.join(RunStatus.values)}")
        groups = dict(run_group_choices())
        group = options["group"] if options["group"] is not None else RUN_GROUP_MAIN
        if group not in groups:
            valid = ", ".join(k for k in groups if k)
            raise CommandError(f"Unknown group {group!r}; valid: {valid}")
        runs = runs_list(status=status or "", workflow_id=workflow_id or "", group=group)
        if workflow_id is not None:
            known = [d.id for d in workflows_all()]
            if workflow_id not in known and not runs.exists():
                raise CommandError(
                    f"Unknown workflow {workflow_id!r}; known: {', '.join(known) or 'none'}"
                )
        page = list(runs.defer("input", "output", "error_traceback")[: options["limit"]])
        if options["json"]:
            self.stdout.write(json.dumps([run_json(run) for run in page], indent=2))
            return
        if not page:
            self.stdout.write("No runs.")
            return
        table_write(self.stdout, HEADERS, [run_row(run) for run in page], right={5, 6, 7})
