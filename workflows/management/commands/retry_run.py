import uuid
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from workflows.errors import RunStateError
from workflows.models import WorkflowRun
from workflows.services import run_retry


class Command(BaseCommand):
    help = (
        "Re-run a failed run from its last completed step: completed steps are kept (and "
        "not run again), the failed step runs anew. A qcluster worker picks it up."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("run_id", help="The failed run's id (a UUID).")

    def handle(self, *args: Any, **options: Any) -> None:
        value = options["run_id"]
        try:
            run_id = uuid.UUID(value)
        except ValueError:
            raise CommandError(f"{value!r} is not a run id (a UUID)") from None
        try:
            run = run_retry(run_id)
        except WorkflowRun.DoesNotExist:
            raise CommandError(f"No run {value}") from None
        except RunStateError as exc:
            raise CommandError(str(exc)) from None
        self.stdout.write(
            f"run {run.id} ({run.workflow_id}) is now {run.status}; queued to continue "
            "from its last completed step"
        )
