import json
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from workflows.engine.registry import workflows_all
from workflows.engine.replay import runs_replay_check
from workflows.management.tables import table_write
from workflows.models import ACTIVE_RUN_STATUSES, RunStatus


class Command(BaseCommand):
    help = (
        "Replay the recorded history of every live run (pending, running, suspended) "
        "against the code as deployed, running no step and writing nothing, and report each "
        "run that would fail with a non-determinism error. Exits 1 when any would: run it "
        "in the deploy pipeline before switching over."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--workflow", help="Only runs of this workflow id.")
        parser.add_argument(
            "--status",
            action="append",
            choices=[s.value for s in RunStatus],
            help="Only runs in this status (repeatable; default: pending, running, suspended).",
        )
        parser.add_argument(
            "--include-failed",
            action="store_true",
            help="Also failed runs (they can be retried, so they must replay too).",
        )
        parser.add_argument("--json", action="store_true", help="One JSON document.")

    def handle(self, *args: Any, **options: Any) -> None:
        workflow_id = options["workflow"]
        if workflow_id and workflow_id not in {d.id for d in workflows_all()}:
            raise CommandError(f"No workflow {workflow_id!r} is registered")
        statuses = list(options["status"] or ACTIVE_RUN_STATUSES)
        if options["include_failed"]:
            statuses.append(RunStatus.FAILED)
        results = list(runs_replay_check(workflow_id=workflow_id, statuses=statuses))
        diverging = [r for r in results if not r.ok]
        if options["json"]:
            self.stdout.write(
                json.dumps(
                    {
                        "replayed": len(results),
                        "diverging": [r.as_dict() for r in diverging],
                    },
                    indent=2,
                )
            )
        else:
            if diverging:
                rows = [
                    [
                        str(r.run_id),
                        r.workflow_id,
                        r.status,
                        "" if r.position is None else str(r.position),
                        r.expected or "—",
                        r.found or "—",
                        "" if r.position is not None else r.error,
                    ]
                    for r in diverging
                ]
                headers = [
                    "run",
                    "workflow",
                    "status",
                    "position",
                    "recorded",
                    "code asks",
                    "error",
                ]
                table_write(self.stdout, headers, rows, right=[3])
            self.stdout.write(
                f"{len(results)} run(s) replayed; {len(diverging)} would diverge"
                + (
                    ""
                    if not diverging
                    else ": deploy the old code, or guard the change with ctx.patched()"
                )
            )
        if diverging:
            raise SystemExit(1)
