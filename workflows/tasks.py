"""django-q2 entry points (the worker layer). Thin: each calls one engine function.

This module stays at `workflows.tasks`, outside `workflows/worker/`, because queued
tasks (`queue.EXECUTE_TASK`) and the schedules migration 0002 stored in the database
name these functions by that dotted path; moving it would orphan them."""

from django.conf import settings
from django.db import close_old_connections

from workflows.engine.executor import run_execute
from workflows.engine.queue import run_enqueue
from workflows.engine.retention import runs_prune_configured
from workflows.engine.services import runs_reap, waits_expire
from workflows.worker.runtime import worker_runtime


def run_execute_task(run_id: str) -> str:
    """Execute a run's next segment: handed to this worker's runtime (many in flight
    at once), or inline where there is none (synchronous mode)."""
    runtime = worker_runtime()
    if runtime is None:
        close_old_connections()
        return run_execute(run_id).value  # a plain str in django-q2's task results
    if runtime.submit(run_id, wait_seconds=settings.WORKFLOWS_SLOT_WAIT_SECONDS):
        return "accepted"
    # Stopping, or every slot stayed busy: back on the queue for another worker.
    run_enqueue(run_id)
    return "requeued"


def runs_reap_task() -> int:
    return len(runs_reap())


def waits_expire_task() -> int:
    return len(waits_expire())


def runs_prune_task() -> int:
    return len(runs_prune_configured().pruned)
