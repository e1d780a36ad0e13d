"""What the orders admin pages share: the empty cell, who may decide reviews, and the
read-only permissions of records nobody adds, edits or deletes here."""

from typing import Any

from django.contrib import admin
from django.contrib.admin.options import BaseModelAdmin
from django.http import HttpRequest

from ..roles import DECIDE_PERMISSION

EMPTY = "—"


def can_decide(request: HttpRequest) -> bool:
    return request.user.has_perm(DECIDE_PERMISSION)


class ReadOnlyAdminMixin(BaseModelAdmin[Any]):
    """Records nobody adds, edits or deletes in admin (a model admin or an inline): they
    change only through the services."""

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


class ReadOnlyForReviewersMixin(ReadOnlyAdminMixin, admin.ModelAdmin[Any]):
    """Read-only records which fraud reviewers may view without holding the model's view
    permission (their group holds only the decide permission)."""

    def has_view_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return super().has_view_permission(request, obj) or can_decide(request)

    def has_module_permission(self, request: HttpRequest) -> bool:
        return super().has_module_permission(request) or can_decide(request)
