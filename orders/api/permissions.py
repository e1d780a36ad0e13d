"""Who may call the API: the permission the domain names for the request
(`orders.roles.api_permission`), checked before any view runs; the fraud reviewer's
(`orders.roles.DECIDE_PERMISSION`) for the reviews. The settings make the intake
client's every API view's default, so this module imports nothing of DRF's views (they
read that setting while they load)."""

from typing import TYPE_CHECKING

from rest_framework.permissions import SAFE_METHODS, BasePermission
from rest_framework.request import Request

from orders.roles import DECIDE_PERMISSION, INTAKE_CLIENTS_GROUP, api_permission

if TYPE_CHECKING:
    from rest_framework.views import APIView


class IntakeClientPermission(BasePermission):
    """Writes need `orders.add_order`, reads `orders.view_order` (the "Intake clients"
    group holds both); without it, 403 and nothing done."""

    def has_permission(self, request: Request, view: "APIView") -> bool:
        permission = api_permission(write=request.method not in SAFE_METHODS)
        if request.user.has_perm(permission):
            return True
        self.message = (
            f"Your token's user lacks the {permission} permission "
            f'(the "{INTAKE_CLIENTS_GROUP}" group holds it).'
        )
        return False


class FraudReviewerPermission(BasePermission):
    """`orders.decide_fraud_review` (the "Fraud reviewers" group holds it; an active
    superuser holds every permission); without it, 403 and nothing read or done."""

    message = "You may not decide fraud reviews."

    def has_permission(self, request: Request, view: "APIView") -> bool:
        return bool(request.user and request.user.has_perm(DECIDE_PERMISSION))
