"""What error pages and error reports may show of the settings and of local variables."""

import re

from django.http import HttpRequest
from django.views.debug import SafeExceptionReporterFilter


class SafeReporterFilter(SafeExceptionReporterFilter):
    """Django's filter, also hiding connection URLs (`REDIS_URL`, `Q_CLUSTER["redis"]`,
    `STRIPE_API_BASE`...), which may carry credentials."""

    hidden_settings = re.compile(
        "API|TOKEN|KEY|SECRET|PASS|SIGNATURE|HTTP_COOKIE|URL|REDIS", flags=re.IGNORECASE
    )

    def is_active(self, request: HttpRequest | None) -> bool:
        """Always, not only with DEBUG off (Django's default): `DJANGO_DEBUG=1` is this
        service's default, and a debug page must not show what `@sensitive_variables`
        or `@sensitive_post_parameters` hide (the Stripe webhook secret) either."""
        return True
