"""Secrets out of everything the engine stores or logs.

`redact(text)` masks, in any text:

- the userinfo of URLs (`http://user:pass@host` → `http://***@host`), as in a base URL
  that carries credentials;
- the values of `Authorization` and `Proxy-Authorization` headers, and `Bearer` /
  `Basic` tokens, as an upstream error body may echo them;
- the values of the settings named in `WORKFLOWS_REDACT_SETTINGS` (API keys, webhook
  secrets, the Django secret key), wherever they appear.

It is applied where a run's or a step's error is stored (`executor._finish_failed`,
`context.StepContext._record_failure`), to the errors providers raise, and to every log
record through `RedactingFilter`, which settings' LOGGING installs on every handler.
Generic: it knows settings' names, nothing of any workflow.
"""

import logging
import re
from collections.abc import Iterable
from typing import Any
from urllib.parse import quote

from django.conf import settings

MASK = "***"

# Settings whose values never appear in a stored error or a log line. A project adds
# its own with WORKFLOWS_REDACT_SETTINGS; names that are not set are ignored.
DEFAULT_SECRET_SETTINGS = (
    "OPENAI_API_KEY",
    "STRIPE_API_KEY",
    "STRIPE_WEBHOOK_SECRET",
    "SECRET_KEY",
    "EMAIL_HOST_PASSWORD",
)
# Values shorter than this are not searched for: masking "a" everywhere hides nothing.
MIN_SECRET_LENGTH = 6

# scheme://userinfo@  (userinfo: anything up to the first @ that is not a / or space)
_URL_USERINFO = re.compile(r"(?P<scheme>\b[a-zA-Z][a-zA-Z0-9+.-]*://)[^/\s@?#]+@")
# Authorization: <value>  /  "authorization": "<value>"  /  authorization=<value>
_AUTH_HEADER = re.compile(
    r"(?P<name>\b(?:proxy-)?authorization\b)(?P<sep>[\"']?\s*[:=]\s*[\"']?)"
    r"(?P<value>[^\r\n\"',}]+)",
    re.IGNORECASE,
)
# Bearer <token> / Basic <base64>
_SCHEME_TOKEN = re.compile(
    r"(?P<scheme>\b(?:bearer|basic))\s+(?P<token>[A-Za-z0-9._~+/=-]{6,})", re.IGNORECASE
)
# Well-known secret key shapes (OpenAI, Stripe), whatever the settings say.
_KEY_SHAPES = re.compile(
    r"\b(?:sk-(?:proj-)?[A-Za-z0-9_-]{16,}|(?:sk|rk)_(?:live|test)_[A-Za-z0-9]{8,}"
    r"|whsec_[A-Za-z0-9]{8,})"
)


def secret_values(extra: Iterable[str | None] = ()) -> list[str]:
    """The secret values to mask: the configured settings' values, and `extra`."""
    names = getattr(settings, "WORKFLOWS_REDACT_SETTINGS", DEFAULT_SECRET_SETTINGS)
    values = [getattr(settings, name, None) for name in names] if settings.configured else []
    found: set[str] = set()
    for value in [*values, *extra]:
        if isinstance(value, str) and len(value) >= MIN_SECRET_LENGTH:
            found.add(value)
            found.add(quote(value, safe=""))  # as it appears inside a URL
    # Longest first, so that a secret containing another is masked whole.
    return sorted(found, key=len, reverse=True)


def redact(text: str, *, extra: Iterable[str | None] = ()) -> str:
    """`text` with credentials masked (see the module's docstring)."""
    if not text:
        return text
    for value in secret_values(extra):
        if value in text:
            text = text.replace(value, MASK)
    text = _URL_USERINFO.sub(rf"\g<scheme>{MASK}@", text)
    text = _AUTH_HEADER.sub(rf"\g<name>\g<sep>{MASK}", text)
    text = _SCHEME_TOKEN.sub(rf"\g<scheme> {MASK}", text)
    return _KEY_SHAPES.sub(MASK, text)


def redact_data(value: Any) -> Any:
    """`redact` applied to every string inside JSON-like data (dicts, lists)."""
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {key: redact_data(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [redact_data(item) for item in value]
    return value


class RedactingFilter(logging.Filter):
    """Masks credentials in a log record's message and traceback, in place, so that
    every handler after it (and pytest's `caplog`) sees the masked record."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a broken format string: leave it to the handler to report
            return True
        redacted = redact(message)
        if redacted != message or record.args:
            record.msg, record.args = redacted, None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        if record.stack_info:
            record.stack_info = redact(record.stack_info)
        return True
