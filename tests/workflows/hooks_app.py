"""A second application on the engine, not orders: it registers one hook of each kind for
the test workflows, from its `AppConfig.ready()` and nowhere else."""

from datetime import datetime
from typing import Any

from django.apps import AppConfig
from prometheus_client.core import GaugeMetricFamily

from workflows.engine.errors import RunStateError
from workflows.engine.services import run_cancel
from workflows.models import RunStatus, WorkflowRun

FORKS: list[tuple[Any, Any]] = []
SWEEPS: list[datetime] = []
UNLUCKY_STEPS = 13  # a test.counting run of this many steps may not be forked


def approval_link(wait: Any) -> str:
    return f"/approvals/{wait.pk}/"


def approval_facts(run: WorkflowRun) -> list[tuple[str, str, str | None]]:
    return [("Approver", "the release manager", "/people/rm/")]


def approval_cancel(run_id: Any, by: Any) -> None:
    if by is None:
        raise RunStateError("an approval is cancelled by a person, not a command")
    run_cancel(run_id)


def counting_follow_fork(*, origin: WorkflowRun, fork: WorkflowRun) -> None:
    if origin.input.get("steps") == UNLUCKY_STEPS:
        raise RunStateError(f"{UNLUCKY_STEPS} steps: this run may not be forked")
    FORKS.append((origin.pk, fork.pk))


def sweep_record(*, now: datetime) -> None:
    SWEEPS.append(now)


class ApprovalsCollector:
    def collect(self) -> Any:
        waiting = WorkflowRun.objects.filter(
            workflow_id="test.approval", status=RunStatus.SUSPENDED
        ).count()
        yield GaugeMetricFamily("test_approvals_waiting", "Approvals waiting.", value=waiting)


class ApprovalsConfig(AppConfig):
    name = "tests.workflows"
    label = "test_approvals"

    def ready(self) -> None:
        from workflows.engine import hooks

        hooks.register_wait_link("approval", approval_link)
        hooks.register_run_facts("test.approval", approval_facts)
        hooks.register_run_canceller("test.approval", approval_cancel)
        hooks.register_fork_hook(counting_follow_fork)
        hooks.register_wait_sweep_hook(sweep_record)
        hooks.register_metrics_collector(ApprovalsCollector())
        hooks.register_dependency_name("inventory", "the inventory service")
