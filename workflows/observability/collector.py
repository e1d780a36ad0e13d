"""Database-backed metrics, read at scrape time, and the registry a scrape reads.

**Database-backed** values are read when scraped, by collectors (`WorkflowsCollector`
here; the domain's registered in `hooks`), one bounded query each. They describe
the cluster, not a process, so no process could count them (runs are created in web
processes and finished in workers, and a restart would lose a process's count):

- `workflows_runs{workflow,status}`: one `GROUP BY workflow_id, status` over the runs
  (as many rows as workflows x statuses; a scan of the runs table, so keep the scrape
  interval at 15 s or more).
- `workflows_queue_depth`: `workflows.engine.queue.queue_depth()` (the broker's own count).
- `workflows_circuit_state{dependency,state}`: 1 for each dependency's circuit state
  (closed, open, half_open), 0 for the others; `workflows_circuit_consecutive_failures
  {dependency}`; `workflows_runs_waiting_for_dependency{dependency}`: runs parked
  until their step's next attempt (the circuits table, and one `GROUP BY` over the
  open waits).
- `workflows_metrics_collector_up{collector}`: 1, or 0 when that collector's query
  failed (logged; the scrape still answers with everything else).

Every web process reports the same database values; with several hosts scraped, take
them from one (`max by (...)`).
"""

import logging
import os
from collections.abc import Iterable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client import multiprocess as prometheus_multiprocess
from prometheus_client.core import GaugeMetricFamily, Metric

from workflows.engine import hooks

logger = logging.getLogger(__name__)


class WorkflowsCollector:
    """The engine's database-backed metrics, read at scrape time (one query each)."""

    def collect(self) -> Iterator[Metric]:
        from django.db.models import Count

        from workflows.engine.queue import queue_depth
        from workflows.engine.registry import workflows_all
        from workflows.models import RunStatus, WorkflowRun

        runs = GaugeMetricFamily(
            "workflows_runs",
            "Runs by workflow and status (database).",
            labels=["workflow", "status"],
        )
        counts = {(d.id, s.value): 0 for d in workflows_all() for s in RunStatus}
        rows = (
            WorkflowRun.objects.order_by()
            .values_list("workflow_id", "status")
            .annotate(n=Count("pk"))
        )
        for workflow_id, status, n in rows:
            counts[(workflow_id, status)] = n
        for (workflow_id, status), n in sorted(counts.items()):
            runs.add_metric([workflow_id, status], n)
        yield runs
        yield GaugeMetricFamily(
            "workflows_queue_depth",
            "Tasks waiting in the queue for a worker (the broker's count).",
            value=queue_depth(),
        )
        yield from self._dependencies()

    def _dependencies(self) -> Iterator[Metric]:
        from workflows.engine.selectors import runs_waiting_by_dependency
        from workflows.models import Circuit, CircuitState

        states = GaugeMetricFamily(
            "workflows_circuit_state",
            "Each dependency's circuit: 1 for its state, 0 for the others (database).",
            labels=["dependency", "state"],
        )
        failures = GaugeMetricFamily(
            "workflows_circuit_consecutive_failures",
            "Transient failures in a row of each dependency, across runs (database).",
            labels=["dependency"],
        )
        for circuit in Circuit.objects.order_by("dependency"):
            for state in CircuitState:
                states.add_metric([circuit.dependency, state.value], circuit.state == state)
            failures.add_metric([circuit.dependency], circuit.consecutive_failures)
        waiting = GaugeMetricFamily(
            "workflows_runs_waiting_for_dependency",
            "Runs parked until their step's next attempt at a dependency (database).",
            labels=["dependency"],
        )
        for dependency, count in sorted(runs_waiting_by_dependency().items()):
            waiting.add_metric([dependency], count)
        yield states
        yield failures
        yield waiting


class _Guarded:
    """Runs a database collector; a failure is logged and reported as
    `workflows_metrics_collector_up{collector}=0`, and the scrape still answers."""

    def __init__(self, collectors: Iterable[Any]) -> None:
        self.collectors = list(collectors)

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily(
            "workflows_metrics_collector_up",
            "Whether a database-backed collector answered this scrape.",
            labels=["collector"],
        )
        for collector in self.collectors:
            name = type(collector).__name__
            try:
                metrics = list(collector.collect())
            except Exception:
                logger.exception("metrics collector %s failed", name)
                up.add_metric([name], 0)
                continue
            up.add_metric([name], 1)
            yield from metrics
        yield up


class _ProcessRegistry:
    """Outside multiprocess mode: this process's own metrics."""

    def collect(self) -> Iterator[Metric]:
        from prometheus_client import REGISTRY

        yield from REGISTRY.collect()


def _sweep_dead_processes(path: str) -> None:
    """Drop the live gauges of worker processes that died without being marked dead
    (killed with SIGKILL). The directory is this host's: pids are this host's."""
    for name in os.listdir(path):
        if not name.startswith("gauge_live") or not name.endswith(".db"):
            continue
        try:
            pid = int(name[:-3].rsplit("_", 1)[1])
        except (IndexError, ValueError):
            continue
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            prometheus_multiprocess.mark_process_dead(pid, path)
        except PermissionError:
            pass


def metrics_registry() -> CollectorRegistry:
    """Every process's metrics of this host, and the database-backed ones."""
    registry = CollectorRegistry()
    path = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if path and os.path.isdir(path):
        _sweep_dead_processes(path)
        prometheus_multiprocess.MultiProcessCollector(registry, path=path)
    else:
        registry.register(_ProcessRegistry())
    registry.register(_Guarded([WorkflowsCollector(), *hooks.registry.metrics_collectors]))
    return registry
