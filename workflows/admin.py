"""Runs, steps and waits in admin: read-only records, plus cancel, retry and fork actions."""

import functools
from collections.abc import Callable
from typing import Any, cast
from uuid import UUID

from django.contrib import admin, messages
from django.contrib.admin import helpers
from django.contrib.auth.base_user import AbstractBaseUser
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse
from django.template.response import TemplateResponse
from django.urls import reverse
from django.utils.html import format_html

from workflows.console.presenters import waiting_for_text
from workflows.console.views import START_RUN_PERMISSION
from workflows.engine.errors import RunStateError
from workflows.engine.selectors import run_waiting_for
from workflows.engine.services import run_cancel_requested, run_fork, runs_retry_failed
from workflows.models import StepRecord, Wait, WorkflowRun

RETRY_RUN_PERMISSION = "workflows.retry_run"


class ReadOnlyInline(admin.TabularInline[Any, WorkflowRun]):
    extra = 0
    can_delete = False
    show_change_link = False

    def has_add_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False


class StepInline(ReadOnlyInline):
    model = StepRecord
    fields = ("position", "key", "kind", "status", "attempt", "started_at", "finished_at", "error")
    ordering = ("position",)


class WaitInline(ReadOnlyInline):
    model = Wait
    fields = ("key", "kind", "status", "deadline", "resumed_by", "resumed_at", "resume_data")


@admin.register(WorkflowRun)
class WorkflowRunAdmin(admin.ModelAdmin[WorkflowRun]):
    list_display = (
        "id",
        "workflow_id",
        "status",
        "attempts",
        "created_at",
        "finished_at",
        "forked_from",
    )
    list_filter = ("status", "workflow_id", "finished_at")
    # The error too: after an outage, "SMTP" finds the runs it failed.
    search_fields = ("=id", "workflow_id", "error")
    search_help_text = "Search by run id, workflow id or error text."
    date_hierarchy = "created_at"
    inlines = [WaitInline, StepInline]
    actions = ["cancel_selected", "retry_selected", "fork_selected"]
    readonly_fields = ["waiting_for", *(f.name for f in WorkflowRun._meta.fields), "forks"]

    @admin.display(description="Waiting for")
    def waiting_for(self, run: WorkflowRun) -> str:
        waiting = run_waiting_for(run)
        return waiting_for_text(waiting) if waiting else "—"

    fork_confirmation_template = "admin/workflows/workflowrun/fork_confirmation.html"

    @admin.display(description="Forks")
    def forks(self, run: WorkflowRun) -> str:
        links = [
            format_html(
                '<a href="{}">{}</a> (from {})',
                reverse("admin:workflows_workflowrun_change", args=[fork.pk]),
                fork.pk,
                fork.forked_at_step,
            )
            for fork in run.forks.all()
        ]
        return format_html(", ".join(["{}"] * len(links)), *links) if links else "—"

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False

    def _apply(
        self,
        request: HttpRequest,
        queryset: QuerySet[WorkflowRun],
        operation: Callable[[UUID], object],
        verb: str,
    ) -> None:
        done, refused = 0, []
        for run in queryset:
            try:
                operation(run.id)
                done += 1
            except RunStateError as exc:
                refused.append(str(exc))
        if done:
            self.message_user(request, f"{verb} {done} run(s).", messages.SUCCESS)
        for reason in refused:
            self.message_user(request, reason, messages.WARNING)

    @admin.action(description="Cancel selected runs", permissions=["change"])
    def cancel_selected(self, request: HttpRequest, queryset: QuerySet[WorkflowRun]) -> None:
        # The admin lets only signed-in staff in: the user is never anonymous.
        cancel = functools.partial(run_cancel_requested, by=cast(AbstractBaseUser, request.user))
        self._apply(request, queryset, cancel, "Cancelled")

    def has_retry_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm(RETRY_RUN_PERMISSION)

    @admin.action(description="Retry selected failed runs", permissions=["retry"])
    def retry_selected(self, request: HttpRequest, queryset: QuerySet[WorkflowRun]) -> None:
        """`retry_runs` for the selection (filter the list by status, workflow, error
        text and date, then select all)."""
        result = runs_retry_failed(run_ids=list(queryset.values_list("pk", flat=True)))
        if result.retried:
            self.message_user(
                request, f"Queued again {len(result.retried)} run(s).", messages.SUCCESS
            )
        for reason in result.refused:
            self.message_user(request, reason, messages.WARNING)

    def has_start_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm(START_RUN_PERMISSION)

    @admin.action(description="Fork from a step…", permissions=["start"])
    def fork_selected(
        self, request: HttpRequest, queryset: QuerySet[WorkflowRun]
    ) -> HttpResponse | None:
        """A new run of the same workflow and input that continues from the chosen step
        under the deployed code (`run_fork`): one finished or cancelled run at a time."""
        runs = list(queryset[:2])
        if len(runs) != 1:
            self.message_user(request, "Fork one run at a time.", messages.WARNING)
            return None
        [run] = runs
        step = request.POST.get("from_step", "")
        if request.POST.get("post") and step:
            try:
                fork = run_fork(run.id, from_step=step)
            except RunStateError as exc:
                self.message_user(request, str(exc), messages.ERROR)
                return None
            self.log_addition(request, fork, f"Forked from {run.id} at step {step}.")
            self.message_user(
                request,
                format_html(
                    'Forked <a href="{}">{}</a> from step {}; it is queued.',
                    reverse("admin:workflows_workflowrun_change", args=[fork.pk]),
                    fork.pk,
                    step,
                ),
                messages.SUCCESS,
            )
            return None
        context = {
            **self.admin_site.each_context(request),
            "title": "Fork a run",
            "subtitle": None,
            "run": run,
            "steps": list(run.steps.order_by("position")),
            "chosen": step,
            "action_checkbox_name": helpers.ACTION_CHECKBOX_NAME,
            "opts": self.opts,
            "media": self.media,
        }
        request.current_app = self.admin_site.name
        return TemplateResponse(request, self.fork_confirmation_template, context)
