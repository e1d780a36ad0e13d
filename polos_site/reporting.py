"""What error pages and error reports may show of the settings."""

import re

from django.views.debug import SafeExceptionReporterFilter


class SafeReporterFilter(SafeExceptionReporterFilter):
    """Django's filter, also hiding connection URLs (`REDIS_URL`, `Q_CLUSTER["redis"]`,
    `STRIPE_API_BASE`...), which may carry credentials."""

    hidden_settings = re.compile(
        "API|TOKEN|KEY|SECRET|PASS|SIGNATURE|HTTP_COOKIE|URL|REDIS", flags=re.IGNORECASE
    )
