"""The order's payment status moves only as `PAYMENT_TRANSITIONS` says, through the one
conditional UPDATE every door uses (`order_payment_status_set`, the workflow's steps):
every move not in the table is refused, and a dispute closes back where it opened."""

from decimal import Decimal

import pytest

from orders.models import Order, PaymentStatus
from orders.services.payments import PAYMENT_TRANSITIONS, order_payment_status_set

pytestmark = [pytest.mark.django_db, pytest.mark.db_engine]

P = PaymentStatus
# The product's moves, written out here rather than read from the code under test, so
# that widening the table (say refunded → captured) turns these tests red. Money given
# back (refunded, partially refunded, a released hold) never becomes captured again; a
# refund can only grow or be disputed; a released hold is final.
PRODUCT_MOVES: dict[P, set[P]] = {
    P.NONE: {P.AUTHORIZED, P.CAPTURED, P.FAILED},
    P.AUTHORIZED: {P.CAPTURED, P.CANCELED, P.FAILED},
    P.CAPTURED: {P.REFUNDED, P.PARTIALLY_REFUNDED, P.DISPUTED},
    P.PARTIALLY_REFUNDED: {P.REFUNDED, P.DISPUTED},
    P.DISPUTED: {P.CAPTURED, P.PARTIALLY_REFUNDED, P.REFUNDED},
    P.REFUNDED: {P.DISPUTED},
    P.FAILED: {P.CANCELED},
    P.CANCELED: set(),
}
# Where the money can be when a dispute opens.
DISPUTABLE = [src for src, targets in PRODUCT_MOVES.items() if P.DISPUTED in targets]


@pytest.fixture
def order() -> Order:
    return Order.objects.create(
        order_id="ord-1",
        customer_id="cus_1",
        customer_email="ada@example.com",
        amount=Decimal("250.00"),
        request_fingerprint="-",
    )


def put(order: Order, status: P, before: P | str = "") -> None:
    Order.objects.filter(pk=order.pk).update(
        payment_status=status, payment_status_before_dispute=before
    )


def where(order: Order) -> tuple[str, str]:
    order.refresh_from_db()
    return order.payment_status, order.payment_status_before_dispute


def allowed(src: P, before: P | str, to: P) -> bool:
    """The product's rule: stay, follow the table, and leave a dispute only for where
    the money was when it opened, or for one of that status's own moves."""
    if to == src:
        return True
    if to not in PRODUCT_MOVES[src]:
        return False
    return src != P.DISPUTED or to == before or to in PRODUCT_MOVES[P(before)]


def configurations() -> list[tuple[P, P | str]]:
    return [(src, "") for src in P if src != P.DISPUTED] + [(P.DISPUTED, b) for b in DISPUTABLE]


def test_the_table_is_the_products():
    assert {src: set(targets) for src, targets in PAYMENT_TRANSITIONS.items()} == PRODUCT_MOVES
    assert set(PAYMENT_TRANSITIONS) == set(P)
    # Nothing leaves a refund, a partial refund, a released hold or a failure for
    # captured money directly.
    for src in (P.REFUNDED, P.PARTIALLY_REFUNDED, P.CANCELED, P.FAILED):
        assert P.CAPTURED not in PAYMENT_TRANSITIONS[src]


@pytest.mark.parametrize(("src", "before"), configurations())
def test_every_move_not_in_the_table_is_refused(order, src, before):
    for to in P:
        put(order, src, before)
        moved = order_payment_status_set(order=order, status=to, reason="test")
        expected = allowed(src, before, to)
        assert moved == expected, f"{src} (before dispute: {before or '-'}) → {to}"
        status, remembered = where(order)
        assert status == (to if expected else src)
        if to == P.DISPUTED and expected:
            # Remembered on the way in; a second opening does not overwrite it.
            assert remembered == (before if src == P.DISPUTED else src)


@pytest.mark.parametrize(
    ("start", "reachable"),
    [
        (P.REFUNDED, {P.REFUNDED, P.DISPUTED}),
        (P.PARTIALLY_REFUNDED, {P.PARTIALLY_REFUNDED, P.DISPUTED, P.REFUNDED}),
        (P.CANCELED, {P.CANCELED}),
        (P.FAILED, {P.FAILED, P.CANCELED}),
    ],
)
def test_no_path_of_moves_leads_from_money_given_back_to_captured(order, start, reachable):
    """Every sequence of events, walked through the real moves: a refund (or a released
    hold) never turns back into captured money."""
    seen = {(start, "")}
    frontier = [(start, "")]
    while frontier:
        src, before = frontier.pop()
        for to in P:
            put(order, src, before)
            if order_payment_status_set(order=order, status=to) and where(order) not in seen:
                seen.add(where(order))
                frontier.append(where(order))
    assert {status for status, _ in seen} == reachable
