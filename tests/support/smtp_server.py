"""A local SMTP server (aiosmtpd) that records every message it receives.

Fault switches: `fail_next(n, reply=...)` refuses the next messages with a 4xx/5xx reply;
`outage(seconds=None)` stops listening (connections are refused, as with a mail relay
being restarted) until the window ends or `end_outage()`; `hang_up_after_data_next(n)`
takes the next messages (they are delivered) and then drops the connection before
answering the final ".", so the sender cannot know whether the message was taken.
"""

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
        self.hang_ups = 0  # messages still to take and then hang up on

    async def handle_DATA(self, server, session, envelope):
        message = email.message_from_bytes(envelope.content, policy=email.policy.default)
        with self.lock:
            if self.failures:  # a fault hook: refuse this message, deliver nothing
                self.failures -= 1
                self.refused += 1
                return self.failure_reply
            self.messages.append(message)
            self.envelopes.append((envelope.mail_from, list(envelope.rcpt_tos)))
            hang_up = self.hang_ups > 0
            self.hang_ups -= hang_up
        if hang_up:  # delivered, but the sender never hears so
            server.transport.abort()
            return "421 4.4.2 Connection dropped"
        return "250 Message accepted for delivery"


class SMTPTestServer(Background):
    def __init__(self) -> None:
        self._recorder = _Recorder()
        # aiosmtpd connects to its own port to check it started, so port 0 won't do.
        self._port = free_port()
        self._controller: Controller | None = None
        self._outage_lock = threading.Lock()
        self._outage_timer: threading.Timer | None = None

    def _start(self) -> None:
        # A stopped controller's loop is closed: every start is a new one, on the same port.
        self._controller = Controller(self._recorder, hostname="127.0.0.1", port=self._port)
        self._controller.start()

    def _stop(self) -> None:
        with self._outage_lock:
            if self._outage_timer is not None:
                self._outage_timer.cancel()
                self._outage_timer = None
            self._stop_listening()

    def _stop_listening(self) -> None:
        if self._controller is not None:
            self._controller.stop()
            self._controller = None

    @property
    def port(self) -> int:
        return self._port

    def outage(self, seconds: float | None = None) -> None:
        """Stop listening: every connection is refused until `end_outage()`, or for
        `seconds`."""
        with self._outage_lock:
            self._stop_listening()
            if seconds is not None:
                self._outage_timer = threading.Timer(seconds, self.end_outage)
                self._outage_timer.daemon = True
                self._outage_timer.start()

    def end_outage(self) -> None:
        with self._outage_lock:
            if self._outage_timer is not None:
                self._outage_timer.cancel()
                self._outage_timer = None
            if self._controller is None:
                self._start()

    @property
    def in_outage(self) -> bool:
        return self._controller is None

    def hang_up_after_data_next(self, count: int = 1) -> None:
        """Take the next `count` messages, then drop the connection before answering."""
        with self._recorder.lock:
            self._recorder.hang_ups = count

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
            self._recorder.hang_ups = 0
        self.end_outage()
