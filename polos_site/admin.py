"""Admin actions of third-party apps, each behind the permission it needs.

django-q2's "Resubmit" and django-axes' "Clean up expired attempts" declare none, so
Django offers them to anyone who may view their lists (DESIGN.md, "Roles": a view-only
staff user changes nothing). This app is the last in INSTALLED_APPS, so autodiscovery
has registered their admins when this module runs: it registers them again with the
same actions, declaring `permissions=`."""

from typing import Any

from axes.admin import AccessAttemptAdmin as AxesAccessAttemptAdmin
from axes.models import AccessAttempt
from django.contrib import admin
from django.db.models import Model, QuerySet
from django.http import HttpRequest
from django.utils import timezone
from django_q import admin as q_admin
from django_q.models import Failure, Success


@admin.action(description="Resubmit selected tasks to queue", permissions=["resubmit"])
def resubmit_selected(
    model_admin: admin.ModelAdmin, request: HttpRequest, queryset: QuerySet
) -> None:
    q_admin.resubmit_task(model_admin, request, queryset)


class SuccessAdmin(q_admin.TaskAdmin):
    actions = [resubmit_selected]

    def has_resubmit_permission(self, request: HttpRequest) -> bool:
        """Resubmitting runs the task's work again."""
        return self.has_change_permission(request)


class FailureAdmin(q_admin.FailAdmin):
    actions = [resubmit_selected]

    def has_resubmit_permission(self, request: HttpRequest) -> bool:
        """Resubmitting runs the task again and deletes its failure."""
        return self.has_change_permission(request) and self.has_delete_permission(request)


class AccessAttemptAdmin(AxesAccessAttemptAdmin):
    @admin.action(description="Clean up expired attempts", permissions=["delete"])
    def cleanup_expired_attempts(self, request: HttpRequest, queryset: QuerySet) -> None:
        # django-axes measures "expired" from the time its login handler puts on the
        # request; an admin request has none, and the action would answer 500.
        request.axes_attempt_time = timezone.now()
        super().cleanup_expired_attempts(request, queryset)


def _register_again(model: type[Model], model_admin: type[admin.ModelAdmin[Any]]) -> None:
    if admin.site.is_registered(model):  # django-axes registers only with AXES_ENABLE_ADMIN
        admin.site.unregister(model)
        admin.site.register(model, model_admin)


_register_again(Success, SuccessAdmin)
_register_again(Failure, FailureAdmin)
_register_again(AccessAttempt, AccessAttemptAdmin)
