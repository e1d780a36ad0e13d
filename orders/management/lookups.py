"""How the orders commands find users and orders, with one-line errors."""

from django.contrib.auth import get_user_model
from django.contrib.auth.models import User
from django.core.management.base import CommandError, CommandParser

from orders.errors import NotFound
from orders.models import Order
from orders.selectors import order_get


def add_client_argument(parser: CommandParser) -> None:
    parser.add_argument(
        "--client",
        metavar="USERNAME",
        help="The API client whose order id this is; needed only when clients share it.",
    )


def user_get(username: str) -> User:
    User = get_user_model()
    try:
        return User._default_manager.get_by_natural_key(username)
    except User.DoesNotExist:
        raise CommandError(f"No user named {username!r}") from None


def order_for_command(*, order_id: str, client_username: str | None) -> Order:
    """The order with that id, the named client's if given. Order ids are unique per
    client only, so a shared id without `--client` is an error, never a guess."""
    client = user_get(client_username) if client_username else None
    try:
        return order_get(order_id=order_id, client=client)
    except NotFound:
        whose = f" of client {client_username!r}" if client_username else ""
        raise CommandError(f"No order {order_id!r}{whose}") from None
    except Order.MultipleObjectsReturned:
        username_field = f"client__{get_user_model().USERNAME_FIELD}"
        owners = Order.objects.filter(order_id=order_id).values_list(username_field, flat=True)
        names = ", ".join(sorted(name or "(none)" for name in owners))
        raise CommandError(
            f"Several clients have an order {order_id!r} ({names}): name one with --client"
        ) from None
