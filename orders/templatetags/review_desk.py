"""Template tags of the fraud reviewers' desk: the pending count on the admin index."""

from django import template
from django.contrib.auth.models import AnonymousUser, User

from ..roles import DECIDE_PERMISSION
from ..selectors import reviews_open_count

register = template.Library()


@register.simple_tag
def reviews_open_for(user: User | AnonymousUser) -> int | None:
    """How many reviews wait for a decision, for who may see the queue; None otherwise."""
    if not (user.has_perm(DECIDE_PERMISSION) or user.has_perm("orders.view_fraudreview")):
        return None
    return reviews_open_count()
