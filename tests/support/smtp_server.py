"""A local SMTP server (aiosmtpd) that records every message it receives."""

import email
import email.policy
import logging
import threading
from email.message import EmailMessage

from aiosmtpd.controller import Controller

from tests.support.servers import Background, free_port

# aiosmtpd logs every connection at INFO, from its own thread, after pytest's capture
# of a test may have closed.
logging.getLogger("mail.log").setLevel(logging.WARNING)


# What a busy or broken mail server answers to DATA (RFC 5321 transient / permanent).
TEMPORARY_FAILURE = "451 4.3.0 Mail server temporarily unavailable, try again later"
PERMANENT_FAILURE = "554 5.3.0 Transaction failed"


class _Recorder:
    def __init__(self) -> None:
        self.messages: list[EmailMessage] = []
        self.envelopes: list[tuple[str, list[str]]] = []
        self.lock = threading.Lock()
        self.failures = 0  # messages still to refuse
        self.failure_reply = TEMPORARY_FAILURE
        self.refused = 0

    async def handle_DATA(self, server, session, envelope):
        message = email.message_from_bytes(envelope.content, policy=email.policy.default)
        with self.lock:
            if self.failures:  # a fault hook: refuse this message, deliver nothing
                self.failures -= 1
                self.refused += 1
                return self.failure_reply
            self.messages.append(message)
            self.envelopes.append((envelope.mail_from, list(envelope.rcpt_tos)))
        return "250 Message accepted for delivery"


class SMTPTestServer(Background):
    def __init__(self) -> None:
        self._recorder = _Recorder()
        # aiosmtpd connects to its own port to check it started, so port 0 won't do.
        self._controller = Controller(self._recorder, hostname="127.0.0.1", port=free_port())

    def _start(self) -> None:
        self._controller.start()

    def _stop(self) -> None:
        self._controller.stop()

    @property
    def port(self) -> int:
        return self._controller.port

    @property
    def messages(self) -> list[EmailMessage]:
        with self._recorder.lock:
            return list(self._recorder.messages)

    def messages_to(self, address: str) -> list[EmailMessage]:
        return [m for m in self.messages if address in m["To"]]

    def fail_next(self, count: int = 1, *, reply: str = TEMPORARY_FAILURE) -> None:
        """Refuse the next `count` messages with `reply` (nothing is delivered)."""
        with self._recorder.lock:
            self._recorder.failures = count
            self._recorder.failure_reply = reply

    @property
    def refused(self) -> int:
        """Messages refused by `fail_next` since the last reset."""
        with self._recorder.lock:
            return self._recorder.refused

    def reset(self) -> None:
        with self._recorder.lock:
            self._recorder.messages.clear()
            self._recorder.envelopes.clear()
            self._recorder.failures = 0
            self._recorder.failure_reply = TEMPORARY_FAILURE
            self._recorder.refused = 0
