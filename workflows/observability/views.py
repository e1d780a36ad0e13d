"""`GET /metrics`: the Prometheus text format of `collector.metrics_registry()`.

`GET /metrics` (`metrics_view`) answers in the Prometheus text format, with
`Authorization: Bearer <METRICS_TOKEN>`. Without a valid token it answers 401 (with
`WWW-Authenticate: Bearer`); when `METRICS_TOKEN` is unset it answers 404, as if the
endpoint did not exist.
"""

import hmac

from django.conf import settings
from django.http import Http404, HttpRequest, HttpResponse
from prometheus_client import generate_latest

from workflows.observability.collector import metrics_registry


def _authorized(request: HttpRequest, token: str) -> bool:
    scheme, _, given = request.headers.get("Authorization", "").partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(
        given.strip().encode(), token.encode()
    )


def metrics_view(request: HttpRequest) -> HttpResponse:
    """`GET /metrics`: 404 when METRICS_TOKEN is unset, 401 without it as a bearer token."""
    token = getattr(settings, "METRICS_TOKEN", "")
    if not token:
        raise Http404("metrics are off: METRICS_TOKEN is not set")
    if not _authorized(request, token):
        response = HttpResponse(
            "A bearer token is required.\n", status=401, content_type="text/plain"
        )
        response["WWW-Authenticate"] = 'Bearer realm="metrics"'
        return response
    from prometheus_client import CONTENT_TYPE_LATEST

    response = HttpResponse(generate_latest(metrics_registry()), content_type=CONTENT_TYPE_LATEST)
    response["Cache-Control"] = "no-store"
    return response
