from workflows.engine.services import run_cancel_requested
from workflows.management.run_command import RunStateCommand


class Command(RunStateCommand):
    help = (
        "Cancel a pending, running or suspended run and its open waits. A worker "
        "executing it stops at its next step commit."
    )
    operation = run_cancel_requested  # the workflow's own cancel, if it registered one
