"""The cells of the fraud-review queue and page: state badge, amounts, time left, risk
chips (coloured by level, see orders/risk.py) and the claimant's name."""

from collections.abc import Callable
from dataclasses import replace
from typing import Any

from django.contrib import admin
from django.utils.html import format_html, format_html_join

from workflows.models import WaitStatus

from ..models import FraudReview, FraudReviewClaim, ReviewState
from ..money import amount_grouped
from ..risk import RiskFlag, risk_flags
from .common import EMPTY

STATE_COLOURS = {
    ReviewState.PENDING: "#b26b00",
    ReviewState.APPROVED: "#1e7e34",
    ReviewState.REJECTED: "#ba2121",
    ReviewState.EXPIRED: "#666",
    ReviewState.CANCELLED: "#666",
}


def time_left(review: FraudReview) -> str:
    """Humanized time until the deadline; "expired" past it; "—" once decided."""
    if review.status == WaitStatus.EXPIRED:
        return "expired"
    return review.time_left_text() if review.status == WaitStatus.WAITING else EMPTY


def state_badge(review: FraudReview) -> str:
    state = review.state
    return format_html(
        '<span class="review-state" style="display:inline-block;padding:1px 8px;'
        'border-radius:9px;color:#fff;background:{};font-size:11px;font-weight:600">{}</span>',
        STATE_COLOURS.get(state, "#666"),
        state.label,
    )


def amount_text(review: FraudReview) -> str:
    """The amount as the workflow recorded it, already in the currency's decimals."""
    return f"{review.data.get('amount', '?')} {str(review.data.get('currency', '')).upper()}"


def amount_big(review: FraudReview) -> str:
    """The amount grouped for reading at a glance: "2,500.00 USD"."""
    currency = str(review.data.get("currency", ""))
    return f"{amount_grouped(review.amount, currency)} {currency.upper()}"


def flag_chip(flag: RiskFlag) -> str:
    # A chip shortens a long text (a long email domain) with an ellipsis: the title has it all.
    return format_html(
        '<span class="risk-chip risk-{} risk-flag-{}" title="{}">{}</span>',
        flag.level,
        flag.name,
        f"{flag.text}: {flag.detail}" if flag.detail else flag.text,
        flag.text,
    )


def claimant_name(claim: FraudReviewClaim | None) -> str:
    return claim.claimed_by.get_username() if claim else ""


def risk_column(description: str, *flag_names: str) -> Callable[[Any, FraudReview], str]:
    """A review-queue column showing the review's risk flags `flag_names` (see
    orders/risk.py) as narrow chips."""

    @admin.display(description=description)
    def column(model_admin: Any, review: FraudReview) -> str:
        risk = model_admin._risk(review)
        if not risk:
            return EMPTY
        flags = [f for f in risk_flags(risk) if f.name in flag_names]
        shown = [f for f in flags if f.level != "ok"] or flags[:1]
        return format_html_join(
            " ", "{}", ((flag_chip(replace(f, text=f.short or f.text)),) for f in shown)
        )

    return column
