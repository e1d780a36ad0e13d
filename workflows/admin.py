"""Runs, steps and waits in admin: read-only records, plus cancel and retry actions."""

from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest

from .errors import RunStateError
from .models import StepRecord, Wait, WorkflowRun
from .services import run_cancel, run_retry


class ReadOnlyInline(admin.TabularInline):
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
class WorkflowRunAdmin(admin.ModelAdmin):
    list_display = ("id", "workflow_id", "status", "attempts", "created_at", "finished_at")
    list_filter = ("status", "workflow_id")
    search_fields = ("=id", "workflow_id")
    date_hierarchy = "created_at"
    inlines = [WaitInline, StepInline]
    actions = ["cancel_selected", "retry_selected"]
    readonly_fields = [f.name for f in WorkflowRun._meta.fields]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False

    def _apply(self, request: HttpRequest, queryset: QuerySet, operation, verb: str) -> None:  # type: ignore[no-untyped-def]
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
    def cancel_selected(self, request: HttpRequest, queryset: QuerySet) -> None:
        self._apply(request, queryset, run_cancel, "Cancelled")

    @admin.action(description="Retry selected failed runs", permissions=["change"])
    def retry_selected(self, request: HttpRequest, queryset: QuerySet) -> None:
        self._apply(request, queryset, run_retry, "Queued again")
