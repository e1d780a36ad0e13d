"""Reads of the orders domain: what the API (and any other reader) shows of orders, their
runs and their fraud reviews. Writes live in `orders.services`."""

from datetime import datetime
from typing import TypedDict, TypeVar
from uuid import UUID

from django.contrib.auth.models import Permission, User
from django.core.exceptions import ObjectDoesNotExist, ValidationError
from django.db.models import (
    Exists,
    Model,
    OuterRef,
    Prefetch,
    Q,
    QuerySet,
)
from django.utils import timezone

from workflows.console.presenters import waiting_for_text
from workflows.engine.errors import RunNotFoundError
from workflows.engine.selectors import (
    retry_waits_open,
    run_get_with_steps,
    run_waiting_for,
)
from workflows.models import RunStatus, WaitStatus, WorkflowRun

from .errors import NotFound
from .models import (
    CONFIRMATION_SENT,
    EmailRecord,
    FraudReview,
    FraudReviewClaim,
    Order,
    OrderStatus,
    ReviewState,
    claim_duration,
)
from .risk import reviews_with_risk
from .roles import DECIDE_PERMISSION

_M = TypeVar("_M", bound=Model)

# An order whose run stopped (failed, or cancelled behind the order's back) before the
# order was settled: shown as this status, with the run's error as the reason, until
# `retry_run` continues it or `cancel_order` releases its money. Derived from the run on
# every read, so it cannot lag behind the run (a retry, a timeout, a dead worker).
NEEDS_ATTENTION = "needs_attention"
ORDER_STATUS_CHOICES = [*OrderStatus.choices, (NEEDS_ATTENTION, "Needs attention")]
UNSETTLED_STATUSES = (OrderStatus.PROCESSING, OrderStatus.AWAITING_REVIEW)
_RUN_STOPPED = (RunStatus.FAILED, RunStatus.CANCELLED)
_NEEDS_ATTENTION = Q(status__in=UNSETTLED_STATUSES, run__status__in=_RUN_STOPPED)


def order_attention(order: Order) -> str | None:
    """Why the order needs a person, or None: its run stopped while it was unsettled."""
    run = order.run
    if run is None or run.status not in _RUN_STOPPED or order.status not in UNSETTLED_STATUSES:
        return None
    return f"run {run.status}: {run.error or 'no error recorded'}"


def order_status_shown(order: Order) -> str:
    """The order's status as readers see it: its own, or NEEDS_ATTENTION."""
    return NEEDS_ATTENTION if order_attention(order) else order.status


def order_failure_shown(order: Order) -> str:
    """Why the order failed, was rejected or needs attention."""
    return order_attention(order) or order.failure_reason


def order_waiting_for(order: Order) -> str | None:
    """While the order's run waits out an outage of one of its dependencies, what for:
    "waiting for Stripe (attempt 6, next at 14:02:10 UTC)"; None otherwise. The order's
    status stays what it was (processing): a dependency that is down delays it."""
    run = order.run
    waiting = run_waiting_for(run) if run is not None else None
    return waiting_for_text(waiting) if waiting is not None else None


def orders_in_status(orders: QuerySet[Order], status: str) -> QuerySet[Order]:
    """`orders` whose shown status (`order_status_shown`) is `status`."""
    if status == NEEDS_ATTENTION:
        return orders.filter(_NEEDS_ATTENTION)
    return orders.filter(status=status).exclude(_NEEDS_ATTENTION)


class ReviewInfo(TypedDict):
    id: int
    state: str
    decided_by: str | None
    decided_at: datetime | None
    note: str
    deadline: datetime


# Whether an order's confirmation went out, read with the order in one query (see
# `order_email_sent`).
EMAIL_SENT_ANNOTATION = {
    "email_sent_annotated": Exists(
        EmailRecord.objects.filter(CONFIRMATION_SENT, order=OuterRef("pk"))
    )
}


def _orders() -> QuerySet[Order]:
    # One query for the page, plus one for all its reviews: `email_sent` and the review
    # would otherwise cost two queries per order.
    return (
        Order.objects.select_related("run")
        .annotate(**EMAIL_SENT_ANNOTATION)
        .prefetch_related(
            Prefetch(
                "run__waits",
                queryset=FraudReview.objects.select_related("resumed_by"),
                to_attr="fraud_reviews",
            ),
            Prefetch("run__waits", queryset=retry_waits_open(), to_attr="retry_waits"),
        )
    )


def _one(queryset: QuerySet[_M], **lookups: object) -> _M:
    """The one object matching `lookups`, or `NotFound` worded as Django's
    `get_object_or_404` words it (the API has always answered so)."""
    try:
        return queryset.get(**lookups)
    except ObjectDoesNotExist:
        raise NotFound(f"No {queryset.model._meta.object_name} matches the given query.") from None


def order_as_created(*, order: Order) -> Order:
    """The order `order_create` has just made, with what `_orders()` adds to a read filled
    in as it was at creation (no confirmation, no fraud review, no retry wait yet): its
    201 shows the order as created, without reading the row back."""
    # The names `_orders()` annotates and prefetches into, which the models do not declare.
    order.email_sent_annotated = False  # type: ignore[attr-defined]
    if order.run is not None:
        order.run.fraud_reviews = []  # type: ignore[attr-defined]
        order.run.retry_waits = []  # type: ignore[attr-defined]
    return order


def order_get(*, order_id: str, client: User | None = None) -> Order:
    """For staff tools (commands): the order with that id, the `client`'s if given.
    `NotFound` if none; without a client, `Order.MultipleObjectsReturned` when clients
    share the id, so that a command never acts on a guess."""
    orders = _orders() if client is None else _orders().filter(client=client)
    return _one(orders, order_id=order_id)


def order_get_for(*, client: User, order_id: str) -> Order:
    """The API client's own order with that id, or `NotFound`: another client's order is
    not found either, so ids never leak between clients."""
    return _one(_orders(), client=client, order_id=order_id)


def order_list_for(*, client: User, status: str | None = None) -> QuerySet[Order]:
    """The API client's own orders, as `orders_list` gives them."""
    return orders_list(status=status).filter(client=client)


# A fork of a fork of ... : how far a client's run may be from the run its order has now.
MAX_FORK_DEPTH = 10


def _owns_run_or_its_fork(*, client: User, run_id: UUID | str) -> bool:
    """One query for the usual case (the order's current run); the fork lineage is
    walked only for a run the order has moved on from."""
    orders = Order.objects.filter(client=client)
    if orders.filter(run__pk=run_id).exists():
        return True
    lineage: set[UUID | str] = {run_id}
    for _ in range(MAX_FORK_DEPTH):  # the order moves to the newest fork
        forks = set(
            WorkflowRun.objects.filter(forked_from__in=lineage).values_list("pk", flat=True)
        )
        if forks <= lineage:
            return False
        lineage |= forks
        if orders.filter(run_id__in=forks).exists():
            return True
    return False


def run_get_for(*, client: User, run_id: UUID | str) -> WorkflowRun:
    """The run of one of the API client's orders (its current run, or one it was forked
    from), with its steps and waits; `NotFound` for another client's run, a run without
    an order, or a malformed id."""
    try:
        owned = _owns_run_or_its_fork(client=client, run_id=run_id)
    except (ValueError, ValidationError):
        owned = False
    if not owned:
        raise NotFound(f"No run {run_id}")
    try:
        return run_get_with_steps(run_id=run_id)
    except RunNotFoundError as exc:
        raise NotFound(str(exc)) from exc


def orders_list(*, status: str | None = None) -> QuerySet[Order]:
    """Orders, newest first, optionally only those in shown `status` (NEEDS_ATTENTION
    included); runs joined, reviews
    prefetched, so that listing a page costs a constant number of queries."""
    orders = _orders()
    if status:
        orders = orders_in_status(orders, status)
    return orders


def order_email_sent(order: Order) -> bool:
    """Whether the confirmation went out, from `EMAIL_SENT_ANNOTATION` when the order was
    read with it."""
    annotated = getattr(order, "email_sent_annotated", None)
    return order.email_sent if annotated is None else bool(annotated)


def order_fraud_review(*, order: Order) -> FraudReview | None:
    """The order's fraud review (the wait of its run), read now; None when its run never
    opened one."""
    return FraudReview.objects.filter(run_id=order.run_id).first()


def _order_fraud_review_listed(order: Order) -> FraudReview | None:
    """The order's fraud review, from the list's prefetch when there is one."""
    run = order.run
    if run is not None and hasattr(run, "fraud_reviews"):
        return run.fraud_reviews[0] if run.fraud_reviews else None
    return order_fraud_review(order=order)


def order_review_info(order: Order) -> ReviewInfo | None:
    """The order's fraud review as clients see it, or None when the order never needed
    one. Read from the run's wait (the review's record), so it cannot disagree with the
    suspended workflow; once retention pruned the run's history, from the copy the
    order kept (`services.retention`)."""
    review = _order_fraud_review_listed(order)
    if review is None:
        if order.review_id is None or order.review_deadline is None:
            return None
        return ReviewInfo(
            id=order.review_id,
            state=order.review_state,
            decided_by=order.review_decided_by or None,
            decided_at=order.review_decided_at,
            note=order.review_note,
            deadline=order.review_deadline,
        )
    return ReviewInfo(
        id=review.pk,
        state=str(review.state),
        decided_by=review.resumed_by.get_username() if review.resumed_by else None,
        decided_at=review.resumed_at,
        note=review.note,
        deadline=review.deadline,
    )


# --- the fraud reviewers and their reviews --------------------------------------------


def reviewers_to_tell() -> QuerySet[User]:
    """Who is told about reviews (alerts and reminders): every active user with an email
    address who holds the decide permission, through a group or directly, i.e. who may
    decide in the admin or the API. Superusers (whom Django grants every permission)
    only when nobody holds it explicitly: a review never opens unannounced, and a team
    with named reviewers does not copy every administrator on every alert."""
    app_label, _, codename = DECIDE_PERMISSION.partition(".")
    permission = Permission.objects.filter(content_type__app_label=app_label, codename=codename)
    users = User.objects.filter(is_active=True).exclude(email="").order_by("email")
    holders = users.filter(
        Q(groups__permissions__in=permission) | Q(user_permissions__in=permission)
    ).distinct()
    return holders if holders.exists() else users.filter(is_superuser=True)


REVIEW_STATE_CHOICES = ReviewState.choices
# The largest id a review (a BigAutoField) can have: a longer one is a 404, not a
# database error.
_MAX_ID = 2**63 - 1


def _reviews(state: str | None = None) -> QuerySet[FraudReview]:
    # Only a review of its order's current run: a run the order was forked away from
    # keeps its wait, but deciding it would resume nothing the order still follows.
    reviews = FraudReview.objects.filter(run__order__isnull=False)
    if state:
        reviews = reviews.in_state(state)
    return reviews_with_risk(reviews.select_related("resumed_by", "run__order__client"))


def reviews_list(*, state: str | None = None) -> QuerySet[FraudReview]:
    """Every client's fraud reviews, the most urgent first (nearest deadline), with
    their orders joined and risk figures annotated: a page costs one query."""
    return _reviews(state).order_by("deadline", "pk")


def review_get(*, review_id: int | str) -> FraudReview:
    """The fraud review with that id (ids are global, across clients), with its order
    and risk figures; `NotFound` for an unknown or malformed id."""
    try:
        pk = int(str(review_id))
    except ValueError:
        pk = 0
    if not 0 < pk <= _MAX_ID:
        raise NotFound(f"No fraud review {review_id}")
    try:
        return _reviews().get(pk=pk)
    except FraudReview.DoesNotExist:
        raise NotFound(f"No fraud review {review_id}") from None


def review_order(review: FraudReview) -> Order:
    """The order a review (from `reviews_list` or `review_get`) is about."""
    order: Order = review.run.order
    return order


# --- the reviewers' desk: open reviews, claims, what comes next -------------------------


def reviews_open(*, now: datetime | None = None) -> QuerySet[FraudReview]:
    """Reviews still to be decided: pending, their deadline ahead."""
    return FraudReview.objects.pending().filter(deadline__gt=now or timezone.now())


def reviews_open_count() -> int:
    return reviews_open().count()


def claims_live(*, now: datetime | None = None) -> Q:
    """On a FraudReview queryset: the review carries a claim that has not lapsed."""
    return Q(claim__claimed_at__gt=(now or timezone.now()) - claim_duration())


def review_claim_live(
    review: FraudReview, *, now: datetime | None = None
) -> FraudReviewClaim | None:
    """The review's claim if it is live and the review still open (a decided review is
    nobody's any more); from `select_related("claim__claimed_by")` when the queryset
    has it."""
    if review.status != WaitStatus.WAITING:
        return None
    try:
        claim = review.claim
    except FraudReviewClaim.DoesNotExist:
        return None
    return claim if claim.is_live(now) else None


def review_next(
    *, after: FraudReview | None, user: User, now: datetime | None = None
) -> FraudReview | None:
    """The next open review in the queue's order (the deadline first) after `after`,
    wrapping round to the first; those claimed by someone else are skipped."""
    now = now or timezone.now()
    candidates = (
        reviews_open(now=now)
        .exclude(claims_live(now=now) & ~Q(claim__claimed_by=user))
        .order_by("deadline", "pk")
    )
    if after is None:
        return candidates.first()
    candidates = candidates.exclude(pk=after.pk)
    later = Q(deadline__gt=after.deadline) | Q(deadline=after.deadline, pk__gt=after.pk)
    return candidates.filter(later).first() or candidates.first()
