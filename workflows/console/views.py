"""The staff console: runs, a run's trace, the registered workflows and agents, and a
form to start a run. Views stay thin: reads live in `selectors`, writes in `services`,
and presentation in `console` (text, the trace) and `console_schema` (model tables).

What the pages show about an application's runs (a run's facts, a link to wherever its
wait is decided) comes from its hooks (`hooks`).
"""

import functools
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from typing import Any
from uuid import UUID

from django.contrib.admin.views.decorators import staff_member_required
from django.core.exceptions import PermissionDenied
from django.core.paginator import Paginator
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils import timezone
from django.views.decorators.http import require_http_methods

from workflows.agents import agents_all
from workflows.console.dashboard import dashboard_shown
from workflows.console.forms import WorkflowStartForm
from workflows.console.presenters import (
    RunTrace,
    ago_text,
    pretty_json,
    run_duration_text,
    run_trace,
    waiting_for_text,
)
from workflows.console.schema import schema_example, schema_fields
from workflows.engine import hooks
from workflows.engine.dashboard import VIEW_RUNS_PERMISSION as VIEW_RUNS_PERMISSION
from workflows.engine.errors import PayloadError, RunNotFoundError, UnknownWorkflowError
from workflows.engine.hooks import RunFact
from workflows.engine.registry import WorkflowDefinition, workflow_get, workflows_all
from workflows.engine.selectors import (
    RUN_GROUP_MAIN,
    run_group_choices,
    run_status_counts,
    run_workflow_ids,
    runs_list,
    usage_cost,
    usage_total,
    waiting_for_of,
)
from workflows.engine.services import workflow_start
from workflows.models import EXECUTING_RUN_STATUSES, RunStatus, Wait, WorkflowRun

logger = logging.getLogger(__name__)

RUNS_PER_PAGE = 50
# VIEW_RUNS_PERMISSION (`engine.dashboard`): every console page needs it: runs' traces
# hold customers' data, amounts and model messages, which staff status alone must not show.
START_RUN_PERMISSION = "workflows.start_run"
"""Starting a run sends a payload to a workflow's side effects: staff status is not enough."""
STATUS_FILTERS = ["all", *(s.value for s in RunStatus)]


def console_page(view: Callable[..., HttpResponse]) -> Callable[..., HttpResponse]:
    """A console page: staff only (others go to the admin's login), and 403 without
    `VIEW_RUNS_PERMISSION`, fragments and searches included."""

    @functools.wraps(view)
    def guarded(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        if not request.user.has_perm(VIEW_RUNS_PERMISSION):
            raise PermissionDenied(f"The console needs the {VIEW_RUNS_PERMISSION} permission.")
        return view(request, *args, **kwargs)

    return staff_member_required(guarded)


def _is_fragment(request: HttpRequest) -> bool:
    return request.GET.get("fragment") == "1"


# --- runs ------------------------------------------------------------------------------


@dataclass
class RunRow:
    run: WorkflowRun

    @property
    def short_id(self) -> str:
        return str(self.run.id)[:8]

    @property
    def duration(self) -> str:
        return run_duration_text(self.run)

    @property
    def unfinished(self) -> bool:
        return self.run.finished_at is None

    @property
    def created_ago(self) -> str:
        return ago_text(self.run.created_at)

    @property
    def tokens(self) -> int:
        return usage_total(self.run.usage)

    @property
    def cost(self) -> Decimal | None:
        return usage_cost(self.run.usage)


@console_page
def run_list(request: HttpRequest) -> HttpResponse:
    status = request.GET.get("status", "")
    status = status if status in STATUS_FILTERS and status != "all" else ""
    workflow_id = request.GET.get("workflow", "").strip()
    search = request.GET.get("q", "").strip()
    groups = run_group_choices()
    group = request.GET.get("group", RUN_GROUP_MAIN)
    group = group if group in dict(groups) else RUN_GROUP_MAIN

    runs = runs_list(status=status, workflow_id=workflow_id, search=search, group=group)
    page = Paginator(runs, RUNS_PER_PAGE).get_page(request.GET.get("page"))
    rows = [RunRow(run) for run in page.object_list]
    counts = run_status_counts(workflow_id=workflow_id, search=search, group=group)

    def query(**changes: str) -> str:
        params = request.GET.copy()
        params.pop("fragment", None)
        for name, value in changes.items():
            if value:
                params[name] = value
            else:
                params.pop(name, None)
        encoded = params.urlencode()
        return f"?{encoded}" if encoded else "?"

    context = {
        "rows": rows,
        "page": page,
        "status": status or "all",
        "status_chips": [
            {
                "value": value,
                "count": counts.get(value, 0),
                "url": query(status="" if value == "all" else value, page=""),
                "active": value == (status or "all"),
            }
            for value in STATUS_FILTERS
        ],
        # Only when some application keeps runs apart: otherwise there is one list.
        "group_tabs": [
            {
                "value": value,
                "label": label,
                "url": query(group=value, page=""),
                "active": value == group,
            }
            for value, label in groups
        ]
        if len(groups) > 2
        else [],
        "group": group,
        "workflow_id": workflow_id,
        "workflow_ids": sorted({*run_workflow_ids(), *(d.id for d in workflows_all())}),
        "search": search,
        "is_live": any(row.run.status in EXECUTING_RUN_STATUSES for row in rows),
        "prev_url": query(page=str(page.previous_page_number())) if page.has_previous() else "",
        "next_url": query(page=str(page.next_page_number())) if page.has_next() else "",
        "filtered": bool(status or workflow_id or search or group),
    }
    template = "workflows/_run_results.html" if _is_fragment(request) else "workflows/run_list.html"
    return render(request, template, context)


def _run_facts(run: WorkflowRun) -> list[RunFact]:
    make = hooks.registry.run_facts.get(run.workflow_id)
    if make is None:
        return []
    try:
        return make(run)
    except Exception:
        logger.exception("run facts of %r failed for run %s", run.workflow_id, run.pk)
        return []


def _wait_link(wait: Wait) -> dict[str, str] | None:
    make = hooks.registry.wait_links.get(wait.key)
    if make is None:
        return None
    try:
        url = make(wait)
    except Exception:
        logger.exception("wait link of %r failed for wait %s", wait.key, wait.pk)
        return None
    if not url:
        return None
    return {"url": url, "label": f"Open the {wait.key.replace('_', ' ')}"}


def _trace_context(request: HttpRequest, trace: RunTrace) -> dict[str, Any]:
    run = trace.run
    selected = trace.step(request.GET.get("step")) or trace.default_step()
    open_wait = trace.open_wait
    waiting_for = waiting_for_of(open_wait) if open_wait else None
    return {
        "trace": trace,
        "run": run,
        "selected": selected,
        "duration": run_duration_text(run) if run.started_at else None,
        "tokens": usage_total(run.usage),
        "cost": usage_cost(run.usage),
        "input_json": pretty_json(run.input),
        "output_json": pretty_json(run.output) if run.output is not None else "",
        "admin_url": reverse("admin:workflows_workflowrun_change", args=[run.pk]),
        "open_wait": open_wait,
        "open_wait_json": pretty_json(open_wait.data) if open_wait else "",
        "open_wait_time_left": open_wait.time_left_text() if open_wait else "",
        "open_wait_link": _wait_link(open_wait) if open_wait else None,
        "waiting_for": waiting_for,
        "waiting_for_text": waiting_for_text(waiting_for) if waiting_for else "",
        "is_live": trace.is_live,
        "run_facts": _run_facts(run),
    }


@console_page
def run_detail(request: HttpRequest, run_id: UUID) -> HttpResponse:
    try:
        trace = run_trace(run_id=run_id)
    except RunNotFoundError as exc:
        raise Http404(str(exc)) from exc
    context = _trace_context(request, trace)
    fragment = request.GET.get("fragment")
    if fragment == "detail":
        return render(request, "workflows/_step_detail.html", context)
    if fragment == "1":
        return render(request, "workflows/_run_trace.html", context)
    return render(request, "workflows/run_detail.html", context)


# --- workflows and agents ----------------------------------------------------------------


def _workflow_entry(definition: WorkflowDefinition) -> dict[str, Any]:
    return {
        "id": definition.id,
        "description": definition.description,
        "input_name": definition.input_model.__name__,
        "input_fields": schema_fields(definition.input_model),
        "output_name": definition.output_model.__name__ if definition.output_model else "None",
        "output_fields": schema_fields(definition.output_model),
        "start_url": reverse("workflows:workflow_start", args=[definition.id]),
    }


@console_page
def workflow_list(request: HttpRequest) -> HttpResponse:
    agents = [
        {
            "agent": agent,
            "provider_text": (
                agent.provider
                if agent.provider == agent.effective_provider
                else f"{agent.provider} → {agent.effective_provider}"
            ),
            "simulated": agent.effective_provider == "simulated",
            "tools": [
                {
                    "name": tool.name,
                    "description": tool.description,
                    "input_name": tool.input_model.__name__,
                    "fields": schema_fields(tool.input_model),
                }
                for tool in agent.tools.values()
            ],
            "output_name": agent.output_schema.__name__ if agent.output_schema else "text",
        }
        for agent in agents_all()
    ]
    return render(
        request,
        "workflows/workflow_list.html",
        {
            "workflows": [_workflow_entry(d) for d in workflows_all()],
            "agents": agents,
            "can_start": request.user.has_perm(START_RUN_PERMISSION),
        },
    )


@console_page
@require_http_methods(["GET", "POST"])
def workflow_start_view(request: HttpRequest, workflow_id: str) -> HttpResponse:
    if not request.user.has_perm(START_RUN_PERMISSION):
        raise PermissionDenied(f"Starting runs needs the {START_RUN_PERMISSION} permission.")
    try:
        definition = workflow_get(workflow_id)
    except UnknownWorkflowError as exc:
        raise Http404(str(exc)) from exc

    if request.method == "POST":
        form = WorkflowStartForm(request.POST)
        if form.is_valid():
            try:
                run = workflow_start(workflow_id, form.cleaned_data["payload"])
            except PayloadError as exc:
                form.add_payload_errors(exc.errors)
            else:
                return redirect("workflows:run_detail", run_id=run.id)
    else:
        example = json.dumps(schema_example(definition.input_model), indent=2, default=str)
        form = WorkflowStartForm(initial={"payload": example})

    return render(
        request,
        "workflows/workflow_start.html",
        {"workflow": _workflow_entry(definition), "form": form},
    )


# --- the operations dashboard -------------------------------------------------------------


@console_page
def dashboard(request: HttpRequest) -> HttpResponse:
    """The service at a glance: every panel the user may see, drawn on the server."""
    now = timezone.now()
    return render(
        request,
        "workflows/dashboard.html",
        {"panels": dashboard_shown(request.user, now=now), "now": now},
    )
