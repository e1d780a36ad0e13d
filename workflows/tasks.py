"""django-q2 entry points. Thin: each calls one engine function."""

from django.db import close_old_connections

from .executor import run_execute
from .services import runs_reap, waits_expire


def run_execute_task(run_id: str) -> str:
    close_old_connections()
    return run_execute(run_id)


def runs_reap_task() -> int:
    return len(runs_reap())


def waits_expire_task() -> int:
    return len(waits_expire())
