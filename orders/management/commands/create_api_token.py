import argparse
from typing import Any

from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError, CommandParser

from orders.roles import (
    INTAKE_CLIENTS_GROUP,
    REVIEWERS_GROUP,
    fraud_reviewer_create,
    intake_client_create,
    username_validate,
)


def username_argument(value: str) -> str:
    try:
        username_validate(value)
    except ValidationError as exc:
        raise argparse.ArgumentTypeError(" ".join(exc.messages)) from None
    return value


class Command(BaseCommand):
    help = (
        "Make USERNAME an API client: create the user when missing (no password: it signs "
        f'in with its token only), put it in the "{INTAKE_CLIENTS_GROUP}" group (may place '
        "and read orders), and print its new token (for `Authorization: Token <key>`). The "
        "token is printed once, when it is made, and only the key goes to stdout, so "
        "scripts can capture it. A user who already has a token is still put in the group, "
        f'and keeps its token; --rotate replaces it. --reviewer: the "{REVIEWERS_GROUP}" '
        "group instead, for the reviewer API."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "username", type=username_argument, help="The client's username, new or existing."
        )
        parser.add_argument(
            "--rotate",
            action="store_true",
            help="Replace the user's token with a new one (the old one stops working) and "
            "print it.",
        )
        parser.add_argument(
            "--reviewer",
            action="store_true",
            help=f'Make a fraud reviewer\'s token: the user goes into "{REVIEWERS_GROUP}" '
            "(lists and decides every client's reviews at /api/reviews/) and not into "
            f'"{INTAKE_CLIENTS_GROUP}".',
        )

    def handle(self, *args: Any, **options: Any) -> None:
        username: str = options["username"]
        create = fraud_reviewer_create if options["reviewer"] else intake_client_create
        group = REVIEWERS_GROUP if options["reviewer"] else INTAKE_CLIENTS_GROUP
        client = create(username=username, token_rotate=options["rotate"])
        if client.user_created:
            self.stderr.write(f"Created user {username!r} in {group!r}.")
        if not client.user.is_active:
            self.stderr.write(f"Warning: {username!r} is inactive; the API will refuse its token.")
        if client.token is None:
            raise CommandError(
                f"{username!r} already has an API token, shown when it was made; it is in "
                f"{group!r}. Use --rotate to replace the token and print the "
                "new one."
            )
        self.stdout.write(client.token)
