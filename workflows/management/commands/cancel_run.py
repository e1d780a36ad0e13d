from workflows.management.run_command import RunStateCommand
from workflows.services import run_cancel


class Command(RunStateCommand):
    help = (
        "Cancel a pending, running or suspended run and its open waits. A worker "
        "executing it stops at its next step commit."
    )
    operation = run_cancel
