"""Helpers for tests that watch a workflow run from outside while it executes."""

import threading
from collections.abc import Iterator
from contextlib import contextmanager

from django.db import connection

from workflows.engine.executor import run_execute
from workflows.models import WorkflowRun


def status_of(run: WorkflowRun) -> str:
    """The run's status as the database has it now."""
    return WorkflowRun.objects.values_list("status", flat=True).get(pk=run.pk)


@contextmanager
def executing_inline(run: WorkflowRun) -> Iterator[tuple[threading.Thread, list[str]]]:
    """`run_execute(run)` in a thread of its own, as an inline caller would run it, while
    the test watches; yields the thread and the list its outcome is appended to, and
    joins the thread on the way out."""
    outcome: list[str] = []

    def execute() -> None:
        try:
            outcome.append(run_execute(run.id))
        finally:
            connection.close()  # the thread's own connection

    segment = threading.Thread(target=execute)
    segment.start()
    try:
        yield segment, outcome
    finally:
        segment.join(timeout=30)
