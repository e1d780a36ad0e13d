"""A local HTTP server standing in for an intake client's webhook receiver.

It records every request (headers and body) and answers with the statuses queued by
`answer(...)`, then 200. `delay` holds each answer back (a receiver slow enough for a
worker to be killed mid-request).

    with WebhookReceiver() as receiver:
        receiver.answer(500, 500)   # two 500s, then 200s
        ... receiver.url ...
        receiver.received           # [Received(headers, body, status), ...]
"""

import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes
    status: int  # what the receiver answered


class WebhookReceiver:
    def __init__(self, host: str = "127.0.0.1") -> None:
        self.host = host
        self.received: list[Received] = []
        self.delay = 0.0
        self._answers: list[int] = []
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                with receiver._lock:
                    status = receiver._answers.pop(0) if receiver._answers else 200
                    receiver.received.append(
                        Received(
                            self.path, {k.lower(): v for k, v in self.headers.items()}, body, status
                        )
                    )
                if receiver.delay:
                    time.sleep(receiver.delay)
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "text/plain")
                    self.end_headers()
                    self.wfile.write(f"answered {status}".encode())
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the sender died waiting (the crash tests)

            def log_message(self, format: str, *args: object) -> None:
                pass

        self._server = ThreadingHTTPServer((host, 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self._server.server_address[1]}/hooks"

    def answer(self, *statuses: int) -> None:
        """Answer the next requests with `statuses`, in order; 200 after them."""
        with self._lock:
            self._answers.extend(statuses)

    def reset(self) -> None:
        with self._lock:
            self.received.clear()
            self._answers.clear()
        self.delay = 0.0

    def __enter__(self) -> "WebhookReceiver":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
