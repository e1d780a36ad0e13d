import uuid
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from workflows.engine.errors import RunStateError
from workflows.engine.services import run_fork
from workflows.models import WorkflowRun


class Command(BaseCommand):
    help = (
        "Start a new run of a finished or cancelled run's workflow and input that continues "
        "from step KEY under the code deployed now. The steps completed before KEY are "
        "copied, not run again (a charge is not repeated). For a run that failed on a bug "
        "once the fix is deployed. The workflow's application may refuse, saying why."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("run_id", help="The run's id (a UUID).")
        parser.add_argument(
            "--from-step", required=True, metavar="KEY", help="The first step to run again."
        )

    def handle(self, *args: Any, **options: Any) -> None:
        value = options["run_id"]
        try:
            run_id = uuid.UUID(value)
        except ValueError:
            raise CommandError(f"{value!r} is not a run id (a UUID)") from None
        try:
            fork = run_fork(run_id, from_step=options["from_step"])
        except WorkflowRun.DoesNotExist:
            raise CommandError(f"No run {value}") from None
        except RunStateError as exc:
            raise CommandError(str(exc)) from None
        self.stdout.write(
            f"run {fork.id} ({fork.workflow_id}) forked from {run_id} at step "
            f"{fork.forked_at_step!r}; queued"
        )
