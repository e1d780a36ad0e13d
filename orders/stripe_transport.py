"""The Stripe SDK's HTTP transport: urllib3's connection pool under the SDK's own client.

The SDK's default transport is `requests`, whose session layer (preparing each request,
merging settings, hooks, cookies) cost more CPU than the exchange itself: a charge's two
requests took 2.9 ms of a worker's CPU through it and 2.0 ms through urllib3 (the pool
`requests` itself sits on; `python -m bench.call_costs`). The SDK keeps everything else:
the request, its idempotency key, its retries (`max_network_retries`), its errors. What
this module decides is only which failures are worth another try, as the SDK's
`RequestsClient` does: a timeout or a connection failure is retried, a certificate that
does not verify is not.

A proxy in the environment (`HTTPS_PROXY`, `NO_PROXY`, …) that applies to the Stripe API
is read once, when the client is made.
"""

import textwrap
import urllib.request
from collections.abc import Mapping
from typing import Any, NoReturn
from urllib.parse import urlsplit

import stripe
import urllib3

# The SDK's own default for its requests client (connect and read).
TIMEOUT_SECONDS = 80.0
# Connections kept per host: a worker's sync threads share one pool.
POOL_SIZE = 10


def _environment_proxy(url: str) -> str | None:
    """The proxy the environment names for `url`, unless `NO_PROXY` exempts its host."""
    parts = urlsplit(url)
    if urllib.request.proxy_bypass(parts.hostname or ""):
        return None
    return urllib.request.getproxies().get(parts.scheme)


class Urllib3Client(stripe.HTTPClient):
    """`stripe.HTTPClient` on one thread-safe urllib3 pool, for `base_url`'s host."""

    name = "urllib3"

    def __init__(self, *, base_url: str, timeout: float = TIMEOUT_SECONDS) -> None:
        super().__init__()
        self._timeout = urllib3.Timeout(connect=timeout, read=timeout)
        tls: dict[str, Any] = {"cert_reqs": "CERT_REQUIRED", "ca_certs": stripe.ca_bundle_path}
        proxy = _environment_proxy(base_url)
        self._pool: urllib3.PoolManager = (
            urllib3.ProxyManager(proxy, maxsize=POOL_SIZE, **tls)
            if proxy
            else urllib3.PoolManager(maxsize=POOL_SIZE, **tls)
        )

    def request(
        self,
        method: str,
        url: str,
        headers: Mapping[str, str] | None,
        post_data: Any = None,
        *,
        _usage: list[str] | None = None,
    ) -> tuple[str, int, Mapping[str, str]]:
        try:
            response = self._pool.request(
                method.upper(),
                url,
                body=post_data,
                headers=dict(headers or {}),
                timeout=self._timeout,
                retries=False,  # the SDK retries, with its idempotency key
                redirect=False,
            )
        except Exception as exc:
            _connection_error(exc)
        return response.data.decode("utf-8"), response.status, response.headers

    def close(self) -> None:
        self._pool.clear()


def _connection_error(exc: Exception) -> NoReturn:
    """`stripe.APIConnectionError`, retryable as the SDK's `RequestsClient` decides."""
    if isinstance(exc, urllib3.exceptions.SSLError):
        should_retry = False  # a certificate that does not verify will not next time
    elif isinstance(
        exc,
        (
            urllib3.exceptions.TimeoutError,
            urllib3.exceptions.ProtocolError,
            urllib3.exceptions.NewConnectionError,
            urllib3.exceptions.ProxyError,
        ),
    ):
        should_retry = True
    else:
        should_retry = False
    message = textwrap.fill(
        "Unexpected error communicating with Stripe. "
        "If this problem persists, let us know at support@stripe.com."
    )
    raise stripe.APIConnectionError(  # type: ignore[no-untyped-call]
        f"{message}\n\n(Network error: {type(exc).__name__}: {exc})", should_retry=should_retry
    ) from exc
