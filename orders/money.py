"""Currencies and money: the one place that knows how many decimals a currency has.

Amounts are `Decimal` in major units inside the service and integers in the currency's
minor unit at Stripe, as https://docs.stripe.com/currencies documents it: most
currencies have two decimals (12.34 USD is 1234), zero-decimal ones none (500 JPY is
500, not 50000). Three-decimal currencies and Stripe's special cases (amounts that must
be multiples of 100, or decimals that Stripe rounds away) are refused, not guessed.
"""

from decimal import Decimal, InvalidOperation

# https://docs.stripe.com/currencies#zero-decimal
ZERO_DECIMAL_CURRENCIES = frozenset(
    "bif clp djf gnf jpy kmf krw mga pyg rwf ugx vnd vuv xaf xof xpf".split()
)
# https://docs.stripe.com/currencies#three-decimal: Stripe wants the last digit 0.
THREE_DECIMAL_CURRENCIES = frozenset("bhd jod kwd omr tnd".split())
# https://docs.stripe.com/currencies#special-cases: not handled here either.
SPECIAL_CASE_CURRENCIES = frozenset("isk huf twd".split())


class CurrencyError(ValueError):
    """A currency this service cannot handle (malformed, three-decimal, special case)."""


def currency_normalize(currency: str) -> str:
    """The lowercase ISO 4217 code Stripe expects; `CurrencyError` if it is not one we
    can handle."""
    code = currency.strip().lower() if isinstance(currency, str) else ""
    if len(code) != 3 or not code.isascii() or not code.isalpha():
        raise CurrencyError(f"{currency!r} is not a three-letter currency code")
    if code in THREE_DECIMAL_CURRENCIES:
        raise CurrencyError(f"{code.upper()} has three decimals, which are not supported")
    if code in SPECIAL_CASE_CURRENCIES:
        raise CurrencyError(f"{code.upper()} is a Stripe special case, which is not supported")
    return code


def currency_decimals(currency: str) -> int:
    """How many decimals the currency's amounts have (0 or 2)."""
    return 0 if currency_normalize(currency) in ZERO_DECIMAL_CURRENCIES else 2


def amount_quantum(currency: str) -> Decimal:
    """The smallest amount of the currency: Decimal("0.01"), or Decimal("1")."""
    return Decimal(1).scaleb(-currency_decimals(currency))


def amount_fits(amount: Decimal, currency: str) -> bool:
    """Whether the amount is a whole number of the currency's minor units."""
    try:
        return amount.is_finite() and amount == amount.quantize(amount_quantum(currency))
    except InvalidOperation:  # too many digits to quantize
        return False


def to_minor_units(amount: Decimal, currency: str) -> int:
    """12.34 USD → 1234; 500 JPY → 500. `ValueError` for a fraction of a minor unit."""
    if not amount_fits(amount, currency):
        raise ValueError(
            f"{amount} {currency.upper()} is not a whole number of "
            f"{currency.upper()} minor units ({currency_decimals(currency)} decimals)"
        )
    return int(amount.scaleb(currency_decimals(currency)))


def from_minor_units(value: int, currency: str) -> Decimal:
    """1234 USD cents → Decimal("12.34"); 500 JPY → Decimal("500")."""
    return Decimal(value).scaleb(-currency_decimals(currency)).quantize(amount_quantum(currency))


def amount_plain(amount: Decimal, currency: str) -> str:
    """The amount with the currency's decimals and no grouping: "49.90", "500". Never
    raises, so a page that shows a bad row still renders."""
    try:
        return f"{amount.quantize(amount_quantum(currency)):f}"
    except (CurrencyError, InvalidOperation, TypeError, AttributeError):
        return str(amount)


def amount_grouped(amount: Decimal, currency: str) -> str:
    """The amount for prose (emails), without the code: "1,234.50", "150,000" (JPY).
    Never raises."""
    try:
        return f"{amount:,.{currency_decimals(currency)}f}"
    except (CurrencyError, InvalidOperation, TypeError, ValueError):
        return str(amount)


def amount_display(amount: Decimal, currency: str) -> str:
    """The amount with its code, as the admin shows it: "1234.50 USD", "150000 JPY"."""
    return f"{amount_plain(amount, currency)} {str(currency).upper()}"
