"""What makes an order acceptable, whichever door it comes through.

`OrderPayload` (orders.schemas) applies these checks, and every entry point builds
one: the API's serializer, the console's start form (through the workflow's input
model), `process_order`, `demo` and `order_create` itself. An idempotency key and a
reviewer's note are texts under the same rules, checked by `order_create` and
`review_decide` (and first by the API, to answer per field). Nothing else holds a rule,
so the doors cannot drift apart, and no row that breaks a page or a log can be written.
"""

import re
import unicodedata
from decimal import Decimal
from typing import Any

from django.conf import settings
from pydantic import ValidationError
from pydantic.networks import validate_email
from pydantic_core import PydanticCustomError

from .money import (
    CurrencyError,
    amount_fits,
    amount_quantum,
    currency_decimals,
    currency_normalize,
    from_minor_units,
)

ORDER_ID_MAX_LENGTH = 64
# Safe in URLs, HTML, logs and Stripe metadata as they are.
ORDER_ID_PATTERN = re.compile(r"[A-Za-z0-9_.:-]{1,64}")
CUSTOMER_ID_MAX_LENGTH = 255
EMAIL_MAX_LENGTH = 254  # RFC 5321, and Order.customer_email's column
IDEMPOTENCY_KEY_MAX_LENGTH = 255  # Order.idempotency_key's column
REVIEW_NOTE_MAX_LENGTH = 1000
# An amount written as text: ASCII digits and at most one dot. Decimal() alone would
# also read "1_000", "1e3", full-width and Arabic-Indic digits.
AMOUNT_TEXT_PATTERN = re.compile(r"-?(?:[0-9]+\.?[0-9]*|\.[0-9]+)")

# Stripe's minimum charge per currency (https://docs.stripe.com/currencies#minimum-and-
# maximum-charge-amounts); other currencies: one minor unit.
MIN_AMOUNTS = {
    "usd": Decimal("0.50"),
    "aed": Decimal("2.00"),
    "aud": Decimal("0.50"),
    "bgn": Decimal("1.00"),
    "brl": Decimal("0.50"),
    "cad": Decimal("0.50"),
    "chf": Decimal("0.50"),
    "czk": Decimal("15.00"),
    "dkk": Decimal("2.50"),
    "eur": Decimal("0.50"),
    "gbp": Decimal("0.30"),
    "hkd": Decimal("4.00"),
    "inr": Decimal("0.50"),
    "jpy": Decimal("50"),
    "mxn": Decimal("10.00"),
    "myr": Decimal("2.00"),
    "nok": Decimal("3.00"),
    "nzd": Decimal("0.50"),
    "pln": Decimal("2.00"),
    "ron": Decimal("2.00"),
    "sek": Decimal("3.00"),
    "sgd": Decimal("0.50"),
    "thb": Decimal("10.00"),
}
# Stripe takes at most eight digits of minor units (999,999.99 USD, 99,999,999 JPY),
# well inside Order.amount's column (12 digits, 2 decimals).
MAX_MINOR_UNITS = 99_999_999

# Control characters (C0, DEL, C1: CR, LF, ESC, NUL...), format characters (bidi
# overrides, zero-width), line and paragraph separators, lone surrogates.
_FORBIDDEN_CATEGORIES = frozenset({"Cc", "Cf", "Zl", "Zp", "Cs"})


class OrderRuleError(ValueError):
    """The value breaks one of the order rules; the message says which, for the client."""


def text_check(value: str, *, max_length: int, noun: str = "field") -> str:
    """A text of at most `max_length` characters, not only blanks (a customer id of
    spaces names nobody), with nothing that could forge a log line or hide text: no
    control, format or line-separator characters. `noun` names it in the messages."""
    if not value.strip():
        raise OrderRuleError(f"This {noun} may not be blank.")
    if len(value) > max_length:
        raise OrderRuleError(f"Ensure this {noun} has no more than {max_length} characters.")
    if any(unicodedata.category(ch) in _FORBIDDEN_CATEGORIES for ch in value):
        raise OrderRuleError(
            "Control characters (line breaks, tabs, escapes, NUL...) are not allowed."
        )
    return value


def order_id_check(value: str) -> str:
    text_check(value, max_length=ORDER_ID_MAX_LENGTH)
    if not ORDER_ID_PATTERN.fullmatch(value):
        raise OrderRuleError(
            f"Use 1 to {ORDER_ID_MAX_LENGTH} characters among letters, digits, "
            "'_', '.', ':' and '-'."
        )
    if not value.strip("."):
        # "." and ".." are path segments: every URL client resolves /orders/../ away.
        raise OrderRuleError("An order id may not be made only of dots.")
    return value


def customer_id_check(value: str) -> str:
    return text_check(value, max_length=CUSTOMER_ID_MAX_LENGTH)


def idempotency_key_check(value: str) -> str:
    """An `Idempotency-Key`: a text like any other (it is stored, logged and compared)."""
    return text_check(value, max_length=IDEMPOTENCY_KEY_MAX_LENGTH, noun="header")


def note_check(value: str) -> str:
    """A reviewer's note, without its surrounding blanks: optional, and otherwise a text
    like any other (no line breaks either: it is one remark, shown on one line)."""
    note = value.strip()
    if not note:
        return ""
    return text_check(note, max_length=REVIEW_NOTE_MAX_LENGTH, noun="note")


def email_check(value: str) -> str:
    """A deliverable-looking address (the syntax pydantic's `EmailStr` checks), in its
    normalized form."""
    text_check(value, max_length=EMAIL_MAX_LENGTH)
    try:
        _, email = validate_email(value)
    except PydanticCustomError:
        raise OrderRuleError("Enter a valid email address.") from None
    return email


def currency_check(value: str) -> str:
    """The lowercase code of an accepted currency (`ORDER_CURRENCIES`)."""
    allowed = [c.lower() for c in settings.ORDER_CURRENCIES]
    try:
        currency = currency_normalize(value)
    except CurrencyError as exc:
        raise OrderRuleError(f"{exc}; use one of {', '.join(allowed)}.") from None
    if currency not in allowed:
        raise OrderRuleError(f"Unknown currency {value!r}; use one of {', '.join(allowed)}.")
    return currency


def amount_min(currency: str) -> Decimal:
    return MIN_AMOUNTS.get(currency, from_minor_units(1, currency))


def amount_max(currency: str) -> Decimal:
    """Stripe's limit; `ORDER_MAX_AMOUNT` also caps two-decimal currencies (it is a
    USD-like figure, meaningless for yen)."""
    limit = from_minor_units(MAX_MINOR_UNITS, currency)
    if currency_decimals(currency) == 2:
        limit = min(limit, Decimal(settings.ORDER_MAX_AMOUNT))
    return limit


def amount_parse(value: Any) -> Decimal:
    """A number (an exact JSON number, or text) as an exact Decimal: 49.99 stays 49.99.
    The API reads JSON numbers as Decimal (orders.api.parsers): a float has already
    lost digits (49.999999999999999999 is 50.0), so only Python callers pass one."""
    if isinstance(value, bool):
        raise OrderRuleError("A valid number is required.")
    if isinstance(value, float | int):
        value = Decimal(str(value))
    elif isinstance(value, str):
        if not AMOUNT_TEXT_PATTERN.fullmatch(value):
            raise OrderRuleError(
                "A valid number is required. Use digits 0-9 and at most one '.', e.g. 49.99."
            )
        value = Decimal(value)
    if not isinstance(value, Decimal) or not value.is_finite():
        raise OrderRuleError("A valid number is required.")
    return value


def amount_check(amount: Decimal, currency: str | None) -> Decimal:
    """A finite amount within the currency's range, in whole minor units, written with
    the currency's decimals (250 USD is 250.00: the same request, the same order).
    Without a valid currency only the currency-free part is checked (its error is
    reported)."""
    if amount <= 0:
        raise OrderRuleError("The amount must be greater than 0.")
    if currency is None:
        return amount
    code = currency.upper()
    minimum, maximum = amount_min(currency), amount_max(currency)
    if amount > maximum:
        raise OrderRuleError(f"The amount must not be more than {maximum}.")
    if amount < minimum:
        raise OrderRuleError(f"The amount must be at least {minimum} ({code}).")
    if not amount_fits(amount, currency):
        decimals = currency_decimals(currency)
        raise OrderRuleError(
            f"Ensure that there are no more than {decimals} decimal places."
            if decimals
            else f"Ensure that there are no decimal places: {code} has no minor unit."
        )
    return amount.quantize(amount_quantum(currency))


def payload_errors(exc: ValidationError) -> dict[str, list[str]]:
    """An `OrderPayload`'s validation errors as field → messages, for the doors that
    answer per field (the API's 400, the commands' message)."""
    errors: dict[str, list[str]] = {}
    for error in exc.errors(include_url=False, include_input=False, include_context=False):
        field = str(error["loc"][0]) if error["loc"] else "non_field_errors"
        errors.setdefault(field, []).append(error["msg"])
    return errors


def payload_error_text(errors: dict[str, Any], names: dict[str, str] | None = None) -> str:
    """ "field: message; field: message", with fields renamed through `names`."""
    names = names or {}
    return "; ".join(
        f"{names.get(field, field)}: {' '.join(str(m) for m in messages)}"
        for field, messages in errors.items()
    )
