"""The mail server as a dependency: Django's SMTP backend, told how far each message got,
and what a failed send means for a retry.

A send fails in one of three places, and each decides differently:

- **before the message's data went out** (connection refused or reset, a timeout, a 4xx
  to HELO, MAIL, RCPT or DATA): nothing can have been delivered. A 4xx or a network
  failure is transient (`TransientEmailError`: the step waits for the mail server and
  tries again); a 5xx is permanent (`EmailRejectedError`).
- **after the data and before the server's answer to it** (the connection breaks while
  we wait for the reply to the final "."): the server may have queued the message. This
  is the only case in doubt (`DeliveryOutcome.in_doubt`): it is never sent again
  automatically; an operator looks for its Message-ID in the mail log.
- **after the server answered 250** (QUIT failing, say): the message was delivered.

`SMTPEmailBackend` is Django's backend with a connection that records this
(`DeliveryOutcome`); other backends (console, locmem) record nothing, and a failed send
through them is taken as not delivered.
"""

import smtplib
from dataclasses import dataclass
from functools import partial
from typing import Any

from django.core.mail.backends.smtp import EmailBackend

from workflows.engine.errors import NonRetryableError, TransientError

SMTP_DEPENDENCY = "smtp"
"""The mail server, as steps and tools that send mail name their dependency."""

# How a message's data ends on the wire (smtplib adds it in `data`): no command does.
_END_OF_DATA = b"\r\n.\r\n"


class TransientEmailError(TransientError):
    """The mail server could not take the message now (down, unreachable, busy: a 4xx);
    nothing was delivered, so it may be sent again."""


class EmailRejectedError(NonRetryableError):
    """The mail server refused the message for good (a 5xx); nothing was delivered."""


@dataclass
class DeliveryOutcome:
    """How far the last message sent through one backend got."""

    data_sent: bool = False  # its data, up to the final ".", went out
    reply: int | None = None  # the server's answer to it

    @property
    def delivered(self) -> bool:
        return self.reply == 250

    @property
    def in_doubt(self) -> bool:
        """Sent, and no answer: the server may or may not have it."""
        return self.data_sent and self.reply is None


class _Recording:
    """Records, in the backend's `DeliveryOutcome`, whether the message's data went out
    and what the server answered to it."""

    outcome: DeliveryOutcome

    def send(self, s: Any) -> None:
        super().send(s)  # type: ignore[misc]
        if isinstance(s, bytes) and s.endswith(_END_OF_DATA):
            self.outcome.data_sent = True

    def data(self, msg: Any) -> tuple[int, bytes]:
        code, reply = super().data(msg)  # type: ignore[misc]
        if self.outcome.data_sent:
            self.outcome.reply = code
        return code, reply


class _RecordingSMTP(_Recording, smtplib.SMTP):
    def __init__(self, *args: Any, outcome: DeliveryOutcome, **kwargs: Any) -> None:
        self.outcome = outcome
        super().__init__(*args, **kwargs)


class _RecordingSMTPSSL(_Recording, smtplib.SMTP_SSL):
    def __init__(self, *args: Any, outcome: DeliveryOutcome, **kwargs: Any) -> None:
        self.outcome = outcome
        super().__init__(*args, **kwargs)


class SMTPEmailBackend(EmailBackend):
    """Django's SMTP backend whose `outcome` says how far the last message got."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.outcome = DeliveryOutcome()

    @property
    def connection_class(self) -> Any:
        self.outcome = DeliveryOutcome()  # a new connection: a new message
        recording = _RecordingSMTPSSL if self.use_ssl else _RecordingSMTP
        return partial(recording, outcome=self.outcome)


def delivery_outcome(connection: Any) -> DeliveryOutcome:
    """What a backend recorded of its last message (nothing: not an `SMTPEmailBackend`)."""
    outcome = getattr(connection, "outcome", None)
    return outcome if isinstance(outcome, DeliveryOutcome) else DeliveryOutcome()


def email_failure(exc: BaseException) -> Exception:
    """The error a send that delivered nothing raises: transient (a retry may succeed)
    or permanent, with the mail server's own words."""
    text = f"{type(exc).__name__}: {exc}"
    if isinstance(exc, smtplib.SMTPRecipientsRefused):
        codes = [code for code, _ in exc.recipients.values()]
        transient = bool(codes) and all(400 <= code < 500 for code in codes)
    elif isinstance(exc, smtplib.SMTPResponseException):
        transient = 400 <= exc.smtp_code < 500
    else:  # refused, reset or timed out connections, a server that hung up
        transient = isinstance(exc, OSError) and not isinstance(exc, smtplib.SMTPNotSupportedError)
    if transient:
        return TransientEmailError(f"The mail server is unavailable: {text}")
    return EmailRejectedError(f"The mail server refused the message: {text}")
