"""What an order keeps for good when retention prunes its run's history.

Everything a reader shows of an order is on the order (amount and currency, status,
payment status and PaymentIntent, refund, timestamps; Stripe's events, disputes among
them, are rows of their own) or on its run's row, which stays (the model cost is its
`usage`), except the fraud review: its record is the run's wait, which the prune
deletes. The archiver copies it onto the order first, inside the batch's transaction.
"""

from uuid import UUID

from ..models import FraudReview, Order


def order_history_archive(run_ids: list[UUID]) -> None:
    """Copy the fraud reviews of these runs onto their orders (the orders' history
    archiver): one query for the reviews, one UPDATE for the orders."""
    reviews = {
        review.run_id: review
        for review in FraudReview.objects.filter(run_id__in=run_ids).select_related("resumed_by")
    }
    if not reviews:
        return
    orders = list(Order.objects.filter(run_id__in=reviews))
    for order in orders:
        assert order.run_id is not None  # selected by run
        review = reviews[order.run_id]
        order.review_id = review.pk
        order.review_state = review.state
        order.review_decided_by = review.resumed_by.get_username() if review.resumed_by else ""
        order.review_decided_at = review.resumed_at
        order.review_note = review.note
        order.review_deadline = review.deadline
    Order.objects.bulk_update(
        orders,
        [
            "review_id",
            "review_state",
            "review_decided_by",
            "review_decided_at",
            "review_note",
            "review_deadline",
        ],
    )
