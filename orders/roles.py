"""The roles (DESIGN.md, "Roles: who may do what"): the intake client's permissions (what
the API asks of a token's user), the group that holds them, and making a client; the
fraud reviewer's permission and group.

Placing an order charges a customer, so a token alone is not enough: the API checks
`api_permission` for every request, whichever endpoint it reaches."""

from collections.abc import Callable
from dataclasses import dataclass

from django.contrib.auth.models import Group, Permission, User
from django.core.exceptions import ValidationError
from django.db import transaction
from rest_framework.authtoken.models import Token

from workflows.engine.dashboard import VIEW_RUNS_PERMISSION

INTAKE_CLIENTS_GROUP = "Intake clients"
PLACE_ORDERS_PERMISSION = "orders.add_order"
READ_ORDERS_PERMISSION = "orders.view_order"
# The fraud reviewer: decides reviews in the admin and through `/api/reviews/`, and is
# told when one opens. The group (made by migration 0002) holds the permission; a user
# may also hold it directly.
DECIDE_PERMISSION = "orders.decide_fraud_review"
REVIEWERS_GROUP = "Fraud reviewers"

OPERATIONS_VIEW_PERMISSION = VIEW_RUNS_PERMISSION
"""The operator's (the "Workflow operators" group, DESIGN.md "Roles"): what the orders'
panels on the console's dashboard ask. They show counts, times and endpoint health,
never a customer's data, so reading runs is enough."""


def api_permission(*, write: bool) -> str:
    """The permission an API request needs. Writes place orders (a charge), decide a
    review, or change where the client's webhooks go; reads show its orders, their runs
    and reviews, and its webhook endpoints."""
    return PLACE_ORDERS_PERMISSION if write else READ_ORDERS_PERMISSION


def intake_clients_group() -> Group:
    """The "Intake clients" group as the data migration made it (again, if it was
    deleted since: a flushed test database, an admin's mistake)."""
    group, _ = Group.objects.get_or_create(name=INTAKE_CLIENTS_GROUP)
    codenames = [p.partition(".")[2] for p in (PLACE_ORDERS_PERMISSION, READ_ORDERS_PERMISSION)]
    group.permissions.add(
        *Permission.objects.filter(content_type__app_label="orders", codename__in=codenames)
    )
    return group


def intake_client_add(*, user: User) -> None:
    """Lets `user`'s token place and read orders: puts it in the "Intake clients" group."""
    user.groups.add(intake_clients_group())


def fraud_reviewers_group() -> Group:
    """The "Fraud reviewers" group as migration 0002 made it (again, if deleted since)."""
    group, _ = Group.objects.get_or_create(name=REVIEWERS_GROUP)
    app_label, _, codename = DECIDE_PERMISSION.partition(".")
    group.permissions.add(
        *Permission.objects.filter(content_type__app_label=app_label, codename=codename)
    )
    return group


def fraud_reviewer_add(*, user: User) -> None:
    """Lets `user` decide fraud reviews (admin, `/api/reviews/`) and be told of them."""
    user.groups.add(fraud_reviewers_group())


def username_validate(username: str) -> None:
    """A new user's name as the auth app requires it; ValidationError with the reason."""
    field = User._meta.get_field("username")
    if not username:
        raise ValidationError("A username may not be empty.")
    field.run_validators(username)


@dataclass(frozen=True)
class IntakeClient:
    user: User
    user_created: bool
    token: str | None
    """The new token's key; None when the user already had one (it is shown only once,
    when it is made)."""


def intake_client_create(*, username: str, token_rotate: bool = False) -> IntakeClient:
    """Makes `username` an API client: the user (created when missing, with no password:
    it signs in with its token only) in the "Intake clients" group, with a token. A user
    who already has a token keeps it unless `token_rotate`, which replaces it (the old
    one stops working at once)."""
    return _token_user_create(username=username, token_rotate=token_rotate, join=intake_client_add)


def fraud_reviewer_create(*, username: str, token_rotate: bool = False) -> IntakeClient:
    """As `intake_client_create`, for a fraud reviewer's token (the reviewer API): the
    user in the "Fraud reviewers" group, and no intake client (it places no orders)."""
    return _token_user_create(username=username, token_rotate=token_rotate, join=fraud_reviewer_add)


@transaction.atomic
def _token_user_create(
    *, username: str, token_rotate: bool, join: Callable[..., None]
) -> IntakeClient:
    user = User.objects.filter(username=username).first()
    user_created = user is None
    if user is None:
        username_validate(username)
        user = User.objects.create_user(username=username)  # no password: unusable
    join(user=user)
    if token_rotate:
        Token.objects.filter(user=user).delete()
    token, token_created = Token.objects.get_or_create(user=user)
    return IntakeClient(
        user=user, user_created=user_created, token=token.key if token_created else None
    )
