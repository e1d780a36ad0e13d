"""What every fake server of the suite shares: a port of its own on 127.0.0.1, a thread
that serves it, `stop()`, and use as a context manager.

    class FakeThing(BackgroundHTTPServer):
        handler_class = ThingHandler      # reaches the fake as `self.server.owner`

    with FakeThing() as fake:
        ... fake.base_url ...
"""

import socket
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, Self


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on now (for servers that cannot bind port 0 themselves)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]


class Background:
    """A server started in a thread of this process: `start()` (returns the server),
    `stop()`, `with`. Subclasses implement `_start()` and `_stop()`."""

    def start(self) -> Self:
        self._start()
        return self

    def stop(self) -> None:
        self._stop()

    def _start(self) -> None:
        raise NotImplementedError

    def _stop(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


class _QuietHTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False

    def __init__(
        self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler], owner: Any
    ) -> None:
        self.owner = owner
        super().__init__(address, handler)

    def handle_error(self, request: Any, client_address: Any) -> None:
        if isinstance(sys.exc_info()[1], BrokenPipeError | ConnectionResetError):
            return  # the client gave up waiting (timeout and crash tests): nothing to report
        super().handle_error(request, client_address)


class QuietHandler(BaseHTTPRequestHandler):
    """A request handler without the access log on stderr; `self.server.owner` is the
    `BackgroundHTTPServer` it serves."""

    server: _QuietHTTPServer

    def log_message(self, format: str, *args: Any) -> None:
        """Keep test output quiet."""

    def read_body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length > 0 else b""


class BackgroundHTTPServer(Background):
    """A threading HTTP server on `host:port` (port 0: one the system picks), served by a
    daemon thread from `start()` to `stop()`. Requests go to `handler_class`."""

    handler_class: type[BaseHTTPRequestHandler]
    thread_name = "test-http-server"

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self._address = (host, port)
        self._httpd: _QuietHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def started(self) -> bool:
        return self._httpd is not None

    def _start(self) -> None:
        if self._httpd is not None:
            raise RuntimeError(f"{type(self).__name__} already started")
        self._httpd = _QuietHTTPServer(self._address, self.handler_class, self)
        self._thread = threading.Thread(
            target=self._httpd.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=self.thread_name,
            daemon=True,
        )
        self._thread.start()

    def _stop(self) -> None:
        httpd, thread = self._httpd, self._thread
        self._httpd = self._thread = None
        if httpd is not None:
            httpd.shutdown()
            httpd.server_close()
        if thread is not None:
            thread.join(timeout=5)

    @property
    def host(self) -> str:
        return self._address[0]

    @property
    def port(self) -> int:
        if self._httpd is None:
            raise RuntimeError(f"{type(self).__name__} is not started")
        return int(self._httpd.server_address[1])

    @property
    def base_url(self) -> str:
        """`http://127.0.0.1:PORT`."""
        return f"http://{self.host}:{self.port}"
