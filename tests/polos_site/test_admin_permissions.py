"""Every admin action of the site declares the permission it needs (issue 18, item 2):
a view-only staff user is offered no action that changes anything, and a crafted POST
runs none. Third-party admins (django-q2, django-axes) included."""

from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
from axes.models import AccessAttempt
from django.contrib import admin
from django.contrib.admin.options import ModelAdmin
from django.contrib.auth.models import Permission, User
from django.db.models import Model
from django.test import Client, RequestFactory
from django.urls import reverse
from django.utils import timezone
from django_q.models import Failure, OrmQ, Success

pytestmark = pytest.mark.django_db

# Actions that only read or export, which anyone who may view the list may run: none yet.
READ_ONLY_ACTIONS: set[str] = set()


def staff_with(username: str, permissions: Any) -> User:
    user = User.objects.create_user(username, password="x", is_staff=True)
    user.user_permissions.add(*permissions)
    return User.objects.get(pk=user.pk)  # no stale permission cache


def logged_in(user: User) -> Client:
    client = Client()
    client.force_login(user)
    return client


@pytest.fixture
def viewer() -> User:
    """Staff holding every model's view permission, and nothing else."""
    return staff_with("vera", Permission.objects.filter(codename__startswith="view_"))


def changelist(model: type[Model]) -> str:
    return reverse(f"admin:{model._meta.app_label}_{model._meta.model_name}_changelist")


def offered(model_admin: ModelAdmin, user: User) -> set[str]:
    request = RequestFactory().get("/")
    request.user = user
    return set(model_admin.get_actions(request))


def actions_run_by_crafted_posts(user: User, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every action every registered ModelAdmin declares, POSTed to its changelist as
    the changelist's form would send it (all rows, `select_across`) by `user`: the
    "model.action" names Django dispatched. The actions are replaced by recorders, so
    that nothing runs and no row is needed."""
    ran: list[str] = []
    client = logged_in(user)
    for model, model_admin in admin.site._registry.items():
        get_actions = model_admin.get_actions

        def recording(
            request: Any,
            get_actions: Callable[..., dict] = get_actions,
            label: str = model._meta.label,
        ) -> dict:
            def recorder(name: str) -> Callable[..., None]:
                return lambda model_admin, request, queryset: ran.append(name)

            return {
                name: (recorder(f"{label}.{name}"), name, description)
                for name, (_, _, description) in get_actions(request).items()
            }

        monkeypatch.setattr(model_admin, "get_actions", recording)
        for _, name, _ in model_admin._get_base_actions():
            if name in READ_ONLY_ACTIONS:
                continue
            client.post(
                changelist(model),
                {"action": name, "index": "0", "select_across": "1", "_selected_action": "0"},
            )
    return ran


def test_a_view_only_staff_user_is_offered_and_runs_no_admin_action(viewer, monkeypatch):
    offers = {
        f"{model._meta.label}.{name}"
        for model, model_admin in admin.site._registry.items()
        for name in offered(model_admin, viewer) - READ_ONLY_ACTIONS
    }
    assert offers == set()
    assert actions_run_by_crafted_posts(viewer, monkeypatch) == []


def test_the_crafted_posts_reach_every_action_a_superuser_is_offered(monkeypatch):
    # The walk above would pass vacuously if its POSTs never reached an action.
    root = User.objects.create_superuser("root", "root@example.com", "x")
    expected = {
        f"{model._meta.label}.{name}"
        for model, model_admin in admin.site._registry.items()
        for name in offered(model_admin, root)
    }
    ran = actions_run_by_crafted_posts(root, monkeypatch)
    assert len(ran) == len(set(ran)) and set(ran) == expected
    assert {
        "client_webhooks.WebhookEndpoint.rotate_secret_selected",
        "django_q.Failure.resubmit_selected",
    } <= expected


# --- the third-party actions given permissions (polos_site/admin.py) ------------------------


def task(model: type[Model], name: str) -> Any:
    now = timezone.now()
    return model.objects.create(
        id=name.ljust(32, "0"),
        name=name,
        func="math.floor",
        args=(1.5,),
        kwargs={},
        started=now,
        stopped=now,
        success=model is Success,
    )


def resubmit(user: User, model: type[Model], pk: str) -> None:
    logged_in(user).post(
        changelist(model),
        {"action": "resubmit_selected", "index": "0", "_selected_action": [pk]},
    )


@pytest.mark.parametrize("model", [Success, Failure])
def test_a_view_only_user_cannot_resubmit_a_task(viewer, model):
    record = task(model, "tango-one")
    resubmit(viewer, model, record.pk)
    assert not OrmQ.objects.exists() and model.objects.filter(pk=record.pk).exists()

    label = model._meta.model_name
    allowed = staff_with(
        "ops",
        Permission.objects.filter(
            codename__in=[f"view_{label}", f"change_{label}", f"delete_{label}"]
        ),
    )
    resubmit(allowed, model, record.pk)
    assert OrmQ.objects.count() == 1
    # Resubmitting a failure takes it off the failures list.
    assert model.objects.filter(pk=record.pk).exists() == (model is Success)


def test_a_failure_is_resubmitted_only_by_who_may_also_delete_it(viewer):
    record = task(Failure, "tango-two")
    changer = staff_with(
        "ops", Permission.objects.filter(codename__in=["view_failure", "change_failure"])
    )
    resubmit(changer, Failure, record.pk)
    assert not OrmQ.objects.exists() and Failure.objects.filter(pk=record.pk).exists()


def test_a_view_only_user_cannot_clean_up_login_attempts(viewer, settings):
    # Signed in first: django-axes cleans expired attempts up at every login.
    as_viewer = logged_in(viewer)
    as_cleaner = logged_in(
        staff_with(
            "ops",
            Permission.objects.filter(codename__in=["view_accessattempt", "delete_accessattempt"]),
        )
    )
    old = timezone.now() - settings.AXES_COOLOFF_TIME - timedelta(minutes=1)
    attempt = AccessAttempt.objects.create(
        username="mallory",
        ip_address="192.0.2.1",
        user_agent="curl",
        get_data="",
        post_data="",
        http_accept="*/*",
        path_info="/admin/login/",
        failures_since_start=5,
    )
    AccessAttempt.objects.filter(pk=attempt.pk).update(attempt_time=old)
    form = {"action": "cleanup_expired_attempts", "index": "0", "_selected_action": [attempt.pk]}
    as_viewer.post(changelist(AccessAttempt), form)
    assert AccessAttempt.objects.filter(pk=attempt.pk).exists()

    as_cleaner.post(changelist(AccessAttempt), form)
    assert not AccessAttempt.objects.exists()
