"""A local HTTP server standing in for an intake client's webhook receiver.

It records every request (headers and body) and answers with the statuses queued by
`answer(...)`, then 200. `delay` holds each answer back (a receiver slow enough for a
worker to be killed mid-request). `extra_headers` are added to every answer; with `drip`
they are sent one at a time, `drip` seconds apart, after the status line (a receiver
that holds an attempt without ever letting a socket operation time out).

    with WebhookReceiver() as receiver:
        receiver.answer(500, 500)   # two 500s, then 200s
        ... receiver.url ...
        receiver.received           # [Received(headers, body, status), ...]
"""

import threading
import time
from dataclasses import dataclass

from tests.support.servers import BackgroundHTTPServer, QuietHandler


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes
    status: int  # what the receiver answered


class _Handler(QuietHandler):
    def do_POST(self) -> None:
        receiver: WebhookReceiver = self.server.owner
        body = self.read_body()
        with receiver._lock:
            status = receiver._answers.pop(0) if receiver._answers else 200
            receiver.received.append(
                Received(self.path, {k.lower(): v for k, v in self.headers.items()}, body, status)
            )
        if receiver.delay:
            time.sleep(receiver.delay)
        try:
            self.send_response(status)
            for name, value in receiver.extra_headers:
                if receiver.drip:
                    self.flush_headers()
                    if receiver._halt.wait(receiver.drip):
                        return
                self.send_header(name, value)
            self.send_header("Content-Type", "text/plain")
            self.end_headers()
            self.wfile.write(f"answered {status}".encode())
        except (BrokenPipeError, ConnectionResetError):
            pass  # the sender died waiting (the crash tests)


class WebhookReceiver(BackgroundHTTPServer):
    handler_class = _Handler
    thread_name = "webhook-receiver"

    def __init__(self, host: str = "127.0.0.1") -> None:
        super().__init__(host)
        self.received: list[Received] = []
        self.delay = 0.0
        self.drip = 0.0
        self.extra_headers: list[tuple[str, str]] = []
        self._answers: list[int] = []
        self._lock = threading.Lock()
        self._halt = threading.Event()  # stops a drip when the receiver stops

    @property
    def url(self) -> str:
        return f"{self.base_url}/hooks"

    def answer(self, *statuses: int) -> None:
        """Answer the next requests with `statuses`, in order; 200 after them."""
        with self._lock:
            self._answers.extend(statuses)

    def reset(self) -> None:
        with self._lock:
            self.received.clear()
            self._answers.clear()
        self.delay = self.drip = 0.0
        self.extra_headers = []

    def _stop(self) -> None:
        self._halt.set()
        super()._stop()
