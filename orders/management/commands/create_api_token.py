from typing import Any

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError, CommandParser
from rest_framework.authtoken.models import Token


class Command(BaseCommand):
    help = (
        "Print the API token of USERNAME (for `Authorization: Token <key>`), creating it "
        "if the user has none. Only the key goes to stdout, so scripts can capture it."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("username", help="An existing user's username.")

    def handle(self, *args: Any, **options: Any) -> None:
        username: str = options["username"]
        User = get_user_model()
        try:
            user = User._default_manager.get_by_natural_key(username)
        except User.DoesNotExist:
            raise CommandError(f"No user named {username!r}; create it first.") from None
        token, _ = Token.objects.get_or_create(user=user)
        if not user.is_active:
            self.stderr.write(f"Warning: {username!r} is inactive; the API will refuse its token.")
        self.stdout.write(token.key)
