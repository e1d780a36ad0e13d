"""Hooks: how an application built on the engine plugs its own behaviour in.

`workflows` knows nothing of the applications that start runs, so where one of them must
take part (link a wait to the page where it is decided, cancel its runs its own way,
follow a fork, ...) the engine asks the registry below. There is one kind of hook per
question, each with its own `register_*` function, and nothing registers itself on
import: an application registers explicitly, from its `AppConfig.ready()`, so that a
reader finds every hook of an application in one place.

A runnable example (a second application with its own workflow)::

    >>> from workflows.engine import hooks
    >>> def renewal_facts(run):
    ...     return [("Subscription", "S-1", None)]
    >>> def renewal_cancel(run_id, by):
    ...     pass  # release what the run holds, then call `workflows.run_cancel(run_id)`
    >>> def renewal_follow_fork(*, origin, fork):
    ...     pass  # move what is keyed by run to the fork (raise RunStateError to refuse)
    >>> def renewal_reminders(*, now):
    ...     return 0
    >>> def renewal_link(wait):
    ...     return f"/renewals/{wait.pk}/"
    >>> class RenewalsCollector:
    ...     def collect(self):
    ...         return []
    >>> scratch = hooks.Hooks()  # an application calls the module's functions instead
    >>> scratch.register_wait_link("renewal_approval", renewal_link)
    >>> scratch.register_run_facts("renewals.renew", renewal_facts)
    >>> scratch.register_run_canceller("renewals.renew", renewal_cancel)
    >>> scratch.register_fork_hook(renewal_follow_fork)
    >>> scratch.register_wait_sweep_hook(renewal_reminders)
    >>> scratch.register_metrics_collector(RenewalsCollector())
    >>> scratch.register_dependency_name("billing", "the billing service")
    >>> scratch.register_retention_veto("renewals.renew", lambda run_ids: [])
    >>> scratch.register_history_archiver("renewals.renew", lambda run_ids: None)
    >>> scratch.dependency_names["billing"]
    'the billing service'

In the application: `hooks.register_run_canceller("renewals.renew", renewal_cancel)`
and so on, inside `RenewalsConfig.ready()` (`orders/apps.py` is the real one).

Registering the same hook again is a no-op (so `ready()` may run twice); registering a
second, different hook for a key already taken raises `ImproperlyConfigured`: two
applications cannot both decide how one workflow's runs are cancelled.

What each hook is asked, and what happens when it fails:

- **wait link** (by wait key): `link(wait) -> url | None`, for the trace page's link
  to wherever a suspended run's wait is decided ("Open the fraud review"). One that
  raises is logged and skipped: the page never breaks because of it.
- **run facts** (by workflow id): `facts(run) -> [(label, text, url | None)]`, shown in
  the run page's summary (an order's status and payment status). Logged and skipped.
- **run canceller** (by workflow id): `cancel(run_id, by)` does an operator's cancel
  (admin action, `cancel_run`) for an application whose runs hold what the engine cannot
  undo (money): it cancels its own way, calling `run_cancel` itself, and raises
  `RunStateError` to refuse.
- **fork hook**: `hook(origin=run, fork=run)`, called for every fork inside the
  transaction that creates it (`run_fork`): an application that keys its records by run
  moves them to the fork there. One that raises (`RunStateError` with the reason)
  refuses the fork: nothing is created, and `run_fork`'s caller reports it.
- **wait sweep hook**: `hook(now=now)`, after every `waits_expire` sweep (once a minute,
  and `expire_waits`): an application's periodic work about open waits (reminders)
  without a schedule of its own. One that raises is logged and skipped, so that it can
  never stop waits from expiring.
- **metrics collector**: an object whose `collect()` yields Prometheus metrics read
  from the database at scrape time (`GET /metrics`); one that raises is reported as
  `workflows_metrics_collector_up{collector}=0` and the scrape still answers.
- **retention veto** (by workflow id): `veto(run_ids) -> run ids to keep`, asked with
  a whole batch of finished runs of that workflow that retention would prune
  (`engine.retention`), inside the batch's transaction: one query for the batch, so the
  engine's prune loop stays generic. One that raises keeps every run of the batch.
- **history archiver** (by workflow id): `archive(run_ids)`, inside the batch's
  transaction just before those runs' steps and waits are deleted, to copy onto the
  application's own records what must outlive the history. One that raises rolls the
  batch back: nothing is pruned.
- **dependency name** (by dependency id): what people call a dependency a run may wait
  for ("stripe" -> "Stripe"), in every message about it; an id not registered is shown
  as it is.
- **run search** (by name): `search(text) -> queryset of run ids`, ORed into the
  console's run search (an order id, a customer id finds that order's runs). One that
  raises is logged and skipped.
- **run group** (by key): `RunGroup(key, label, workflow_ids)`, runs kept apart from
  the others (background deliveries): the console's run list, `runs` and `ops_status`
  show them under their own tab, option or line, not mixed with the main runs.
- **dashboard panel** (by key): `panel(now=now) -> PanelData` drawn on the console's
  dashboard for users holding `panel.permission`. One that raises is shown as an error
  in its box; the page still answers.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any, Protocol, TypeVar
from uuid import UUID

from django.core.exceptions import ImproperlyConfigured

if TYPE_CHECKING:  # models import only once Django is set up; this module imports before
    from django.contrib.auth.base_user import AbstractBaseUser
    from django.db.models import QuerySet
    from prometheus_client.core import Metric

    from workflows.models import Wait, WorkflowRun

RunFact = tuple[str, str, str | None]
"""(label, text, url or None): one line of a run page's summary."""


class WaitLink(Protocol):
    def __call__(self, wait: Wait, /) -> str | None: ...


class RunFacts(Protocol):
    def __call__(self, run: WorkflowRun, /) -> list[RunFact]: ...


class RunCanceller(Protocol):
    def __call__(self, run_id: UUID | str, by: AbstractBaseUser | None, /) -> object: ...


class ForkHook(Protocol):
    def __call__(self, *, origin: WorkflowRun, fork: WorkflowRun) -> object: ...


class WaitSweepHook(Protocol):
    def __call__(self, *, now: datetime) -> object: ...


class RetentionVeto(Protocol):
    def __call__(self, run_ids: list[UUID], /) -> Iterable[UUID]: ...


class HistoryArchiver(Protocol):
    def __call__(self, run_ids: list[UUID], /) -> object: ...


class MetricsCollector(Protocol):
    def collect(self) -> Iterable[Metric]: ...


class RunSearch(Protocol):
    def __call__(self, text: str, /) -> QuerySet[Any]: ...


@dataclass(frozen=True)
class RunGroup:
    """Runs of `workflow_ids`, listed apart from the main runs as `label`."""

    key: str
    label: str
    workflow_ids: tuple[str, ...]


@dataclass(frozen=True)
class Series:
    """One named series of a chart: a value per bucket of its `PanelData`."""

    name: str
    values: tuple[float, ...]


@dataclass(frozen=True)
class PanelData:
    """What one dashboard panel shows: a chart of `series` over `buckets` (stacked bars
    or lines), headline `figures` (label, text), and an optional table."""

    buckets: tuple[datetime, ...] = ()
    series: tuple[Series, ...] = ()
    chart: str = "bars"  # "bars" (stacked) or "lines"
    unit: str = ""
    figures: tuple[tuple[str, str], ...] = ()
    headers: tuple[str, ...] = ()
    rows: tuple[tuple[tuple[str, str | None], ...], ...] = ()
    """Each cell (text, url or None)."""
    empty_text: str = "Nothing in this period."
    colors: tuple[tuple[str, str], ...] = ()
    levels: bool = False
    """The values are levels (a backlog, an age), not counts: the legend shows the
    latest, not a sum."""
    """(series name, CSS colour) where a colour means something (failed in red)."""


class PanelRead(Protocol):
    def __call__(self, *, now: datetime) -> PanelData: ...


@dataclass(frozen=True)
class DashboardPanel:
    """One box of the console's dashboard: `read(now=now)` gives what it shows, to users
    holding `permission` (on top of the console's own)."""

    key: str
    title: str
    permission: str
    read: PanelRead
    order: int = 100
    """Where it stands on the page, smallest first."""


_T = TypeVar("_T")


def _put(kind: str, registry: dict[str, _T], key: str, hook: _T) -> None:
    taken = registry.get(key)
    if taken is not None and taken != hook:
        raise ImproperlyConfigured(f"{kind} for {key!r} is already registered ({taken!r})")
    registry[key] = hook


def _append(hooks: list[_T], hook: _T) -> None:
    if hook not in hooks:
        hooks.append(hook)


@dataclass
class Hooks:
    """Every hook registered, by kind (the module's `registry` is the one in use)."""

    wait_links: dict[str, WaitLink] = field(default_factory=dict)
    run_facts: dict[str, RunFacts] = field(default_factory=dict)
    run_cancellers: dict[str, RunCanceller] = field(default_factory=dict)
    fork_hooks: list[ForkHook] = field(default_factory=list)
    wait_sweep_hooks: list[WaitSweepHook] = field(default_factory=list)
    metrics_collectors: list[MetricsCollector] = field(default_factory=list)
    dependency_names: dict[str, str] = field(default_factory=dict)
    retention_vetoes: dict[str, RetentionVeto] = field(default_factory=dict)
    history_archivers: dict[str, HistoryArchiver] = field(default_factory=dict)
    run_searches: dict[str, RunSearch] = field(default_factory=dict)
    run_groups: dict[str, RunGroup] = field(default_factory=dict)
    dashboard_panels: dict[str, DashboardPanel] = field(default_factory=dict)

    def register_wait_link(self, wait_key: str, link: WaitLink) -> None:
        _put("A wait link", self.wait_links, wait_key, link)

    def register_run_facts(self, workflow_id: str, facts: RunFacts) -> None:
        _put("Run facts", self.run_facts, workflow_id, facts)

    def register_run_canceller(self, workflow_id: str, canceller: RunCanceller) -> None:
        _put("A run canceller", self.run_cancellers, workflow_id, canceller)

    def register_fork_hook(self, hook: ForkHook) -> None:
        _append(self.fork_hooks, hook)

    def register_wait_sweep_hook(self, hook: WaitSweepHook) -> None:
        _append(self.wait_sweep_hooks, hook)

    def register_metrics_collector(self, collector: MetricsCollector) -> None:
        # By class: a fresh instance from a second `ready()` is the same collector.
        if all(type(c) is not type(collector) for c in self.metrics_collectors):
            self.metrics_collectors.append(collector)

    def register_dependency_name(self, dependency: str, name: str) -> None:
        _put("A dependency name", self.dependency_names, dependency, name)

    def register_retention_veto(self, workflow_id: str, veto: RetentionVeto) -> None:
        _put("A retention veto", self.retention_vetoes, workflow_id, veto)

    def register_history_archiver(self, workflow_id: str, archiver: HistoryArchiver) -> None:
        _put("A history archiver", self.history_archivers, workflow_id, archiver)

    def register_run_search(self, name: str, search: RunSearch) -> None:
        _put("A run search", self.run_searches, name, search)

    def register_run_group(self, group: RunGroup) -> None:
        _put("A run group", self.run_groups, group.key, group)

    def register_dashboard_panel(self, panel: DashboardPanel) -> None:
        _put("A dashboard panel", self.dashboard_panels, panel.key, panel)

    def copy(self) -> Hooks:
        """An independent copy (tests register into one and throw it away)."""
        return copy.deepcopy(self)


registry = Hooks()
"""The hooks in use; the functions below register into it."""


def register_wait_link(wait_key: str, link: WaitLink) -> None:
    registry.register_wait_link(wait_key, link)


def register_run_facts(workflow_id: str, facts: RunFacts) -> None:
    registry.register_run_facts(workflow_id, facts)


def register_run_canceller(workflow_id: str, canceller: RunCanceller) -> None:
    registry.register_run_canceller(workflow_id, canceller)


def register_fork_hook(hook: ForkHook) -> None:
    registry.register_fork_hook(hook)


def register_wait_sweep_hook(hook: WaitSweepHook) -> None:
    registry.register_wait_sweep_hook(hook)


def register_metrics_collector(collector: MetricsCollector) -> None:
    registry.register_metrics_collector(collector)


def register_dependency_name(dependency: str, name: str) -> None:
    registry.register_dependency_name(dependency, name)


def register_retention_veto(workflow_id: str, veto: RetentionVeto) -> None:
    registry.register_retention_veto(workflow_id, veto)


def register_history_archiver(workflow_id: str, archiver: HistoryArchiver) -> None:
    registry.register_history_archiver(workflow_id, archiver)


def register_run_search(name: str, search: RunSearch) -> None:
    registry.register_run_search(name, search)


def register_run_group(group: RunGroup) -> None:
    registry.register_run_group(group)


def register_dashboard_panel(panel: DashboardPanel) -> None:
    registry.register_dashboard_panel(panel)
