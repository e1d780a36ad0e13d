"""Payment gateways: Stripe through the official SDK, and an offline simulation.

Amounts are `Decimal` in major units here and integers in minor units (cents) at
Stripe.

One order's charge is one operation, whoever attempts it: every attempt carries the
order's own idempotency key (`payment_key`). When an earlier attempt's outcome is
unknown (its answer was lost, its worker crashed: the caller says so), the Stripe
gateway first looks for what that attempt may have created, so that even a key Stripe
has forgotten (after 24 h) charges no one twice; a first attempt goes straight to the
create. Refunds, captures and cancels always look first (they are rare).

A charge is captured at once, or only authorized (`capture=False`: a PaymentIntent with
`capture_method=manual`, a hold on the card) and later captured or cancelled; the
orders service decides which (`orders.policy.payment_capture_now`).

Over 500 lines on purpose: the two gateways implement one `PaymentGateway` protocol
and are read side by side (the simulation answers as Stripe does), with the key and
recovery rules they share.
"""

import hashlib
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from decimal import Decimal
from functools import cache
from typing import Any, Protocol, TypeVar

import stripe
from django.conf import settings
from django.utils import timezone
from stripe.params import PaymentIntentCreateParams

from workflows import NonRetryableError
from workflows.engine.errors import TransientError

from . import metrics, money
from .stripe_transport import Urllib3Client

T = TypeVar("T")

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


class CaptureFailedError(NonRetryableError):
    """An authorization could not be captured: it expired (Stripe cancels holds after
    about 7 days) or was cancelled. The money was never taken."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(f"Capture failed: {reason}")


STRIPE_DEPENDENCY = "stripe"
"""The payment gateway, as steps and tools that call it name their dependency."""


class TransientPaymentError(TransientError):
    """The gateway could not answer now (network, rate limit, 5xx): try again (a step
    that names `STRIPE_DEPENDENCY` waits for it over its retry horizon)."""


class _KeySpentError(TransientPaymentError):
    """Stripe replayed a 500 stored under this key: that attempt is over, and every
    retry with the same key would only replay it."""


# How many keys one operation may go through after stored 500s (see `payment_key`).
MAX_KEY_ATTEMPTS = 5
# Stripe's clock may differ from ours: look for PaymentIntents created this long before
# the order.
LOOKUP_CLOCK_MARGIN = timedelta(hours=1)


def payment_key(*, operation: str, order_pk: int) -> str:
    """The idempotency key of one operation ("charge", "refund", "capture", "cancel") on
    one order.

    Derived from the order itself (its primary key: order ids are only unique per
    client, and a forked run continues the same order), so the agent's tool, the
    workflow's fallback, their retries, replays and forks all send the same key and
    Stripe replays the first result.
    """
    return f"{operation}:order-{order_pk}"


def attempt_key(key: str, attempt: int) -> str:
    """The key of the operation's `attempt`-th key (1 is `key` itself).

    Stripe stores a 500 under its key and replays it for 24 h, so one key alone could
    wedge an order. The gateway moves to attempt n+1 only once Stripe *replayed*
    attempt n's stored failure (so that request is over and cannot still be creating
    something) and a lookup then proved that nothing exists. Every call walks again
    from attempt 1, so the attempt needs no storage: spent keys answer at once with
    their replay, and the key that worked replays its success.
    """
    return key if attempt == 1 else f"{key}:{attempt}"


CAPTURED = "succeeded"
AUTHORIZED = "requires_capture"


@dataclass(frozen=True)
class Charge:
    charge_id: str
    status: str  # CAPTURED, or AUTHORIZED for a hold
    amount: Decimal
    currency: str
    # Stripe's evaluation of the charge (`outcome` of the intent's latest charge), when
    # the gateway has one: "normal", "elevated", "highest"... and 0-99.
    risk_level: str = ""
    risk_score: int | None = None

    @property
    def captured(self) -> bool:
        return self.status == CAPTURED


@dataclass(frozen=True)
class Refund:
    refund_id: str
    status: str | None  # as Stripe types it
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
        created_since: datetime | None = None,
        capture: bool = True,
        outcome_unknown: bool = True,
    ) -> Charge: ...

    def refund(
        self,
        *,
        charge_id: str,
        amount: Decimal,
        currency: str,
        idempotency_key: str,
        metadata: dict[str, str],
    ) -> Refund: ...

    def capture(
        self,
        *,
        charge_id: str,
        amount: Decimal,
        currency: str,
        idempotency_key: str,
        authorized_at: datetime | None = None,
    ) -> Charge: ...

    def cancel(self, *, charge_id: str, idempotency_key: str) -> None: ...


def to_minor_units(amount: Decimal, currency: str) -> int:
    """Stripe's integer amount: cents, or whole yen for zero-decimal currencies."""
    return money.to_minor_units(amount, currency)


def from_minor_units(amount: int, currency: str) -> Decimal:
    return money.from_minor_units(amount, currency)


class StripeGateway:
    """PaymentIntents confirmed off-session against the customer's default card."""

    name = "stripe"

    def __init__(self) -> None:
        if not settings.STRIPE_API_KEY:
            raise NonRetryableError("PAYMENT_GATEWAY=stripe needs STRIPE_API_KEY")
        options: dict = {"max_network_retries": settings.STRIPE_MAX_NETWORK_RETRIES}
        if settings.STRIPE_API_BASE:
            options["base_addresses"] = {"api": settings.STRIPE_API_BASE}
        base = settings.STRIPE_API_BASE or stripe.DEFAULT_API_BASE
        self.client = stripe.StripeClient(
            settings.STRIPE_API_KEY, http_client=Urllib3Client(base_url=base), **options
        )

    def _call(self, operation: Callable[..., T], *args: Any, **kwargs: Any) -> T:
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
            if _replayed(exc.headers):
                raise _KeySpentError(
                    f"Stripe replayed a stored error: {exc.user_message or exc}"
                ) from None
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

    def _listed(self, listing: Any, params: dict[str, Any], metadata: Mapping[str, str]) -> list:
        """Every object of a Stripe list (all pages) that this operation made: its
        metadata names the same order and run. Stripe's list is strongly consistent,
        unlike its search, so what an earlier attempt created is there."""
        page = self._call(listing, params={**params, "limit": 100})
        return self._call(
            lambda: [obj for obj in page.auto_paging_iter() if _made_for(obj, metadata)]
        )

    def _find_intent(
        self, *, customer_id: str, metadata: Mapping[str, str], created_since: datetime | None
    ) -> Any | None:
        """The order's PaymentIntent, if an earlier attempt created one: a live one
        first, else a declined one (that decline is the answer the attempt lost)."""
        params: dict[str, Any] = {"customer": customer_id}
        if created_since is not None:
            params["created"] = {"gte": int((created_since - LOOKUP_CLOCK_MARGIN).timestamp())}
        intents = self._listed(self.client.v1.payment_intents.list, params, metadata)
        live = [
            pi for pi in intents if pi.status in ("succeeded", "requires_capture", "processing")
        ]
        if len(live) > 1:
            logger.error(
                "order %s has %d PaymentIntents: %s",
                metadata.get("order_id"),
                len(live),
                ", ".join(pi.id for pi in live),
            )
        declined = [pi for pi in intents if pi.to_dict().get("last_payment_error")]
        return (live or declined or [None])[-1]  # the oldest: lists are newest first

    def charge(
        self,
        *,
        customer_id: str,
        amount: Decimal,
        currency: str,
        idempotency_key: str,
        metadata: dict[str, str],
        created_since: datetime | None = None,
        capture: bool = True,
        outcome_unknown: bool = True,
    ) -> Charge:
        """Charge (or, with `capture=False`, authorize) once per key. With
        `outcome_unknown` (an earlier attempt may have reached Stripe and lost its
        answer), first recover the PaymentIntent it may have created; a first attempt
        creates at once, its key alone protecting it. After a stored 500 the lookup
        always runs before the next key (see `attempt_key`)."""
        payment_method = ""
        for attempt in range(1, MAX_KEY_ATTEMPTS + 1):
            intent = None
            if outcome_unknown or attempt > 1:
                intent = self._find_intent(
                    customer_id=customer_id, metadata=metadata, created_since=created_since
                )
            if intent is None:
                payment_method = payment_method or self._default_payment_method(customer_id)
                try:
                    intent = self._create_intent(
                        {
                            "amount": to_minor_units(amount, currency),
                            "currency": currency,
                            "customer": customer_id,
                            "payment_method": payment_method,
                            "confirm": True,
                            "off_session": True,
                            "capture_method": "automatic" if capture else "manual",
                            "metadata": metadata,
                        },
                        key=attempt_key(idempotency_key, attempt),
                    )
                except _KeySpentError:
                    continue
            charge = _charge_of(intent)
            return replace(charge, **self._risk_of(intent))
        raise TransientPaymentError(f"Stripe failed the charge under {MAX_KEY_ATTEMPTS} keys")

    def _create_intent(self, params: PaymentIntentCreateParams, *, key: str) -> Any:
        """Create and confirm the PaymentIntent with its latest charge expanded, so that
        Stripe's risk evaluation comes in the same answer. A key first used without
        `expand` (by a release that read the risk apart) is sent again as it was then:
        Stripe refuses other parameters under a key, and replays the first result."""

        def create() -> Any:
            options: Any = {"idempotency_key": key}
            expanded: PaymentIntentCreateParams = {**params, "expand": ["latest_charge"]}
            try:
                return self.client.v1.payment_intents.create(params=expanded, options=options)
            except stripe.IdempotencyError:
                return self.client.v1.payment_intents.create(params=params, options=options)

        return self._call(create)

    def _risk_of(self, intent: Any) -> dict[str, Any]:
        """Stripe's risk evaluation of the intent's latest charge (`outcome.risk_level`,
        `outcome.risk_score`): in the create's answer, which expands the charge; an
        intent found by the lookup (or created under a key first used without `expand`)
        is read again, expanded. Only shown to reviewers, so it is best effort: a
        failure to read it never fails the charge."""
        latest = intent.to_dict().get("latest_charge")
        if isinstance(latest, str):
            try:
                expanded = self._call(
                    self.client.v1.payment_intents.retrieve,
                    intent.id,
                    params={"expand": ["latest_charge"]},
                )
            except (TransientPaymentError, NonRetryableError, PaymentDeclinedError) as exc:
                logger.warning("no risk evaluation for %s: %s", intent.id, exc)
                return {}
            latest = expanded.to_dict().get("latest_charge")
        outcome = (latest or {}).get("outcome") if isinstance(latest, dict) else None
        if not outcome:
            return {}
        score = outcome.get("risk_score")
        return {
            "risk_level": str(outcome.get("risk_level") or ""),
            "risk_score": int(score) if isinstance(score, int | float) else None,
        }

    def refund(
        self,
        *,
        charge_id: str,
        amount: Decimal,
        currency: str,
        idempotency_key: str,
        metadata: dict[str, str],
    ) -> Refund:
        """Refund once per key: recover the refund an earlier attempt may have made."""
        for attempt in range(1, MAX_KEY_ATTEMPTS + 1):
            refunds = self._listed(
                self.client.v1.refunds.list, {"payment_intent": charge_id}, metadata
            )
            live = [r for r in refunds if r.status not in ("failed", "canceled")]
            refund = live[-1] if live else None
            if refund is None:
                try:
                    refund = self._call(
                        self.client.v1.refunds.create,
                        params={
                            "payment_intent": charge_id,
                            "amount": to_minor_units(amount, currency),
                            "metadata": metadata,
                        },
                        options={"idempotency_key": attempt_key(idempotency_key, attempt)},
                    )
                except _KeySpentError:
                    continue
            return Refund(
                refund_id=refund.id,
                status=refund.status,
                amount=from_minor_units(refund.amount, refund.currency),
            )
        raise TransientPaymentError(f"Stripe failed the refund under {MAX_KEY_ATTEMPTS} keys")

    def capture(
        self,
        *,
        charge_id: str,
        amount: Decimal,
        currency: str,
        idempotency_key: str,
        authorized_at: datetime | None = None,
    ) -> Charge:
        """Capture an authorization once: an intent already captured (by an attempt
        whose answer was lost) is done; an expired or cancelled one raises
        `CaptureFailedError` (Stripe knows its age: `authorized_at` is not needed)."""
        for attempt in range(1, MAX_KEY_ATTEMPTS + 1):
            intent = self._call(self.client.v1.payment_intents.retrieve, charge_id)
            if intent.status == AUTHORIZED:
                try:
                    intent = self._call(
                        self.client.v1.payment_intents.capture,
                        charge_id,
                        params={"amount_to_capture": to_minor_units(amount, currency)},
                        options={"idempotency_key": attempt_key(idempotency_key, attempt)},
                    )
                except _KeySpentError:
                    continue
                except NonRetryableError as exc:  # e.g. it expired since we looked
                    raise CaptureFailedError(str(exc)) from None
            if intent.status != CAPTURED:
                why = intent.to_dict().get("cancellation_reason")
                raise CaptureFailedError(
                    f"{charge_id} is {intent.status}"
                    + (f" ({why})" if why else "")
                    + "; the authorization expired or was released"
                )
            return _charge_of(intent)
        raise TransientPaymentError(f"Stripe failed the capture under {MAX_KEY_ATTEMPTS} keys")

    def cancel(self, *, charge_id: str, idempotency_key: str) -> None:
        """Release an authorization once: an intent already cancelled is done; one
        already captured must be refunded instead."""
        for attempt in range(1, MAX_KEY_ATTEMPTS + 1):
            intent = self._call(self.client.v1.payment_intents.retrieve, charge_id)
            if intent.status == "canceled":
                return
            if intent.status == "succeeded":
                raise NonRetryableError(f"{charge_id} is captured: refund it instead")
            try:
                self._call(
                    self.client.v1.payment_intents.cancel,
                    charge_id,
                    options={"idempotency_key": attempt_key(idempotency_key, attempt)},
                )
                return
            except _KeySpentError:
                continue
        raise TransientPaymentError(f"Stripe failed the cancel under {MAX_KEY_ATTEMPTS} keys")


def _replayed(headers: Mapping[str, str] | None) -> bool:
    """Whether Stripe answered with the result stored under the idempotency key."""
    return any(
        name.lower() == "idempotent-replayed" and value == "true"
        for name, value in (headers or {}).items()
    )


def _made_for(obj: Any, metadata: Mapping[str, str]) -> bool:
    theirs = obj.to_dict().get("metadata") or {}
    keys = [k for k in ("order_id", "order_pk") if k in metadata]
    return bool(keys) and all(theirs.get(k) == metadata[k] for k in keys)


def _charge_of(intent: Any) -> Charge:
    if intent.status not in (CAPTURED, AUTHORIZED):
        error = intent.to_dict().get("last_payment_error") or {}
        if error:
            code = error.get("decline_code") or error.get("code") or "card_declined"
            raise PaymentDeclinedError(error.get("message") or "payment was declined", code=code)
        raise PaymentDeclinedError(f"payment is {intent.status}", code=intent.status)
    return Charge(
        charge_id=intent.id,
        status=intent.status,
        amount=from_minor_units(intent.amount, intent.currency),
        currency=intent.currency,
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
        created_since: datetime | None = None,
        capture: bool = True,
        outcome_unknown: bool = True,
    ) -> Charge:
        """As Stripe answers, without a lookup: the id comes from the key, so an attempt
        whose outcome was unknown (`outcome_unknown`) gets the same charge back."""
        to_minor_units(amount, currency)
        if customer_id == SIMULATED_DECLINED_CUSTOMER:
            raise PaymentDeclinedError("Your card was declined.", code="generic_decline")
        if to_minor_units(amount, currency) % 100 == SIMULATED_DECLINED_CENTS:
            raise PaymentDeclinedError(
                "Your card has insufficient funds.", code="insufficient_funds"
            )
        charge_id = _simulated_id("pi", idempotency_key)
        status = CAPTURED if capture else AUTHORIZED
        logger.info(
            "simulated charge %s (%s): %s %s to %s",
            *(charge_id, status, amount, currency, customer_id),
        )
        return Charge(charge_id=charge_id, status=status, amount=amount, currency=currency)

    def refund(
        self,
        *,
        charge_id: str,
        amount: Decimal,
        currency: str,
        idempotency_key: str,
        metadata: dict[str, str],
    ) -> Refund:
        refund_id = _simulated_id("re", idempotency_key)
        logger.info("simulated refund %s of %s", refund_id, charge_id)
        return Refund(refund_id=refund_id, status="succeeded", amount=amount)

    def capture(
        self,
        *,
        charge_id: str,
        amount: Decimal,
        currency: str,
        idempotency_key: str,
        authorized_at: datetime | None = None,
    ) -> Charge:
        """As at Stripe, an authorization older than PAYMENT_AUTHORIZATION_DAYS has
        lapsed and cannot be captured."""
        lifetime = timedelta(days=settings.PAYMENT_AUTHORIZATION_DAYS)
        if authorized_at is not None and timezone.now() - authorized_at > lifetime:
            raise CaptureFailedError(
                f"{charge_id} is canceled (automatic); the authorization expired"
            )
        logger.info("simulated capture of %s", charge_id)
        return Charge(charge_id=charge_id, status=CAPTURED, amount=amount, currency=currency)

    def cancel(self, *, charge_id: str, idempotency_key: str) -> None:
        logger.info("simulated cancel of %s", charge_id)


@cache
def _gateway(name: str, api_base: str, api_key: str, retries: int) -> PaymentGateway:
    return metrics.instrumented(StripeGateway() if name == "stripe" else SimulatedGateway())


def payment_gateway() -> PaymentGateway:
    """The configured gateway (`PAYMENT_GATEWAY`), one per process and configuration."""
    return _gateway(
        settings.PAYMENT_GATEWAY,
        settings.STRIPE_API_BASE,
        settings.STRIPE_API_KEY,
        settings.STRIPE_MAX_NETWORK_RETRIES,
    )
