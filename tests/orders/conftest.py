"""Fixtures of the orders tests: users, and starting orders through the service."""

from decimal import Decimal

import pytest
from django.contrib.auth.models import Group, Permission, User

from orders.models import Order
from orders.schemas import OrderPayload
from orders.services.intake import order_create


@pytest.fixture
def reviewer(db) -> User:
    # Transactional tests flush the tables, the data migration's group included.
    group, _ = Group.objects.get_or_create(name="Fraud reviewers")
    group.permissions.add(Permission.objects.get(codename="decide_fraud_review"))
    user = User.objects.create_user("rita", password="review-pass-123", is_staff=True)
    user.groups.add(group)
    return user


@pytest.fixture
def reviewer_with_email(reviewer) -> User:
    """The "Fraud reviewers" group as production has it: a member with an email, so that
    every review that opens alerts them, recorded with the order's emails. The order-flow
    tests run with it: a flow checked only with a silent group hid that the alert was
    taken for the customer's confirmation."""
    reviewer.email = "rita@reviews.example.com"
    reviewer.save(update_fields=["email"])
    return reviewer


@pytest.fixture
def staff_without_permission(db) -> User:
    return User.objects.create_user("sam", password="staff-pass-123", is_staff=True)


@pytest.fixture
def place_order():
    def place(
        amount: str,
        *,
        order_id: str | None = None,
        customer_id: str = "cus_good",
        email: str = "ada@example.com",
        client: User | None = None,
    ) -> Order:
        order, _ = order_create(
            client=client,
            payload=OrderPayload(
                order_id=order_id or f"ord-{amount.replace('.', '-')}",
                customer_id=customer_id,
                customer_email=email,
                amount=Decimal(amount),
            ),
        )
        return order

    return place
