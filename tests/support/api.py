"""The intake API as one of its clients calls it."""

from django.contrib.auth.models import User
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient


def api_client_for(user: User) -> APIClient:
    """An API client authenticated with `user`'s token (made if it has none)."""
    token, _ = Token.objects.get_or_create(user=user)
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {token.key}")
    return client
