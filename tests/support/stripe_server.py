"""A small local Stripe-compatible HTTP server for tests.

The official ``stripe`` SDK talks real HTTP to it (never the internet): point a
``stripe.StripeClient`` at ``server.base_url`` through ``base_addresses``.  Only the
parts of the v1 API the project uses are implemented: PaymentIntents (create,
retrieve, list, capture, cancel) and Refunds (create, retrieve, list), with Stripe's
form encoding, Bearer auth, error bodies, list objects, idempotency keys and
``Request-Id`` headers.

Usage::

    import stripe
    from tests.support.stripe_server import StripeServer

    with StripeServer() as server:
        client = stripe.StripeClient(
            "sk_test_123",
            base_addresses={"api": server.base_url},
            max_network_retries=2,
        )
        server.fail_next(1)  # first attempt gets a 500; the SDK retries it
        intent = client.v1.payment_intents.create(
            params={
                "amount": 1999,  # integer minor units (cents)
                "currency": "eur",
                "customer": "cus_123",
                "payment_method": "pm_123",
                "confirm": True,
                "off_session": True,
                "metadata": {"order_id": "42"},
            },
            options={"idempotency_key": "order-42-charge"},
        )
        assert intent.status == "succeeded"
        assert len(server.successful_charges()) == 1

        server.decline_customers.add("cus_broke")  # 402 card_error from now on

Fault injection:

* ``fail_next(n, status=500)``: the next ``n`` requests (any endpoint) get an
  ``api_error`` answer before anything is done, so nothing is created or stored
  (a failure in front of the API, such as a load balancer's 503).
* ``fail_after_create_next(n)``: the next ``n`` requests that actually perform a
  creation (a new PaymentIntent, including a declined one, a new Refund, a capture
  or a cancel) do it and store the result under their idempotency key, then drop
  the connection without answering ("Stripe did it but the answer was lost").  A
  retry with the same key replays the stored result.  ``then_outage=seconds``
  starts an outage right after (``None``: until ``end_outage()``).
  ``fail_after_create_next(n, status=500)`` answers a 500 instead, and as at Stripe
  that 500 is what the key stores: a retry with the same key replays the 500.
* ``fail_stored_next(n, status=500)``: the next ``n`` creations fail inside the
  endpoint: nothing is created and the 500 is stored under the idempotency key,
  so every retry with that key gets the 500 again, as Stripe documents.
* ``outage(seconds=None, status=None)``: until the window ends (``None``: until
  ``end_outage()``), every request gets its connection dropped, or ``status``.
* ``forget_idempotency_keys()``: 24 hours have passed: every key is new again.
* ``expire_authorization(intent_id=None)``: an uncaptured authorization lapses, as
  Stripe's do after about 7 days online: the PaymentIntent is cancelled with
  ``cancellation_reason="automatic"``, and capturing it fails.

Webhook events (for the service's ``/webhooks/stripe/``):

* ``signed_event(type, data_object, secret)`` returns ``(payload_bytes,
  signature_header)``: an event as Stripe sends it, with its ``Stripe-Signature``
  (``t=<ts>,v1=<hex hmac_sha256(secret, f"{t}.{payload}")>``); ``sign()`` signs a body
  again (a redelivery), with any timestamp (a replayed old one).
* From the fake's own objects: ``charge(intent_id)`` (what ``charge.*`` events carry),
  ``refund_from_dashboard(intent_id, amount=None)`` (a refund made in the dashboard,
  listed by the API like any other; returns the charge), ``open_dispute(intent_id)``
  and ``close_dispute(dispute_id, status)``, ``radar_review(intent_id, open=True)``.

Stored 500s carry ``Stripe-Should-Retry: false`` (retrying the key only replays
them).  Replays carry ``Idempotent-Replayed: true``.

The SDK waits at least ``stripe.HTTPClient.INITIAL_DELAY`` (0.5 s) between retries;
tests can lower ``INITIAL_DELAY`` and ``MAX_DELAY`` on ``stripe.HTTPClient``.
"""

from __future__ import annotations

import copy
import hashlib
import hmac
import json
import math
import re
import secrets
import string
import threading
import time
import traceback
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from tests.support.servers import BackgroundHTTPServer, QuietHandler

__all__ = [
    "FormError",
    "RecordedRequest",
    "StripeServer",
    "parse_form",
]

JSONDict = dict[str, Any]

API_VERSION = "2025-01-01"
DOCS = "https://docs.stripe.com/error-codes"
_ID_ALPHABET = string.ascii_letters + string.digits
_KEY_RE = re.compile(r"^([^\[\]]+)((?:\[[^\[\]]*\])*)$")
_PART_RE = re.compile(r"\[([^\[\]]*)\]")
_PI_PATH = re.compile(r"^/v1/payment_intents/(?P<id>[^/]+)$")
_PI_ACTION_PATH = re.compile(r"^/v1/payment_intents/(?P<id>[^/]+)/(?P<action>capture|cancel)$")
_REFUND_PATH = re.compile(r"^/v1/refunds/(?P<id>[^/]+)$")
_CUSTOMER_PATH = re.compile(r"^/v1/customers/(?P<id>[^/]+)$")
_CURRENCY_RE = re.compile(r"^[a-zA-Z]{3}$")
# What Stripe accepts, written down here independently of the service's own tables so that
# a wrong table in the service makes a test fail. ISO 4217 codes Stripe charges in (the
# ones this fake knows) and its minimum charge amounts
# in the currency's smallest unit (https://docs.stripe.com/currencies#minimum-and-maximum-
# charge-amounts); currencies not listed there use the equivalent of 0.50 USD, taken here
# as 50 minor units.
STRIPE_CURRENCIES = frozenset(
    "aed aud bgn bif brl cad chf clp cny czk djf dkk eur gbp gnf hkd huf idr ils inr isk "
    "jpy kmf krw mga mxn myr nok nzd php pln pyg ron rwf sek sgd thb try twd ugx usd vnd "
    "vuv xaf xof xpf zar bhd jod kwd omr tnd".split()
)
MINIMUM_CHARGE = {
    "usd": 50, "aed": 200, "aud": 50, "bgn": 100, "brl": 50, "cad": 50, "chf": 50,
    "czk": 1500, "dkk": 250, "eur": 50, "gbp": 30, "hkd": 400, "huf": 17500, "inr": 50,
    "jpy": 50, "mxn": 1000, "myr": 200, "nok": 300, "nzd": 50, "pln": 200, "ron": 200,
    "sek": 300, "sgd": 50, "thb": 1000,
}  # fmt: skip
_REFUND_REASONS = frozenset({"duplicate", "fraudulent", "requested_by_customer"})
_CANCELLATION_REASONS = frozenset({"duplicate", "fraudulent", "requested_by_customer", "abandoned"})
_CREATED_FILTERS = ("gt", "gte", "lt", "lte")


class FormError(ValueError):
    """A form-encoded body could not be turned into nested params."""


def new_id(prefix: str) -> str:
    """Return a Stripe-looking id such as ``pi_3Nf...``."""
    return prefix + "_" + "".join(secrets.choice(_ID_ALPHABET) for _ in range(24))


def parse_form(body: str) -> JSONDict:
    """Parse Stripe's form encoding into nested dicts.

    ``metadata[order_id]=42`` becomes ``{"metadata": {"order_id": "42"}}`` and
    ``expand[0]=a&expand[1]=b`` (or ``expand[]=a&expand[]=b``) becomes
    ``{"expand": ["a", "b"]}``.  Leaf values stay strings, as on the wire.
    """
    root: JSONDict = {}
    for raw_key, value in parse_qsl(body, keep_blank_values=True, strict_parsing=False):
        match = _KEY_RE.match(raw_key)
        if match is None:
            raise FormError(f"Invalid parameter name: {raw_key!r}")
        parts = [match.group(1), *_PART_RE.findall(match.group(2))]
        node = root
        for depth, part in enumerate(parts):
            if part == "":
                part = str(sum(1 for k in node if k.isdigit()))
            if depth == len(parts) - 1:
                if part in node:
                    raise FormError(f"Duplicate parameter: {raw_key!r}")
                node[part] = value
                break
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise FormError(f"Parameter {raw_key!r} mixes a value and a hash")
            node = child
    result = _lists_from_indexed_dicts(root)
    assert isinstance(result, dict)
    return result


def _lists_from_indexed_dicts(value: Any) -> Any:
    """Turn ``{"0": a, "1": b}`` (Stripe's array encoding) into ``[a, b]``."""
    if not isinstance(value, dict):
        return value
    converted = {k: _lists_from_indexed_dicts(v) for k, v in value.items()}
    if converted and all(k.isdigit() for k in converted):
        indexes = sorted(int(k) for k in converted)
        if indexes == list(range(len(indexes))):
            return [converted[str(i)] for i in indexes]
    return converted


@dataclass(frozen=True)
class RecordedRequest:
    """One request as the server saw it (and what it answered)."""

    method: str
    path: str
    headers: dict[str, str]
    params: JSONDict
    #: The HTTP status answered, or 0 when the connection was dropped unanswered.
    status: int
    replayed: bool
    request_id: str

    @property
    def idempotency_key(self) -> str | None:
        return self.headers.get("idempotency-key")


@dataclass
class _Response:
    status: int
    body: JSONDict
    headers: dict[str, str] = field(default_factory=dict)
    #: Close the connection without answering (the client sees a network error).
    drop: bool = False


_DROPPED = _Response(0, {}, drop=True)


@dataclass(frozen=True)
class _StoredResult:
    method: str
    path: str
    params: JSONDict
    status: int
    body: JSONDict
    request_id: str
    headers: dict[str, str] = field(default_factory=dict)


class _Handler(QuietHandler):
    server_version = "stripe-test-server/1.0"

    def do_GET(self) -> None:
        self._respond()

    def do_POST(self) -> None:
        self._respond()

    def do_DELETE(self) -> None:
        self._respond()

    def _respond(self) -> None:
        body = self.read_body()
        headers = {key.lower(): value for key, value in self.headers.items()}
        response = self.server.owner.handle(self.command, self.path, headers, body)
        if response.drop:
            self.close_connection = True
            return
        payload = json.dumps(response.body, indent=2).encode()
        self.send_response(response.status)
        for name, value in response.headers.items():
            self.send_header(name, value)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)


def _error(
    status: int,
    type_: str,
    message: str,
    *,
    code: str | None = None,
    param: str | None = None,
    **extra: Any,
) -> _Response:
    error: JSONDict = {"type": type_, "message": message}
    if code is not None:
        error["code"] = code
        error["doc_url"] = f"{DOCS}#{code.replace('_', '-')}"
    if param is not None:
        error["param"] = param
    error.update(extra)
    return _Response(status, {"error": error})


def _invalid(
    message: str,
    *,
    param: str | None = None,
    code: str | None = None,
    status: int = 400,
) -> _Response:
    return _error(status, "invalid_request_error", message, code=code, param=param)


def _missing(param: str) -> _Response:
    return _invalid(f"Missing required param: {param}.", param=param, code="parameter_missing")


def _api_error(status: int) -> _Response:
    return _error(
        status,
        "api_error",
        "An unknown error occurred while processing your request "
        "(injected by the local Stripe test server).",
    )


def _stored_api_error(status: int) -> _Response:
    """A failure inside the endpoint: Stripe stores it under the key and says that
    retrying the same request is pointless (it would be replayed)."""
    response = _api_error(status)
    response.headers["Stripe-Should-Retry"] = "false"
    return response


def _parse_bool(params: JSONDict, name: str) -> bool | _Response:
    value: object = params.get(name)
    if value is None:
        return False
    if value in ("true", "false"):
        return value == "true"
    return _invalid(f"Invalid boolean: {value}", param=name)


def _parse_amount(value: Any, param: str = "amount") -> int | _Response:
    if not isinstance(value, str) or not re.fullmatch(r"-?\d+", value):
        return _invalid(f"Invalid integer: {value}", param=param, code="parameter_invalid_integer")
    amount = int(value)
    if amount < 1:
        return _invalid(
            "This value must be greater than or equal to 1.",
            param=param,
            code="parameter_invalid_integer",
        )
    return amount


def _parse_metadata(params: JSONDict) -> JSONDict | _Response:
    metadata = params.get("metadata", {})
    if metadata == "":
        return {}
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        return _invalid("Invalid hash", param="metadata")
    return dict(metadata)


def _optional_str(params: JSONDict, name: str) -> str | _Response | None:
    value = params.get(name)
    if value is None or isinstance(value, str):
        return value or None
    return _invalid(f"Invalid string: {value!r}", param=name)


class StripeServer(BackgroundHTTPServer):
    """Local fake of the Stripe v1 API for PaymentIntents and Refunds; ``base_url``
    (``http://127.0.0.1:PORT``) is for ``base_addresses={"api": ...}``.

    Thread-safe: every request is handled under one lock, and the record
    accessors (``requests``, ``payment_intents``, ``refunds``, ...) return copies.
    """

    handler_class = _Handler
    thread_name = "stripe-test-server"

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        super().__init__(host, port)
        self._lock = threading.RLock()
        self._requests: list[RecordedRequest] = []
        self._payment_intents: dict[str, JSONDict] = {}
        self._refunds: dict[str, JSONDict] = {}
        self._disputes: dict[str, JSONDict] = {}
        self._idempotency: dict[tuple[str, str], _StoredResult] = {}
        self._fail_next: list[tuple[int, bool | None]] = []
        # (status or None to drop the connection, outage seconds after it or None)
        self._fail_after_create: list[tuple[int | None, float | None]] = []
        self._fail_stored: list[int] = []
        self._outage_until: float | None = None
        self._outage_status: int | None = None
        #: Customers whose confirmed PaymentIntents are declined with HTTP 402.
        self.decline_customers: set[str] = {"cus_declined"}
        #: ``decline_code`` used for those declines.
        self.decline_code = "insufficient_funds"
        #: Radar's ``outcome`` of a charge, shown when a create or a retrieve expands the
        #: intent's ``latest_charge`` (read at that moment, not stored with the charge).
        self.risk_level = "normal"
        self.risk_score: int | None = 20
        #: Tracebacks of unexpected server bugs (answered as 500 without retry).
        self.errors: list[str] = []

    # -- fault injection -------------------------------------------------------

    def fail_next(self, n: int = 1, status: int = 500, *, should_retry: bool | None = None) -> None:
        """Answer the next ``n`` requests with ``status`` before doing anything.

        ``should_retry`` sets the ``Stripe-Should-Retry`` header (absent if None).
        """
        with self._lock:
            self._fail_next.extend([(status, should_retry)] * n)

    def fail_after_create_next(
        self, n: int = 1, status: int | None = None, *, then_outage: float | None = 0.0
    ) -> None:
        """Perform the next ``n`` creations, then drop the connection unanswered (or
        answer ``status``, which the key then stores).  ``then_outage`` starts an
        outage of that many seconds right after (``None``: until ``end_outage()``)."""
        with self._lock:
            self._fail_after_create.extend([(status, then_outage)] * n)

    def forget_idempotency_keys(self) -> None:
        """Stripe keeps a key's result for 24 hours: past that, a retry with the key
        is a new request."""
        with self._lock:
            self._idempotency.clear()

    def fail_stored_next(self, n: int = 1, status: int = 500) -> None:
        """Fail the next ``n`` creations inside the endpoint: nothing is created, and
        the ``status`` answer is stored under the idempotency key and replayed."""
        with self._lock:
            self._fail_stored.extend([status] * n)

    def outage(self, seconds: float | None = None, *, status: int | None = None) -> None:
        """Stripe is unreachable from now for ``seconds`` (``None``: until
        ``end_outage()``): every request is dropped unanswered, or gets ``status``."""
        with self._lock:
            self._outage_until = time.monotonic() + (math.inf if seconds is None else seconds)
            self._outage_status = status

    def end_outage(self) -> None:
        with self._lock:
            self._outage_until = None
            self._outage_status = None

    def expire_authorization(self, intent_id: str | None = None) -> list[str]:
        """Let an uncaptured PaymentIntent's authorization lapse (every one in
        ``requires_capture`` when ``intent_id`` is None). Returns the ids expired."""
        with self._lock:
            expired = []
            for intent in self._payment_intents.values():
                if intent["status"] != "requires_capture":
                    continue
                if intent_id is not None and intent["id"] != intent_id:
                    continue
                intent.update(
                    status="canceled",
                    amount_capturable=0,
                    canceled_at=int(time.time()),
                    cancellation_reason="automatic",
                )
                expired.append(intent["id"])
            return expired

    # -- webhook events ----------------------------------------------------------

    @staticmethod
    def event(type_: str, data_object: JSONDict, *, event_id: str | None = None) -> JSONDict:
        """A v1 event as Stripe sends it to a webhook endpoint."""
        return {
            "id": event_id or new_id("evt"),
            "object": "event",
            "api_version": API_VERSION,
            "created": int(time.time()),
            "data": {"object": copy.deepcopy(data_object)},
            "livemode": False,
            "pending_webhooks": 1,
            "request": {"id": None, "idempotency_key": None},
            "type": type_,
        }

    @staticmethod
    def sign(payload: bytes, secret: str, timestamp: int | None = None) -> str:
        """The ``Stripe-Signature`` header of ``payload``, Stripe's v1 scheme."""
        t = int(time.time()) if timestamp is None else timestamp
        signed = f"{t}.".encode() + payload
        digest = hmac.new(secret.encode(), signed, hashlib.sha256).hexdigest()
        return f"t={t},v1={digest}"

    @classmethod
    def signed_event(
        cls,
        type_: str,
        data_object: JSONDict,
        secret: str,
        *,
        event_id: str | None = None,
        timestamp: int | None = None,
    ) -> tuple[bytes, str]:
        """``(payload_bytes, signature_header)`` of a new event about ``data_object``."""
        payload = json.dumps(cls.event(type_, data_object, event_id=event_id)).encode()
        return payload, cls.sign(payload, secret, timestamp)

    def charge(self, intent_id: str) -> JSONDict:
        """The Charge of a confirmed PaymentIntent, as ``charge.*`` events carry it."""
        with self._lock:
            intent = self._payment_intents[intent_id]
            refunded = sum(
                r["amount"] for r in self._refunds.values() if r["payment_intent"] == intent_id
            )
            return {
                "id": intent["latest_charge"],
                "object": "charge",
                "amount": intent["amount"],
                "amount_captured": intent["amount_received"],
                "amount_refunded": refunded,
                "captured": intent["status"] == "succeeded",
                "created": intent["created"],
                "currency": intent["currency"],
                "customer": intent["customer"],
                "disputed": any(d["payment_intent"] == intent_id for d in self._disputes.values()),
                "livemode": False,
                "metadata": copy.deepcopy(intent["metadata"]),
                "payment_intent": intent_id,
                "refunded": refunded >= intent["amount"],
                "status": "succeeded" if intent["status"] == "succeeded" else "pending",
            }

    def refund_from_dashboard(self, intent_id: str, amount: int | None = None) -> JSONDict:
        """Refund a captured PaymentIntent (all that remains, or ``amount``) behind the
        service's back, as from the dashboard; returns the charge afterwards."""
        with self._lock:
            params = {"payment_intent": intent_id}
            if amount is not None:
                params["amount"] = str(amount)
            response, created = self._create_refund(params)
            if not created:
                raise ValueError(response.body["error"]["message"])
            return self.charge(intent_id)

    def open_dispute(
        self, intent_id: str, *, reason: str = "fraudulent", amount: int | None = None
    ) -> JSONDict:
        """The cardholder disputes the PaymentIntent's charge (all of it, or ``amount``)."""
        with self._lock:
            intent = self._payment_intents[intent_id]
            dispute: JSONDict = {
                "id": new_id("dp"),
                "object": "dispute",
                "amount": intent["amount"] if amount is None else amount,
                "charge": intent["latest_charge"],
                "created": int(time.time()),
                "currency": intent["currency"],
                "is_charge_refundable": False,
                "livemode": False,
                "metadata": {},
                "payment_intent": intent_id,
                "reason": reason,
                "status": "needs_response",
            }
            self._disputes[dispute["id"]] = dispute
            return copy.deepcopy(dispute)

    def close_dispute(self, dispute_id: str, status: str = "won") -> JSONDict:
        """Close a dispute: ``won``, ``lost`` (the funds are withdrawn) or
        ``warning_closed`` (an inquiry that never became a chargeback)."""
        if status not in ("won", "lost", "warning_closed"):
            raise ValueError(f"not a closed dispute status: {status}")
        with self._lock:
            dispute = self._disputes[dispute_id]
            dispute["status"] = status
            return copy.deepcopy(dispute)

    @property
    def disputes(self) -> dict[str, JSONDict]:
        with self._lock:
            return copy.deepcopy(self._disputes)

    def radar_review(
        self, intent_id: str, *, open: bool = True, reason: str | None = None
    ) -> JSONDict:
        """Radar's review of the PaymentIntent's charge: opened by a rule, or closed
        (``reason`` ``approved``, ``refunded``, ``refunded_as_fraud``, ``disputed``)."""
        with self._lock:
            intent = self._payment_intents[intent_id]
            return {
                "id": "prv_" + intent_id.removeprefix("pi_"),
                "object": "review",
                "charge": intent["latest_charge"],
                "closed_reason": None if open else (reason or "approved"),
                "created": int(time.time()),
                "livemode": False,
                "open": open,
                "opened_reason": "rule",
                "payment_intent": intent_id,
                "reason": (reason or "rule") if open else (reason or "approved"),
            }

    @property
    def in_outage(self) -> bool:
        with self._lock:
            return self._outage_until is not None and time.monotonic() < self._outage_until

    def reset(self) -> None:
        """Forget all objects, records, idempotency keys and pending faults."""
        with self._lock:
            self._requests.clear()
            self._payment_intents.clear()
            self._refunds.clear()
            self._disputes.clear()
            self._idempotency.clear()
            self._fail_next.clear()
            self._fail_after_create.clear()
            self._fail_stored.clear()
            self._outage_until = None
            self._outage_status = None
            self.decline_customers = {"cus_declined"}
            self.risk_level, self.risk_score = "normal", 20
            self.errors.clear()

    # -- records ---------------------------------------------------------------

    @property
    def requests(self) -> list[RecordedRequest]:
        with self._lock:
            return list(self._requests)

    @property
    def payment_intents(self) -> dict[str, JSONDict]:
        with self._lock:
            return copy.deepcopy(self._payment_intents)

    @property
    def refunds(self) -> dict[str, JSONDict]:
        with self._lock:
            return copy.deepcopy(self._refunds)

    def successful_charges(self) -> list[JSONDict]:
        """PaymentIntents that succeeded, once per created object (not per replay)."""
        with self._lock:
            return [
                copy.deepcopy(pi)
                for pi in self._payment_intents.values()
                if pi["status"] == "succeeded"
            ]

    def refunds_for(self, payment_intent_id: str) -> list[JSONDict]:
        with self._lock:
            return [
                copy.deepcopy(refund)
                for refund in self._refunds.values()
                if refund["payment_intent"] == payment_intent_id
            ]

    # -- request handling ------------------------------------------------------

    def handle(self, method: str, raw_path: str, headers: dict[str, str], body: bytes) -> _Response:
        """Answer one HTTP request (called by the handler threads)."""
        with self._lock:
            request_id = new_id("req")
            split = urlsplit(raw_path)
            path = split.path
            replayed = False
            try:
                params = parse_form(split.query)
                params.update(parse_form(body.decode("utf-8")))
            except (FormError, UnicodeDecodeError) as exc:
                params = {}
                response = _invalid(str(exc))
            else:
                try:
                    response, replayed = self._handle_parsed(
                        method, path, headers, params, request_id
                    )
                except Exception:
                    self.errors.append(traceback.format_exc())
                    response = _api_error(500)
                    response.headers["Stripe-Should-Retry"] = "false"
            if response.drop:
                self._requests.append(
                    RecordedRequest(
                        method=method,
                        path=path,
                        headers=dict(headers),
                        params=params,
                        status=0,
                        replayed=replayed,
                        request_id=request_id,
                    )
                )
                return response
            response.headers["Request-Id"] = request_id
            response.headers["Stripe-Version"] = headers.get("stripe-version", API_VERSION)
            if "idempotency-key" in headers:
                response.headers["Idempotency-Key"] = headers["idempotency-key"]
            if "error" in response.body:
                response.body["error"]["request_log_url"] = (
                    f"https://dashboard.stripe.com/test/logs/{request_id}"
                )
            self._requests.append(
                RecordedRequest(
                    method=method,
                    path=path,
                    headers=dict(headers),
                    params=params,
                    status=response.status,
                    replayed=replayed,
                    request_id=request_id,
                )
            )
            return response

    def _handle_parsed(
        self,
        method: str,
        path: str,
        headers: dict[str, str],
        params: JSONDict,
        request_id: str,
    ) -> tuple[_Response, bool]:
        if self.in_outage:
            if self._outage_status is None:
                return _DROPPED, False
            return _api_error(self._outage_status), False
        if self._fail_next:
            status, should_retry = self._fail_next.pop(0)
            response = _api_error(status)
            if should_retry is not None:
                response.headers["Stripe-Should-Retry"] = str(should_retry).lower()
            return response, False

        api_key = self._authenticate(headers)
        if isinstance(api_key, _Response):
            return api_key, False

        idempotency_key = headers.get("idempotency-key") if method == "POST" else None
        if idempotency_key:
            stored = self._idempotency.get((api_key, idempotency_key))
            if stored is not None:
                return self._replay(stored, method, path, params, idempotency_key), True

        if self._fail_stored and self._creates(method, path):
            response, performed = _stored_api_error(self._fail_stored.pop(0)), True
        else:
            response, performed = self._route(method, path, params)
        answer = response
        if performed and self._fail_after_create:
            status, then_outage = self._fail_after_create.pop(0)
            if status is None:
                answer = _DROPPED
            else:
                response = answer = _stored_api_error(status)
            if then_outage is None or then_outage > 0:
                self.outage(then_outage)
        if performed and idempotency_key:
            self._idempotency[(api_key, idempotency_key)] = _StoredResult(
                method=method,
                path=path,
                params=copy.deepcopy(params),
                status=response.status,
                body=copy.deepcopy(response.body),
                request_id=request_id,
                headers=dict(response.headers),
            )
        return answer, False

    @staticmethod
    def _creates(method: str, path: str) -> bool:
        """Whether the request would perform something (and so store its result)."""
        return method == "POST" and (
            path in ("/v1/payment_intents", "/v1/refunds")
            or _PI_ACTION_PATH.match(path) is not None
        )

    @staticmethod
    def _authenticate(headers: dict[str, str]) -> str | _Response:
        authorization = headers.get("authorization", "")
        scheme, _, key = authorization.partition(" ")
        if not authorization or scheme.lower() != "bearer" or not key.strip():
            return _invalid(
                "You did not provide an API key. You need to provide your API key in "
                "the Authorization header, using Bearer auth (e.g. 'Authorization: "
                "Bearer YOUR_SECRET_KEY').",
                status=401,
            )
        key = key.strip()
        if not key.startswith("sk_test_") or len(key) == len("sk_test_"):
            masked = key[:8] + "*" * max(len(key) - 12, 0) + key[-4:]
            return _invalid(f"Invalid API Key provided: {masked}", status=401)
        return key

    @staticmethod
    def _replay(
        stored: _StoredResult,
        method: str,
        path: str,
        params: JSONDict,
        idempotency_key: str,
    ) -> _Response:
        if (stored.method, stored.path) != (method, path):
            return _error(
                400,
                "idempotency_error",
                "Keys for idempotent requests can only be used for the same endpoint "
                f"they were first used for ('{stored.method} {stored.path}' vs "
                f"'{method} {path}'). Try using a key other than '{idempotency_key}' "
                "if you meant to execute a different request.",
            )
        if stored.params != params:
            return _error(
                400,
                "idempotency_error",
                "Keys for idempotent requests can only be used with the same "
                "parameters they were first used with. Try using a key other than "
                f"'{idempotency_key}' if you meant to execute a different request.",
            )
        return _Response(
            stored.status,
            copy.deepcopy(stored.body),
            {
                **stored.headers,
                "Idempotent-Replayed": "true",
                "Original-Request": stored.request_id,
            },
        )

    def _route(self, method: str, path: str, params: JSONDict) -> tuple[_Response, bool]:
        """Return the response and whether an object was created."""
        if method == "POST" and path == "/v1/payment_intents":
            response, created = self._create_payment_intent(params)
            if "latest_charge" in (params.get("expand") or []) and response.status == 200:
                self._expand_latest_charge(response.body)  # stored (and replayed) expanded
            return response, created
        if method == "POST" and path == "/v1/refunds":
            return self._create_refund(params)
        if method == "POST" and (match := _PI_ACTION_PATH.match(path)):
            if match["action"] == "capture":
                return self._capture(match["id"], params)
            return self._cancel(match["id"], params)
        if method == "GET" and path == "/v1/payment_intents":
            return self._list(path, self._payment_intents, params, "customer"), False
        if method == "GET" and path == "/v1/refunds":
            return self._list(path, self._refunds, params, "payment_intent"), False
        if method == "GET" and (match := _PI_PATH.match(path)):
            response, created = self._retrieve(self._payment_intents, "payment_intent", match["id"])
            if "latest_charge" in (params.get("expand") or []) and response.status == 200:
                self._expand_latest_charge(response.body)
            return response, created
        if method == "GET" and (match := _REFUND_PATH.match(path)):
            return self._retrieve(self._refunds, "refund", match["id"])
        if method == "GET" and (match := _CUSTOMER_PATH.match(path)):
            return self._customer(match["id"]), False
        return _invalid(
            f"Unrecognized request URL ({method}: {path}). Please see "
            "https://stripe.com/docs or we can help at https://support.stripe.com/.",
            status=404,
        ), False

    def _expand_latest_charge(self, intent: JSONDict) -> None:
        """``expand[]=latest_charge`` (on a create or a retrieve): the charge object,
        with Radar's ``outcome``."""
        charge_id = intent.get("latest_charge")
        if charge_id:
            intent["latest_charge"] = {
                "id": charge_id,
                "object": "charge",
                "amount": intent["amount"],
                "currency": intent["currency"],
                "payment_intent": intent["id"],
                "outcome": {
                    "network_status": "approved_by_network",
                    "risk_level": self.risk_level,
                    "risk_score": self.risk_score,
                    "seller_message": "Payment complete.",
                    "type": "authorized",
                },
            }

    @staticmethod
    def _customer(customer_id: str) -> _Response:
        """Every customer exists, with a default card, except `cus_missing`."""
        if customer_id == "cus_missing":
            return _invalid(
                f"No such customer: '{customer_id}'",
                param="id",
                code="resource_missing",
                status=404,
            )
        return _Response(
            200,
            {
                "id": customer_id,
                "object": "customer",
                "invoice_settings": {"default_payment_method": f"pm_card_{customer_id}"},
            },
        )

    @staticmethod
    def _retrieve(
        objects: dict[str, JSONDict], kind: str, object_id: str
    ) -> tuple[_Response, bool]:
        obj = objects.get(object_id)
        if obj is None:
            param = "intent" if kind == "payment_intent" else "id"
            return _invalid(
                f"No such {kind}: '{object_id}'",
                param=param,
                code="resource_missing",
                status=404,
            ), False
        return _Response(200, copy.deepcopy(obj)), False

    @staticmethod
    def _list(path: str, objects: dict[str, JSONDict], params: JSONDict, owner: str) -> _Response:
        """Stripe's list: newest first, ``limit`` (1 to 100, default 10),
        ``starting_after``/``ending_before`` cursors, a ``created`` filter (an exact
        timestamp or ``gt``/``gte``/``lt``/``lte``) and the ``owner`` filter
        (``customer`` or ``payment_intent``).  Strongly consistent, as Stripe's list
        is (its search is not)."""
        limit_raw = params.get("limit", "10")
        if not isinstance(limit_raw, str) or not limit_raw.isdigit():
            return _invalid(f"Invalid integer: {limit_raw}", param="limit")
        limit = int(limit_raw)
        if not 1 <= limit <= 100:
            return _invalid(
                "This value must be greater than or equal to 1 and less than or equal to 100.",
                param="limit",
            )
        # Newest first; objects created in the same second keep their reverse order.
        ordered = sorted(
            enumerate(objects.values()), key=lambda pair: (pair[1]["created"], pair[0])
        )
        found = [obj for _, obj in reversed(ordered)]
        owner_id = params.get(owner)
        if owner_id is not None:
            if not isinstance(owner_id, str):
                return _invalid("Invalid string", param=owner)
            found = [obj for obj in found if obj.get(owner) == owner_id]
        created = params.get("created")
        if isinstance(created, str):
            created = {"eq": created}
        if created is not None:
            if not isinstance(created, dict) or not all(
                op in (*_CREATED_FILTERS, "eq") and isinstance(v, str) and v.isdigit()
                for op, v in created.items()
            ):
                return _invalid("Invalid timestamp", param="created")
            tests = {
                "eq": lambda c, v: c == v,
                "gt": lambda c, v: c > v,
                "gte": lambda c, v: c >= v,
                "lt": lambda c, v: c < v,
                "lte": lambda c, v: c <= v,
            }
            found = [
                obj
                for obj in found
                if all(tests[op](obj["created"], int(v)) for op, v in created.items())
            ]
        ids = [obj["id"] for obj in found]
        for cursor in ("starting_after", "ending_before"):
            cursor_id = params.get(cursor)
            if cursor_id is not None and cursor_id not in objects:
                kind = "payment_intent" if owner == "customer" else "refund"
                return _invalid(
                    f"No such {kind}: '{cursor_id}'",
                    param=cursor,
                    code="resource_missing",
                    status=404,
                )
        if (cursor_id := params.get("starting_after")) is not None:
            found = found[ids.index(cursor_id) + 1 :] if cursor_id in ids else []
        elif (cursor_id := params.get("ending_before")) is not None:
            found = found[: ids.index(cursor_id)] if cursor_id in ids else []
            found = found[::-1]  # the page nearest the cursor, then back to newest first
            has_more = len(found) > limit
            page = found[:limit][::-1]
            return _Response(
                200, {"object": "list", "data": page, "has_more": has_more, "url": path}
            )
        return _Response(
            200,
            {
                "object": "list",
                "data": copy.deepcopy(found[:limit]),
                "has_more": len(found) > limit,
                "url": path,
            },
        )

    def _create_payment_intent(self, params: JSONDict) -> tuple[_Response, bool]:
        if "amount" not in params:
            return _missing("amount"), False
        amount = _parse_amount(params["amount"])
        if isinstance(amount, _Response):
            return amount, False
        currency = params.get("currency")
        if currency is None:
            return _missing("currency"), False
        if not isinstance(currency, str) or not _CURRENCY_RE.match(currency):
            return _invalid(f"Invalid currency: {currency}", param="currency"), False
        currency = currency.lower()
        if currency not in STRIPE_CURRENCIES:
            return _invalid(f"Invalid currency: {currency}.", param="currency"), False
        minimum = MINIMUM_CHARGE.get(currency, 50)
        if amount < minimum:
            return (
                _invalid(
                    f"Amount must be at least {minimum} {currency} minor units",
                    param="amount",
                    code="amount_too_small",
                ),
                False,
            )
        metadata = _parse_metadata(params)
        if isinstance(metadata, _Response):
            return metadata, False
        confirm = _parse_bool(params, "confirm")
        if isinstance(confirm, _Response):
            return confirm, False
        off_session = _parse_bool(params, "off_session")
        if isinstance(off_session, _Response):
            return off_session, False
        customer = _optional_str(params, "customer")
        if isinstance(customer, _Response):
            return customer, False
        payment_method = _optional_str(params, "payment_method")
        if isinstance(payment_method, _Response):
            return payment_method, False
        capture_method = params.get("capture_method", "automatic")
        if capture_method not in ("automatic", "automatic_async", "manual"):
            return _invalid(
                "Invalid capture_method: must be one of automatic, automatic_async, or manual",
                param="capture_method",
            ), False
        if off_session and not confirm:
            return _invalid(
                "off_session can only be used when confirm=true.", param="off_session"
            ), False
        if confirm and payment_method is None:
            return _invalid(
                "You cannot confirm this PaymentIntent because it's missing a payment method.",
                code="payment_intent_unexpected_state",
            ), False

        intent_id = new_id("pi")
        status = "requires_payment_method"
        if payment_method is not None and not confirm:
            status = "requires_confirmation"
        elif payment_method is not None:
            status = "requires_capture" if capture_method == "manual" else "succeeded"
        intent: JSONDict = {
            "id": intent_id,
            "object": "payment_intent",
            "amount": amount,
            "amount_capturable": amount if status == "requires_capture" else 0,
            "amount_received": amount if status == "succeeded" else 0,
            "canceled_at": None,
            "cancellation_reason": None,
            "capture_method": capture_method,
            "client_secret": f"{intent_id}_secret_{secrets.token_hex(12)}",
            "confirmation_method": "automatic",
            "created": int(time.time()),
            "currency": currency.lower(),
            "customer": customer,
            "description": params.get("description"),
            "last_payment_error": None,
            "latest_charge": new_id("ch") if confirm else None,
            "livemode": False,
            "metadata": metadata,
            "payment_method": payment_method,
            "payment_method_types": ["card"],
            "status": status,
        }
        if confirm and customer is not None and customer in self.decline_customers:
            return self._decline(intent), True
        self._payment_intents[intent_id] = intent
        return _Response(200, copy.deepcopy(intent)), True

    def _decline(self, intent: JSONDict) -> _Response:
        error: JSONDict = {
            "type": "card_error",
            "code": "card_declined",
            "decline_code": self.decline_code,
            "message": "Your card has insufficient funds."
            if self.decline_code == "insufficient_funds"
            else "Your card was declined.",
            "charge": intent["latest_charge"],
            "doc_url": f"{DOCS}#card-declined",
            "payment_method": {
                "id": intent["payment_method"],
                "object": "payment_method",
            },
        }
        intent["status"] = "requires_payment_method"
        intent["amount_received"] = 0
        intent["amount_capturable"] = 0
        intent["last_payment_error"] = copy.deepcopy(error)
        self._payment_intents[intent["id"]] = intent
        error["payment_intent"] = copy.deepcopy(intent)
        return _Response(402, {"error": error})

    def _intent_in(
        self, intent_id: str, statuses: tuple[str, ...], action: str
    ) -> JSONDict | _Response:
        intent = self._payment_intents.get(intent_id)
        if intent is None:
            return _invalid(
                f"No such payment_intent: '{intent_id}'",
                param="intent",
                code="resource_missing",
                status=404,
            )
        if intent["status"] not in statuses:
            return _invalid(
                f"This PaymentIntent could not be {action} because it has a status of "
                f"{intent['status']}. Only a PaymentIntent with one of the following "
                f"statuses may be {action}: {', '.join(statuses)}.",
                code="payment_intent_unexpected_state",
            )
        return intent

    def _capture(self, intent_id: str, params: JSONDict) -> tuple[_Response, bool]:
        intent = self._intent_in(intent_id, ("requires_capture",), "captured")
        if isinstance(intent, _Response):
            return intent, False
        amount: int | _Response = intent["amount_capturable"]
        if "amount_to_capture" in params:
            amount = _parse_amount(params["amount_to_capture"], "amount_to_capture")
            if isinstance(amount, _Response):
                return amount, False
            if amount > intent["amount_capturable"]:
                return _invalid(
                    "The amount to capture must be less than or equal to the capturable "
                    f"amount ({intent['amount_capturable']}).",
                    param="amount_to_capture",
                ), False
        intent.update(status="succeeded", amount_received=amount, amount_capturable=0)
        return _Response(200, copy.deepcopy(intent)), True

    def _cancel(self, intent_id: str, params: JSONDict) -> tuple[_Response, bool]:
        cancelable = (
            "requires_payment_method",
            "requires_capture",
            "requires_confirmation",
            "requires_action",
            "processing",
        )
        intent = self._intent_in(intent_id, cancelable, "canceled")
        if isinstance(intent, _Response):
            return intent, False
        reason = params.get("cancellation_reason")
        if reason is not None and reason not in _CANCELLATION_REASONS:
            return _invalid(
                f"Invalid cancellation_reason: {reason}", param="cancellation_reason"
            ), False
        intent.update(
            status="canceled",
            amount_capturable=0,
            canceled_at=int(time.time()),
            cancellation_reason=reason,
        )
        return _Response(200, copy.deepcopy(intent)), True

    def _create_refund(self, params: JSONDict) -> tuple[_Response, bool]:
        intent_id = params.get("payment_intent")
        if intent_id is None:
            return _missing("payment_intent"), False
        if not isinstance(intent_id, str):
            return _invalid("Invalid string", param="payment_intent"), False
        intent = self._payment_intents.get(intent_id)
        if intent is None:
            return _invalid(
                f"No such payment_intent: '{intent_id}'",
                param="payment_intent",
                code="resource_missing",
                status=404,
            ), False
        if intent["status"] != "succeeded":
            return _invalid(
                f"This PaymentIntent ({intent_id}) does not have a successful charge to refund.",
                param="payment_intent",
            ), False
        metadata = _parse_metadata(params)
        if isinstance(metadata, _Response):
            return metadata, False
        reason = params.get("reason")
        if reason is not None and reason not in _REFUND_REASONS:
            return _invalid(f"Invalid reason: {reason}", param="reason"), False
        refunded = sum(
            r["amount"] for r in self._refunds.values() if r["payment_intent"] == intent_id
        )
        remaining = intent["amount"] - refunded
        if remaining <= 0:
            return _invalid(
                f"Charge {intent['latest_charge']} has already been refunded.",
                code="charge_already_refunded",
            ), False
        amount: int | _Response = remaining
        if "amount" in params:
            amount = _parse_amount(params["amount"])
            if isinstance(amount, _Response):
                return amount, False
        if amount > remaining:
            return _invalid(
                f"Refund amount ({amount}) is greater than unrefunded amount on "
                f"charge ({remaining}).",
                param="amount",
            ), False
        refund: JSONDict = {
            "id": new_id("re"),
            "object": "refund",
            "amount": amount,
            "charge": intent["latest_charge"],
            "created": int(time.time()),
            "currency": intent["currency"],
            "metadata": metadata,
            "payment_intent": intent_id,
            "reason": reason,
            "status": "succeeded",
        }
        self._refunds[refund["id"]] = refund
        return _Response(200, copy.deepcopy(refund)), True
