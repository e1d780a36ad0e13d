import argparse
import re
from datetime import timedelta
from pathlib import Path
from typing import Any, TextIO

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.utils import timezone

from workflows.engine.registry import workflows_all
from workflows.engine.retention import (
    PruneReport,
    RetentionPolicy,
    retention_policy_configured,
    runs_prune,
)
from workflows.management.tables import table_write
from workflows.models import WorkflowRun

_DURATION = re.compile(r"^(\d+)\s*([mhdw])$")
_UNITS = {"m": "minutes", "h": "hours", "d": "days", "w": "weeks"}
SHOWN = 20  # runs listed; the counts cover all of them


def duration(value: str) -> timedelta:
    """`90m`, `12h`, `30d`, `4w`."""
    match = _DURATION.match(value.strip().lower())
    if match is None or int(match[1]) == 0:
        raise argparse.ArgumentTypeError(
            f"{value!r} is not a duration above 0 such as 90m, 12h, 30d or 4w"
        )
    return timedelta(**{_UNITS[match[2]]: int(match[1])})


class Command(BaseCommand):
    help = (
        "Delete the history (steps and waits) of finished runs, keeping each run's row as "
        "a tombstone that says its history was pruned: those finished before --older-than, "
        "or by default those the retention settings let go (WORKFLOWS_RETENTION_HOURS and "
        "_ROWS). Never an active run, nor one its application keeps (an unsettled order, an "
        "open dispute). Prints what it would delete (--dry-run) or what it deleted; "
        "--export writes each run's history as a JSON line first."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--older-than",
            type=duration,
            help="Prune runs that finished longer ago than this (90m, 12h, 30d, 4w) "
            "instead of the configured thresholds.",
        )
        parser.add_argument("--workflow", help="Only runs of this workflow id.")
        parser.add_argument(
            "--dry-run", action="store_true", help="Only say what would be deleted."
        )
        parser.add_argument(
            "--export",
            metavar="FILE.jsonl",
            help="Write each pruned run's history (run, steps, waits) to this new file "
            "first, one JSON object per line.",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        workflow_id = options["workflow"]
        if workflow_id and workflow_id not in {d.id for d in workflows_all()}:
            raise CommandError(f"No workflow {workflow_id!r} is registered")
        if options["older_than"] is not None:
            policy = RetentionPolicy(older_than=options["older_than"], workflow_id=workflow_id)
        else:
            configured = retention_policy_configured()
            policy = RetentionPolicy(
                older_than=configured.older_than,
                keep_rows=configured.keep_rows,
                workflow_id=workflow_id,
            )
            if not policy.prunes_anything:
                raise CommandError(
                    "Retention is off (WORKFLOWS_RETENTION_HOURS=0 and WORKFLOWS_RETENTION_ROWS=0):"
                    " give --older-than"
                )
        export_path = options["export"]
        if export_path and options["dry_run"]:
            raise CommandError("--export writes what is deleted: it cannot go with --dry-run")
        if export_path:
            try:
                with Path(export_path).open("x", encoding="utf-8") as out:
                    report = self.prune(policy, options["dry_run"], out)
            except FileExistsError:
                raise CommandError(f"{export_path} exists; choose a new file") from None
            except OSError as exc:
                raise CommandError(f"Cannot write {export_path}: {exc.strerror}") from None
        else:
            report = self.prune(policy, options["dry_run"], None)
        self.summary(report, export_path)

    def prune(self, policy: RetentionPolicy, dry_run: bool, out: TextIO | None) -> PruneReport:
        # By hand, the whole backlog in one go: no time budget.
        return runs_prune(policy=policy, dry_run=dry_run, export=out, time_budget=float("inf"))

    def summary(self, report: PruneReport, export_path: str | None) -> None:
        shown = WorkflowRun.objects.filter(pk__in=report.pruned[:SHOWN]).order_by("finished_at")
        rows = [
            [
                str(run.id),
                run.workflow_id,
                run.status,
                timezone.localtime(run.finished_at).strftime("%Y-%m-%d %H:%M:%S")
                if run.finished_at
                else "",
            ]
            for run in shown
        ]
        if rows:
            table_write(self.stdout, ["run", "workflow", "status", "finished"], rows)
            if len(report.pruned) > SHOWN:
                self.stdout.write(f"… and {len(report.pruned) - SHOWN} more")
        kept = f"; {len(report.kept)} kept by their application" if report.kept else ""
        if report.dry_run:
            self.stdout.write(f"Would prune the history of {len(report.pruned)} run(s){kept}.")
            return
        self.stdout.write(
            f"Pruned the history of {len(report.pruned)} run(s): {report.steps_deleted} "
            f"step(s) and {report.waits_deleted} wait(s) deleted{kept}."
        )
        if export_path:
            self.stdout.write(f"History written to {export_path} first.")
