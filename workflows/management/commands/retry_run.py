from workflows.management.run_command import RunStateCommand
from workflows.services import run_retry


class Command(RunStateCommand):
    help = (
        "Re-run a failed run from its last completed step: completed steps are kept (and "
        "not run again), the failed step runs anew. A qcluster worker picks it up."
    )
    operation = run_retry
    outcome = "; queued to continue from its last completed step"
