"""The fraud policy: which orders a person must review before they are confirmed.

The threshold is an amount of money, so it is set per currency
(`FRAUD_REVIEW_THRESHOLDS`): 5000 JPY is about 33 USD, not 5000. The service, the
workflow and the simulated model all ask `fraud_review_required`, so they cannot
disagree; the model's prompt states each order's rule (`fraud_review_rule_text`), read
from settings when the agent is invoked.
"""

import logging
from decimal import Decimal

from django.conf import settings
from django.core import checks

from .money import CurrencyError, amount_plain, currency_decimals

logger = logging.getLogger(__name__)

# Without a threshold for a currency, every order in it is reviewed: the safe side.
REVIEW_EVERYTHING = Decimal(0)


def fraud_review_threshold(*, currency: str) -> Decimal | None:
    """The amount above which an order in `currency` is reviewed, or None when none is
    configured. Two-decimal currencies default to `FRAUD_REVIEW_THRESHOLD` (USD's)."""
    currency = currency.lower()
    thresholds = settings.FRAUD_REVIEW_THRESHOLDS
    if currency in thresholds:
        return Decimal(thresholds[currency])
    try:
        two_decimals = currency_decimals(currency) == 2
    except CurrencyError:
        return None
    return Decimal(settings.FRAUD_REVIEW_THRESHOLD) if two_decimals else None


def fraud_review_required(*, amount: Decimal, currency: str) -> bool:
    """Whether an order of `amount` `currency` waits for a reviewer: strictly above the
    currency's threshold, or always when the currency has none."""
    threshold = fraud_review_threshold(currency=currency)
    if threshold is None:
        logger.warning(
            "no fraud review threshold for %s (FRAUD_REVIEW_THRESHOLDS): reviewing the order",
            currency.upper(),
        )
        threshold = REVIEW_EVERYTHING
    return amount > threshold


def fraud_review_rule_text(*, currency: str) -> str:
    """The rule `fraud_review_required` applies to `currency`, in words for the agent's
    prompt: the threshold, or that every order in it is reviewed."""
    threshold = fraud_review_threshold(currency=currency)
    code = currency.upper()
    if threshold is None:
        return f"Every {code} order needs fraud review."
    return f"The fraud review threshold is {amount_plain(threshold, currency)} {code}."


def payment_capture_now(*, amount: Decimal, currency: str) -> bool:
    """Whether an order's payment is captured at once, or only authorized (a hold,
    `capture_method=manual`) until its review: Stripe's advice for manual review, so a
    rejected order is released instead of refunded. The one place that decides it, in
    code, whatever the model asked."""
    return not fraud_review_required(amount=amount, currency=currency)


@checks.register(checks.Tags.compatibility)
def check_review_timeout(**kwargs: object) -> list[checks.CheckMessage]:
    """A review that could last longer than a card authorization would capture an
    expired hold: refuse the configuration."""
    lifetime = settings.PAYMENT_AUTHORIZATION_DAYS * 86_400
    if settings.FRAUD_REVIEW_TIMEOUT > lifetime:
        return [
            checks.Error(
                f"FRAUD_REVIEW_TIMEOUT ({settings.FRAUD_REVIEW_TIMEOUT} s) is longer than a "
                f"card authorization lives (PAYMENT_AUTHORIZATION_DAYS="
                f"{settings.PAYMENT_AUTHORIZATION_DAYS}, {lifetime} s).",
                hint="Orders under review are held, not charged: shorten the review timeout.",
                id="orders.E002",
            )
        ]
    return []


@checks.register(checks.Tags.compatibility)
def check_currencies(**kwargs: object) -> list[checks.CheckMessage]:
    """Every accepted currency can be charged and has a fraud threshold."""
    problems: list[checks.CheckMessage] = []
    for currency in settings.ORDER_CURRENCIES:
        try:
            currency_decimals(currency)
        except CurrencyError as exc:
            problems.append(checks.Error(f"ORDER_CURRENCIES: {exc}", id="orders.E001"))
            continue
        if fraud_review_threshold(currency=currency) is None:
            problems.append(
                checks.Warning(
                    f"{currency.upper()} has no fraud review threshold, so every {currency.upper()}"
                    " order waits for a reviewer.",
                    hint=f"Add it to FRAUD_REVIEW_THRESHOLDS, e.g. {currency}:150000.",
                    id="orders.W001",
                )
            )
    return problems
