from workflows.engine.services import run_retry
from workflows.management.run_command import RunStateCommand


class Command(RunStateCommand):
    help = (
        "Re-run a failed run from its last completed step: completed steps are kept (and "
        "not run again), the failed step runs anew. A qcluster worker picks it up."
    )
    operation = run_retry
    outcome = "; queued to continue from its last completed step"
