"""What `cancel_run` and `retry_run` share: one run id in, one state change, one line out."""

import uuid
from collections.abc import Callable
from typing import Any, ClassVar

from django.core.management.base import BaseCommand, CommandError, CommandParser

from workflows.engine.errors import RunStateError
from workflows.models import WorkflowRun


class RunStateCommand(BaseCommand):
    """Subclasses set `help`, `operation` (a service taking the run id) and `outcome`."""

    operation: ClassVar[Callable[[uuid.UUID], WorkflowRun]]
    outcome = ""

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("run_id", help="The run's id (a UUID).")

    def handle(self, *args: Any, **options: Any) -> None:
        value = options["run_id"]
        try:
            run_id = uuid.UUID(value)
        except ValueError:
            raise CommandError(f"{value!r} is not a run id (a UUID)") from None
        try:
            run = type(self).operation(run_id)
        except WorkflowRun.DoesNotExist:
            raise CommandError(f"No run {value}") from None
        except RunStateError as exc:
            raise CommandError(str(exc)) from None
        self.stdout.write(f"run {run.id} ({run.workflow_id}) is now {run.status}{self.outcome}")
