"""Signals of the engine, for the applications built on it.

`run_forked(sender=WorkflowRun, origin=..., fork=...)` is sent inside the transaction
that creates a fork (`run_fork`): an application that keys its records by run moves them
to the fork there, so the fork continues with them. A receiver refuses the fork by
raising `RunStateError` with the reason: nothing is created, and `run_fork`'s caller
(the `fork_run` command, the admin action) reports it.
"""

from django.dispatch import Signal

run_forked = Signal()
