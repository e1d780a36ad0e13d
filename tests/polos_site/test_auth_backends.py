"""The site's permission checks (`polos_site.auth_backends`): one query for a request's
first check, and the answers Django's `ModelBackend` gives, revocation included."""

import pytest
from django.contrib.auth.backends import ModelBackend
from django.contrib.auth.models import Permission, User
from django.db import connection
from django.test.utils import CaptureQueriesContext

from orders.roles import (
    DECIDE_PERMISSION,
    PLACE_ORDERS_PERMISSION,
    READ_ORDERS_PERMISSION,
    fraud_reviewer_add,
    intake_client_add,
    intake_clients_group,
)

pytestmark = [pytest.mark.django_db, pytest.mark.db_engine]


def fresh(user: User) -> User:
    """The user as the next request loads it: no permission cached on it."""
    return User.objects.get(pk=user.pk)


def checked(user: User, permission: str) -> tuple[bool, int]:
    with CaptureQueriesContext(connection) as queries:
        allowed = user.has_perm(permission)
    return allowed, len(queries)


@pytest.fixture
def client_user() -> User:
    user = User.objects.create_user("intake")
    intake_client_add(user=user)
    return fresh(user)


def test_a_request_s_first_check_is_one_query(client_user: User) -> None:
    assert checked(client_user, PLACE_ORDERS_PERMISSION) == (True, 1)
    assert checked(fresh(client_user), DECIDE_PERMISSION) == (False, 1)


def test_later_checks_answer_from_the_loaded_set_as_django_does(client_user: User) -> None:
    assert client_user.has_perm(PLACE_ORDERS_PERMISSION)
    # The second check loads the user's and its groups' permissions (Django's two
    # queries); every check after it is free.
    assert checked(client_user, READ_ORDERS_PERMISSION) == (True, 2)
    assert checked(client_user, DECIDE_PERMISSION) == (False, 0)
    assert checked(client_user, PLACE_ORDERS_PERMISSION) == (True, 0)


def test_a_permission_granted_to_the_user_itself_counts() -> None:
    user = User.objects.create_user("direct")
    user.user_permissions.add(Permission.objects.get(codename="decide_fraud_review"))
    assert checked(fresh(user), DECIDE_PERMISSION) == (True, 1)


def test_the_answers_are_django_s_for_every_permission_of_every_role() -> None:
    """A reviewer, an intake client, a user with one permission of its own and one with
    none, asked about every permission there is (and one of a made-up app)."""
    reviewer = User.objects.create_user("reviewer")
    fraud_reviewer_add(user=reviewer)
    intake = User.objects.create_user("client")
    intake_client_add(user=intake)
    direct = User.objects.create_user("direct")
    direct.user_permissions.add(Permission.objects.get(codename="view_order"))
    nobody = User.objects.create_user("nobody")
    names = [
        f"{app}.{codename}"
        for app, codename in Permission.objects.values_list("content_type__app_label", "codename")
    ] + ["elsewhere.add_order"]
    for user in (reviewer, intake, direct, nobody):
        ours = {name for name in names if fresh(user).has_perm(name)}
        django_s = {name for name in names if ModelBackend().has_perm(fresh(user), name)}
        assert ours == django_s, user.username
        assert ours or user is nobody


def test_an_inactive_user_holds_nothing(client_user: User) -> None:
    client_user.is_active = False
    assert checked(client_user, PLACE_ORDERS_PERMISSION) == (False, 0)


def test_a_superuser_holds_everything_without_a_query() -> None:
    admin = fresh(User.objects.create_superuser("root", password="x"))
    assert checked(admin, DECIDE_PERMISSION) == (True, 0)


def test_a_revoked_role_stops_at_the_next_request(client_user: User) -> None:
    intake_clients_group().user_set.remove(client_user)
    assert not fresh(client_user).has_perm(PLACE_ORDERS_PERMISSION)
