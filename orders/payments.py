"""Payment gateways: Stripe through the official SDK, and an offline simulation.

Amounts are `Decimal` in major units here and integers in minor units (cents) at
Stripe. Every create carries an idempotency key, so a retry after a lost answer
replays the first result instead of charging again.
"""

import hashlib
import logging
from dataclasses import dataclass
from decimal import Decimal
from functools import cache
from typing import Protocol

import stripe
from django.conf import settings

from workflows import NonRetryableError

logger = logging.getLogger(__name__)

# The simulated gateway declines this customer, and any amount whose cents are 13.
SIMULATED_DECLINED_CUSTOMER = "cus_declined"
SIMULATED_DECLINED_CENTS = 13


class PaymentDeclinedError(NonRetryableError):
    """The customer must fix something (card declined, insufficient funds...)."""

    def __init__(self, reason: str, *, code: str = "card_declined") -> None:
        self.reason = reason
        self.code = code
        super().__init__(f"Payment declined ({code}): {reason}")


class TransientPaymentError(Exception):
    """The gateway could not answer now (network, rate limit, 5xx): try again."""


@dataclass(frozen=True)
class Charge:
    charge_id: str
    status: str
    amount: Decimal
    currency: str


@dataclass(frozen=True)
class Refund:
    refund_id: str
    status: str
    amount: Decimal


class PaymentGateway(Protocol):
    name: str

    def charge(
        self,
        *,
        customer_id: str,
        amount: Decimal,
        currency: str,
        idempotency_key: str,
        metadata: dict[str, str],
    ) -> Charge: ...

    def refund(self, *, charge_id: str, amount: Decimal, idempotency_key: str) -> Refund: ...


def to_minor_units(amount: Decimal) -> int:
    if amount != amount.quantize(Decimal("0.01")):
        raise ValueError(f"{amount} has more than two decimal places")
    return int(amount * 100)


def from_minor_units(amount: int) -> Decimal:
    return (Decimal(amount) / 100).quantize(Decimal("0.01"))


class StripeGateway:
    """PaymentIntents confirmed off-session against the customer's default card."""

    name = "stripe"

    def __init__(self) -> None:
        if not settings.STRIPE_API_KEY:
            raise NonRetryableError("PAYMENT_GATEWAY=stripe needs STRIPE_API_KEY")
        options: dict = {"max_network_retries": settings.STRIPE_MAX_NETWORK_RETRIES}
        if settings.STRIPE_API_BASE:
            options["base_addresses"] = {"api": settings.STRIPE_API_BASE}
        self.client = stripe.StripeClient(settings.STRIPE_API_KEY, **options)

    def _call(self, operation, *args, **kwargs):  # type: ignore[no-untyped-def]
        try:
            return operation(*args, **kwargs)
        except stripe.CardError as exc:
            decline = getattr(exc.error, "decline_code", None) or exc.code or "card_declined"
            raise PaymentDeclinedError(exc.user_message or str(exc), code=decline) from None
        except (stripe.RateLimitError, stripe.APIConnectionError) as exc:
            raise TransientPaymentError(f"Stripe unavailable: {exc.user_message or exc}") from None
        except stripe.AuthenticationError:
            raise NonRetryableError(
                "Stripe refused the API key: set STRIPE_API_KEY to a valid secret key"
            ) from None
        except stripe.APIError as exc:
            raise TransientPaymentError(f"Stripe error: {exc.user_message or exc}") from None
        except stripe.StripeError as exc:
            raise NonRetryableError(
                f"Stripe rejected the request: {exc.user_message or exc}"
            ) from None

    def _default_payment_method(self, customer_id: str) -> str:
        customer = self._call(self.client.v1.customers.retrieve, customer_id)
        settings_ = customer.to_dict().get("invoice_settings") or {}
        method = settings_.get("default_payment_method")
        if not method:
            raise PaymentDeclinedError(
                f"customer {customer_id} has no default payment method",
                code="no_payment_method",
            )
        return method if isinstance(method, str) else method["id"]

    def charge(
        self,
        *,
        customer_id: str,
        amount: Decimal,
        currency: str,
        idempotency_key: str,
        metadata: dict[str, str],
    ) -> Charge:
        intent = self._call(
            self.client.v1.payment_intents.create,
            params={
                "amount": to_minor_units(amount),
                "currency": currency,
                "customer": customer_id,
                "payment_method": self._default_payment_method(customer_id),
                "confirm": True,
                "off_session": True,
                "metadata": metadata,
            },
            options={"idempotency_key": f"charge:{idempotency_key}"},
        )
        if intent.status != "succeeded":
            raise PaymentDeclinedError(f"payment is {intent.status}", code=intent.status)
        return Charge(
            charge_id=intent.id,
            status=intent.status,
            amount=from_minor_units(intent.amount),
            currency=intent.currency,
        )

    def refund(self, *, charge_id: str, amount: Decimal, idempotency_key: str) -> Refund:
        refund = self._call(
            self.client.v1.refunds.create,
            params={"payment_intent": charge_id, "amount": to_minor_units(amount)},
            options={"idempotency_key": f"refund:{idempotency_key}"},
        )
        return Refund(
            refund_id=refund.id, status=refund.status, amount=from_minor_units(refund.amount)
        )


def _simulated_id(prefix: str, key: str) -> str:
    return f"{prefix}_sim{hashlib.sha256(key.encode()).hexdigest()[:21]}"


class SimulatedGateway:
    """Offline and deterministic: the same idempotency key gives the same id, as at
    Stripe. Declines customer `cus_declined` and any amount ending in .13."""

    name = "simulated"

    def charge(
        self,
        *,
        customer_id: str,
        amount: Decimal,
        currency: str,
        idempotency_key: str,
        metadata: dict[str, str],
    ) -> Charge:
        to_minor_units(amount)
        if customer_id == SIMULATED_DECLINED_CUSTOMER:
            raise PaymentDeclinedError("Your card was declined.", code="generic_decline")
        if to_minor_units(amount) % 100 == SIMULATED_DECLINED_CENTS:
            raise PaymentDeclinedError(
                "Your card has insufficient funds.", code="insufficient_funds"
            )
        charge_id = _simulated_id("pi", f"charge:{idempotency_key}")
        logger.info("simulated charge %s: %s %s to %s", charge_id, amount, currency, customer_id)
        return Charge(charge_id=charge_id, status="succeeded", amount=amount, currency=currency)

    def refund(self, *, charge_id: str, amount: Decimal, idempotency_key: str) -> Refund:
        refund_id = _simulated_id("re", f"refund:{idempotency_key}")
        logger.info("simulated refund %s of %s", refund_id, charge_id)
        return Refund(refund_id=refund_id, status="succeeded", amount=amount)


@cache
def _gateway(name: str, api_base: str, api_key: str) -> PaymentGateway:
    return StripeGateway() if name == "stripe" else SimulatedGateway()


def payment_gateway() -> PaymentGateway:
    """The configured gateway (`PAYMENT_GATEWAY`), one per process and configuration."""
    return _gateway(settings.PAYMENT_GATEWAY, settings.STRIPE_API_BASE, settings.STRIPE_API_KEY)
