"""The intake API as one of its clients calls it."""

from django.contrib.auth.models import User
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from orders.roles import intake_client_add


def api_client_for(user: User, *, intake_client: bool = True) -> APIClient:
    """An API client authenticated with `user`'s token (made if it has none). The user
    is made an intake client (may place and read orders) unless `intake_client=False`:
    then its token carries only the permissions the user already holds."""
    if intake_client:
        intake_client_add(user=user)
    token, _ = Token.objects.get_or_create(user=user)
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {token.key}")
    return client
