"""Risk signals for fraud reviewers: what the customer did before, how fast, how this
amount compares, how new the email domain is, and what Stripe thought of the charge.

Reads only (selectors). Every figure is a correlated subquery on the order's row, so a
review page costs one query and a page of the queue one query for all its rows,
whatever the history size.

"History" is the customer's (`customer_id`: a Stripe customer, one account for every
API client) orders created before this one. Totals and the average are in this order's
currency, over its completed orders (whatever happened to their money later). Refunds and
disputes are the orders' current `payment_status` (a dispute that was won is captured
again). Velocity counts the other orders of the 24 hours up to this one, by customer
and by email address (as normalized at intake).
"""

from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

from django.db.models import (
    DateTimeField,
    DecimalField,
    ExpressionWrapper,
    F,
    Func,
    IntegerField,
    OuterRef,
    Q,
    QuerySet,
    Subquery,
    Value,
)
from django.db.models.expressions import BaseExpression, Combinable
from django.db.models.functions import Coalesce, Lower, StrIndex, Substr

from .models import FraudReview, Order, OrderStatus, PaymentStatus
from .money import amount_display

VELOCITY_WINDOW = timedelta(hours=24)
# The queue's rows carry these annotations (see `reviews_with_risk`).
RISK_PREFIX = "risk_"


def email_domain(email: Any) -> Func:
    """The lowercase domain of an email column (or OuterRef), in SQL."""
    return Lower(Substr(email, StrIndex(email, Value("@")) + 1))


def _aggregate(queryset: QuerySet, function: str, field: str, output_field: Any) -> Subquery:
    # A plain SQL aggregate (not Django's, which would GROUP BY): one row per subquery.
    return Subquery(
        queryset.order_by()
        .annotate(value=Func(F(field), function=function, output_field=output_field))
        .values("value")
    )


def _count(queryset: QuerySet) -> Coalesce:
    return Coalesce(_aggregate(queryset, "COUNT", "pk", IntegerField()), 0)


def risk_annotations(*, order_path: str = "") -> dict[str, BaseExpression]:
    """The risk figures of the order at `order_path` ("" on an Order queryset,
    "run__order__" on a FraudReview one), as annotations named `risk_*`."""

    def outer(name: str) -> OuterRef:
        return OuterRef(f"{order_path}{name}")

    others = Order.objects.exclude(pk=outer("pk"))
    history = others.filter(customer_id=outer("customer_id"), created_at__lt=outer("created_at"))
    paid = history.filter(status=OrderStatus.COMPLETED, currency=outer("currency"))
    window: dict[str, Combinable] = {"created_at__gte": outer("created_at") - VELOCITY_WINDOW}
    window["created_at__lte"] = outer("created_at")
    domain_orders = Order.objects.annotate(domain=email_domain("customer_email")).filter(
        domain=email_domain(outer("customer_email"))
    )
    money: DecimalField[Decimal, Decimal] = DecimalField(max_digits=14, decimal_places=2)
    return {
        f"{RISK_PREFIX}orders": _count(history),
        f"{RISK_PREFIX}rejections": _count(history.filter(status=OrderStatus.REJECTED)),
        f"{RISK_PREFIX}refunds": _count(
            history.filter(
                payment_status__in=[PaymentStatus.REFUNDED, PaymentStatus.PARTIALLY_REFUNDED]
            )
        ),
        f"{RISK_PREFIX}disputes": _count(history.filter(payment_status=PaymentStatus.DISPUTED)),
        f"{RISK_PREFIX}paid_orders": _count(paid),
        f"{RISK_PREFIX}paid_total": Coalesce(
            _aggregate(paid, "SUM", "amount", money), Value(Decimal(0)), output_field=money
        ),
        f"{RISK_PREFIX}customer_24h": _count(
            others.filter(customer_id=outer("customer_id"), **window)
        ),
        f"{RISK_PREFIX}email_24h": _count(
            others.filter(customer_email=outer("customer_email"), **window)
        ),
        f"{RISK_PREFIX}domain_first_seen": _aggregate(
            domain_orders, "MIN", "created_at", DateTimeField()
        ),
    }


@dataclass(frozen=True)
class RiskSignals:
    """One order's risk figures, as the review page and the queue show them."""

    orders: int  # the customer's earlier orders, any status and currency
    rejections: int
    refunds: int  # refunded in full or in part
    disputes: int
    paid_orders: int  # completed, in this order's currency
    paid_total: Decimal
    currency: str
    average: Decimal | None  # of the completed orders; None without any
    amount_ratio: Decimal | None  # this amount / the average
    customer_24h: int  # other orders by this customer in the 24 h up to this one
    email_24h: int  # ... and by this email address
    email_domain: str
    domain_first_seen: datetime | None
    domain_new: bool  # this order is the domain's first
    stripe_risk_level: str
    stripe_risk_score: int | None

    @property
    def history_text(self) -> str:
        if not self.orders:
            return "first order"
        flags = [
            f"{n} {label}"
            for n, label in (
                (self.rejections, "rejected"),
                (self.refunds, "refunded"),
                (self.disputes, "disputed"),
            )
            if n
        ]
        return f"{self.orders} before" + (f" ({', '.join(flags)})" if flags else "")

    @property
    def paid_text(self) -> str:
        text = f"{self.paid_orders} completed, {amount_display(self.paid_total, self.currency)}"
        if self.average is None:
            return f"{text} in total"
        return f"{text} in total, {amount_display(self.average, self.currency)} on average"

    @property
    def ratio_text(self) -> str:
        return f"{self.amount_ratio}x" if self.amount_ratio is not None else "no paid orders"

    @property
    def velocity_text(self) -> str:
        return f"{self.customer_24h} by customer, {self.email_24h} by email"

    @property
    def domain_text(self) -> str:
        if self.domain_new or self.domain_first_seen is None:
            return f"{self.email_domain}: new"
        return f"{self.email_domain}: since {self.domain_first_seen:%Y-%m-%d}"

    @property
    def stripe_text(self) -> str:
        if not self.stripe_risk_level and self.stripe_risk_score is None:
            return "—"
        score = f" ({self.stripe_risk_score})" if self.stripe_risk_score is not None else ""
        return f"{self.stripe_risk_level or 'unknown'}{score}"


# --- the flags a reviewer reads first, coloured by level --------------------------------

# "x the customer's average" at or above this is high (red, and the queue's filter);
# at or above RATIO_WARN, worth a look (amber).
RATIO_HIGH = Decimal("3")
RATIO_WARN = Decimal("1.5")
# Other orders in the 24 hours before, by the same customer or email address.
VELOCITY_HIGH = 3
# Stripe's Radar levels (`outcome.risk_level`).
STRIPE_LEVELS = {"highest": "high", "elevated": "warn", "normal": "ok"}


@dataclass(frozen=True)
class RiskFlag:
    """One signal as a coloured chip: `level` is "high", "warn", "ok" or "none"; `short`
    is the queue's narrower text."""

    name: str
    text: str
    level: str
    detail: str = ""
    short: str = ""


def risk_flags(risk: RiskSignals) -> list[RiskFlag]:
    """The six flags of the review page's decision bar, in the order a reviewer reads
    them; the queue's risk columns show the same chips."""
    domain = (
        RiskFlag(
            "domain",
            f"new domain {risk.email_domain}",
            "high",
            "its first order",
            f"new: {risk.email_domain}",
        )
        if risk.domain_new or risk.domain_first_seen is None
        else RiskFlag(
            "domain",
            risk.email_domain,
            "ok",
            f"first seen {risk.domain_first_seen:%Y-%m-%d}",
            risk.email_domain,
        )
    )
    ratio = risk.amount_ratio
    if ratio is None:
        average = RiskFlag(
            "ratio", "no paid orders", "warn", "nothing to compare with", "none paid"
        )
    else:
        level = "high" if ratio >= RATIO_HIGH else "warn" if ratio >= RATIO_WARN else "ok"
        average = RiskFlag(
            "ratio", f"{ratio}\u00d7 average", level, risk.paid_text, f"{ratio}\u00d7"
        )
    recent = max(risk.customer_24h, risk.email_24h)
    velocity = RiskFlag(
        "velocity",
        f"{recent} in 24 h",
        "high" if recent >= VELOCITY_HIGH else "warn" if recent else "ok",
        risk.velocity_text,
        str(recent),
    )
    rejections = RiskFlag(
        "rejections",
        f"{risk.rejections} rejected before" if risk.rejections else "none rejected",
        "high" if risk.rejections else "ok",
        f"{risk.orders} earlier orders",
        f"{risk.rejections} rejected" if risk.rejections else "none",
    )
    if risk.disputes or risk.refunds:
        parts = [
            f"{n} {label}"
            for n, label in ((risk.refunds, "refunded"), (risk.disputes, "disputed"))
            if n
        ]
        text = ", ".join(parts)
        level = "high" if risk.disputes else "warn"
        money_back = RiskFlag("refunds", text, level, short=text)
    else:
        money_back = RiskFlag("refunds", "no refunds or disputes", "ok", short="none")
    stripe = RiskFlag(
        "stripe",
        f"Stripe {risk.stripe_text}",
        STRIPE_LEVELS.get(risk.stripe_risk_level, "none"),
        "Stripe Radar's risk level (score)",
        risk.stripe_text,
    )
    return [domain, average, velocity, rejections, money_back, stripe]


def reviews_domain_new(reviews: QuerySet[FraudReview]) -> QuerySet[FraudReview]:
    """Of `reviews_with_risk`'s rows, those whose email domain is new (the order is its
    first), as `RiskSignals.domain_new` says."""
    return reviews.filter(
        Q(**{f"{RISK_PREFIX}domain_first_seen__isnull": True})
        | Q(**{f"{RISK_PREFIX}domain_first_seen__gte": F("run__order__created_at")})
    )


def reviews_ratio_high(reviews: QuerySet[FraudReview]) -> QuerySet[FraudReview]:
    """Of `reviews_with_risk`'s rows, those whose amount is at least RATIO_HIGH times the
    customer's average, as shown (the ratio is shown rounded to 0.1, half up)."""
    shown_high = RATIO_HIGH - Decimal("0.05")
    return reviews.filter(
        **{f"{RISK_PREFIX}paid_orders__gt": 0},
        **{
            f"{RISK_PREFIX}paid_total__lte": ExpressionWrapper(
                F("run__order__amount") * F(f"{RISK_PREFIX}paid_orders") / shown_high,
                output_field=DecimalField(max_digits=20, decimal_places=6),
            )
        },
    )


def _signals(order: Order, values: dict[str, Any]) -> RiskSignals:
    paid_orders = values["paid_orders"]
    paid_total = Decimal(values["paid_total"] or 0)
    average = (paid_total / paid_orders).quantize(Decimal("0.01")) if paid_orders else None
    ratio = None
    if average:
        ratio = (order.amount / average).quantize(Decimal("0.1"), rounding=ROUND_HALF_UP)
    first_seen = values["domain_first_seen"]
    return RiskSignals(
        orders=values["orders"],
        rejections=values["rejections"],
        refunds=values["refunds"],
        disputes=values["disputes"],
        paid_orders=paid_orders,
        paid_total=paid_total,
        currency=order.currency,
        average=average,
        amount_ratio=ratio,
        customer_24h=values["customer_24h"],
        email_24h=values["email_24h"],
        email_domain=order.customer_email.rpartition("@")[2].lower(),
        domain_first_seen=first_seen,
        domain_new=first_seen is None or first_seen >= order.created_at,
        stripe_risk_level=order.stripe_risk_level,
        stripe_risk_score=order.stripe_risk_score,
    )


_FIGURES = (
    "orders",
    "rejections",
    "refunds",
    "disputes",
    "paid_orders",
    "paid_total",
    "customer_24h",
    "email_24h",
    "domain_first_seen",
)


def _values_of(obj: Any) -> dict[str, Any]:
    return {name: getattr(obj, f"{RISK_PREFIX}{name}") for name in _FIGURES}


def order_risk_signals(*, order: Order) -> RiskSignals:
    """The order's risk figures: one query."""
    annotated = Order.objects.annotate(**risk_annotations()).get(pk=order.pk)
    return _signals(annotated, _values_of(annotated))


def reviews_with_risk(reviews: QuerySet[FraudReview]) -> QuerySet[FraudReview]:
    """`reviews` with their orders joined and every risk figure annotated: the queue's
    page is one query however many rows and however long the histories."""
    return reviews.select_related("run__order").annotate(
        **risk_annotations(order_path="run__order__")
    )


def review_risk_signals(*, review: FraudReview) -> RiskSignals | None:
    """The risk figures of the review's order, from `reviews_with_risk`'s annotations
    (read again if the review came without them); None if the run has no order."""
    if not hasattr(review, f"{RISK_PREFIX}orders"):
        review = reviews_with_risk(FraudReview.objects.filter(pk=review.pk)).get()
    order = getattr(review.run, "order", None) if review.run_id else None
    if order is None:
        return None
    return _signals(order, _values_of(review))
