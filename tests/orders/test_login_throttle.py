"""Admin login is throttled (django-axes): after too many wrong passwords for a username
from one address, even the right one is refused until the cool-off ends. Through the
real admin login view."""

import pytest
from axes.models import AccessAttempt
from django.contrib.auth.models import User
from django.test import Client

LOGIN = "/admin/login/"
PASSWORD = "right-pass-123"


@pytest.fixture
def admin_user(db) -> User:
    return User.objects.create_superuser("root", password=PASSWORD)


def log_in(client: Client, password: str, username: str = "root"):
    return client.post(LOGIN, {"username": username, "password": password, "next": "/admin/"})


def logged_in(client: Client) -> bool:
    return client.get("/admin/").status_code == 200


def test_the_right_password_is_refused_after_too_many_wrong_ones(admin_user, settings):
    client = Client()
    for _ in range(settings.AXES_FAILURE_LIMIT - 1):
        assert log_in(client, "wrong").status_code == 200  # the form again, with an error
    locked = log_in(client, "wrong")
    assert locked.status_code == 429

    refused = log_in(client, PASSWORD)
    assert refused.status_code == 429 and not logged_in(client)

    # Another address may still log in as root, and the lock ends with the cool-off.
    assert log_in(Client(REMOTE_ADDR="10.0.0.2"), PASSWORD).status_code == 302
    AccessAttempt.objects.update(
        attempt_time=AccessAttempt.objects.get().attempt_time - settings.AXES_COOLOFF_TIME
    )
    assert log_in(client, PASSWORD).status_code == 302 and logged_in(client)


def test_a_success_resets_the_count(admin_user, settings):
    client = Client()
    for _ in range(settings.AXES_FAILURE_LIMIT - 1):
        log_in(client, "wrong")
    assert log_in(client, PASSWORD).status_code == 302
    client.logout()
    assert log_in(client, "wrong").status_code == 200
    assert log_in(client, PASSWORD).status_code == 302
