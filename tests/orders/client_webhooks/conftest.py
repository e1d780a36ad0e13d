"""Fixtures shared by the client webhook tests."""

import pytest
from django.contrib.auth.models import User


@pytest.fixture
def intake(db) -> User:
    """An intake client's user, whose orders' events its endpoints receive."""
    return User.objects.create_user("intake", password="intake-pass-123")
