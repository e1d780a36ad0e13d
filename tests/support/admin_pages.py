"""The fraud-review admin pages as the tests visit them."""

from django.contrib.messages import get_messages
from django.test import Client
from django.urls import reverse

from orders.models import FraudReview


def logged_in(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


def texts(response) -> list[str]:
    """The admin messages the response carried."""
    return [str(m) for m in get_messages(response.wsgi_request)]


def change_url(review: FraudReview) -> str:
    return reverse("admin:orders_fraudreview_change", args=[review.pk])


def decide_url(review: FraudReview) -> str:
    return reverse("admin:orders_fraudreview_decide", args=[review.pk])
