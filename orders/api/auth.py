"""The client behind an API request."""

from typing import cast

from django.contrib.auth.models import User
from rest_framework.request import Request


def request_client(request: Request) -> User:
    """The signed-in user who sent `request`. Every API view requires authentication
    (`IsAuthenticated`, the default permission), so it is never `AnonymousUser` there."""
    return cast(User, request.user)
