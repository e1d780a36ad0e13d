"""The Stripe SDK's transport: what reaches the server, which failures the SDK tries
again, and the environment's proxy read once. Against the suite's local Stripe server
and closed loopback ports; the proxy cases only build the pool, never connect."""

import socket

import pytest
import stripe

from orders import stripe_transport
from orders.stripe_transport import Urllib3Client

pytestmark = pytest.mark.django_db


def stripe_client(base_url: str, retries: int = 0) -> stripe.StripeClient:
    return stripe.StripeClient(
        "sk_test_local",
        http_client=Urllib3Client(base_url=base_url),
        base_addresses={"api": base_url},
        max_network_retries=retries,
    )


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_a_request_and_its_answer_pass_through_unchanged(stripe_server):
    client = stripe_client(stripe_server.base_url)
    card = client.v1.customers.retrieve("cus_good").invoice_settings.default_payment_method

    intent = client.v1.payment_intents.create(
        params={
            "amount": 1250,
            "currency": "usd",
            "customer": "cus_good",
            "payment_method": card,
            "confirm": True,
            "off_session": True,
        },
        options={"idempotency_key": "key-1"},
    )

    sent = stripe_server.requests[-1]
    assert (sent.method, sent.path) == ("POST", "/v1/payment_intents")
    assert sent.idempotency_key == "key-1" and sent.params["amount"] == "1250"
    assert intent.amount == 1250 and intent.status == "succeeded"
    assert intent.id in stripe_server.payment_intents


def test_a_refused_connection_is_retried_by_the_sdk_then_reported(monkeypatch):
    attempts: list[str] = []
    original = stripe_transport.urllib3.PoolManager.request

    def counted(self, method, url, **kwargs):
        attempts.append(url)
        return original(self, method, url, **kwargs)

    monkeypatch.setattr(stripe_transport.urllib3.PoolManager, "request", counted)
    monkeypatch.setattr(stripe.HTTPClient, "_sleep_time_seconds", lambda *_: 0)
    client = stripe_client(f"http://127.0.0.1:{closed_port()}", retries=2)

    with pytest.raises(stripe.APIConnectionError, match="Network error") as refused:
        client.v1.customers.retrieve("cus_good")

    assert refused.value.should_retry and len(attempts) == 3


def test_an_unverified_certificate_is_not_retried():
    error = stripe_transport.urllib3.exceptions.SSLError("certificate verify failed")
    with pytest.raises(stripe.APIConnectionError) as refused:
        stripe_transport._connection_error(error)
    assert refused.value.should_retry is False


@pytest.mark.parametrize(("no_proxy", "through_proxy"), [("", True), ("api.stripe.com", False)])
def test_the_environment_proxy_is_read_when_the_client_is_made(
    monkeypatch, no_proxy, through_proxy
):
    for name in ("NO_PROXY", "no_proxy", "ALL_PROXY", "all_proxy", "https_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.internal:3128")
    monkeypatch.setenv("NO_PROXY", no_proxy)

    pool = Urllib3Client(base_url="https://api.stripe.com")._pool

    if through_proxy:
        assert isinstance(pool, stripe_transport.urllib3.ProxyManager)
        assert (pool.proxy.host, pool.proxy.port) == ("proxy.internal", 3128)
    else:
        assert not isinstance(pool, stripe_transport.urllib3.ProxyManager)
