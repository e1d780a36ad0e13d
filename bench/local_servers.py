"""The suite's local servers (tests/support) as the benchmarks' model, Stripe and mail, each
in a process of its own so that its CPU is measured apart from the project's.

    python -m bench.local_servers openai|stripe|smtp [--latency SECONDS]

prints one JSON line (`{"port": N}`) once it listens, and on SIGTERM one more with what
it served (`{"requests": {...}}`) before it exits. The model server answers every chat
completion as the order agent's simulated model would (`orders.agents`), after
`--latency` seconds on the server side, as a remote model takes: the worker waits on a
socket, not on `asyncio.sleep`.
"""

import argparse
import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from typing import IO, Any

from tests.support.cluster import ROOT

OPENAI_KEY = "sk-bench-local"
STRIPE_KEY = "sk_test_bench_local"
KINDS = ("openai", "stripe", "smtp")
# Ids in paths (cus_..., pi_...) shown as {id}: one line per endpoint.
_ID = re.compile(r"(?<=/)(?:cus|pi|ch|re|pm|dp|evt)_[A-Za-z0-9_]+")


def order_model_responder(latency: float) -> Callable[[dict[str, Any]], Any]:
    """A responder for `OpenAITestServer.respond_with`: the order agent's simulated model
    (Django must be set up), answering after `latency` seconds."""
    from orders.agents import simulated_order_agent
    from tests.support.openai_server import reply_text, reply_tool_calls

    def respond(request: dict[str, Any]) -> Any:
        turn = simulated_order_agent(request["messages"], None)  # type: ignore[arg-type]
        with IN_FLIGHT.holding():
            time.sleep(latency)
        if turn.tool_calls:
            return reply_tool_calls(turn.tool_calls, content=turn.content)
        return reply_text(turn.content or "")

    return respond


class InFlight:
    """How many model calls the server holds at once: the most, and the mean over the
    time from the first call to the last answer (what the cluster-wide model cap let
    through)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.held = self.peak = 0
        self._first = self._last = self._area = 0.0

    @contextlib.contextmanager
    def holding(self) -> Iterator[None]:
        self._change(+1)
        try:
            yield
        finally:
            self._change(-1)

    def _change(self, step: int) -> None:
        with self._lock:
            now = time.monotonic()
            if not self._first:
                self._first = now
            elif self.held:
                self._area += self.held * (now - self._last)
            self._last = now
            self.held += step
            self.peak = max(self.peak, self.held)

    def summary(self) -> dict[str, float]:
        span = self._last - self._first
        return {
            "in flight max": self.peak,
            "in flight mean": round(self._area / span, 1) if span else 0,
        }


IN_FLIGHT = InFlight()


def real_path_settings(ports: dict[str, int]) -> dict[str, str]:
    """The service's settings for the real path: the `openai` and `stripe` SDKs and SMTP
    on the local servers' ports."""
    return {
        "LLM_PROVIDER": "openai",
        "OPENAI_API_KEY": OPENAI_KEY,
        "OPENAI_BASE_URL": f"http://127.0.0.1:{ports['openai']}/v1",
        "PAYMENT_GATEWAY": "stripe",
        "STRIPE_API_KEY": STRIPE_KEY,
        "STRIPE_API_BASE": f"http://127.0.0.1:{ports['stripe']}",
        "EMAIL_HOST": "127.0.0.1",
        "EMAIL_PORT": str(ports["smtp"]),
    }


class LocalServer:
    """One local server in a child process (its own process group)."""

    def __init__(self, kind: str, env: dict[str, str], latency: float = 0.0) -> None:
        self.kind = kind
        self.env = env
        self.latency = latency
        self.process: subprocess.Popen[str] | None = None
        self.port = 0
        self.served: dict[str, float] = {}

    def start(self, timeout: float = 30) -> "LocalServer":
        self.process = subprocess.Popen(
            [sys.executable, "-m", "bench.local_servers", self.kind, f"--latency={self.latency}"],
            cwd=ROOT,
            env=self.env,
            start_new_session=True,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.process.stdout is not None
        line = _readline(self.process.stdout, timeout)
        try:
            self.port = int(json.loads(line)["port"])
        except (ValueError, KeyError, TypeError):
            self.stop()
            raise RuntimeError(f"local {self.kind} server did not start: {line!r}") from None
        return self

    def exited(self) -> int | None:
        return self.process.poll() if self.process else None

    def log_tail(self) -> str:
        return f"local {self.kind} server"

    def stop(self) -> None:
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            assert self.process.stdout is not None
            line = _readline(self.process.stdout, 10)
            if line:
                self.served = json.loads(line).get("requests", {})
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None


def _readline(stream: IO[str], timeout: float) -> str:
    got: list[str] = []
    reader = threading.Thread(target=lambda: got.append(stream.readline()), daemon=True)
    reader.start()
    reader.join(timeout)
    return got[0].strip() if got else ""


class LocalServers:
    """The model, Stripe and mail servers, each a `LocalServer`."""

    def __init__(self, env: dict[str, str], latency: float) -> None:
        self.servers = {
            kind: LocalServer(kind, env, latency if kind == "openai" else 0.0) for kind in KINDS
        }

    def start(self) -> "LocalServers":
        for server in self.servers.values():
            server.start()
        return self

    def settings(self) -> dict[str, str]:
        return real_path_settings({k: s.port for k, s in self.servers.items()})

    def pids(self) -> dict[str, int]:
        return {f"{kind} server": s.process.pid for kind, s in self.servers.items() if s.process}

    def stop(self) -> dict[str, dict[str, float]]:
        for server in self.servers.values():
            server.stop()
        return {kind: s.served for kind, s in self.servers.items()}


# -- the child process -----------------------------------------------------------------


def _serve(kind: str, latency: float) -> Any:
    if kind == "openai":
        import django

        django.setup()
        from tests.support.openai_server import OpenAITestServer

        server = OpenAITestServer(api_key=OPENAI_KEY).start()
        server.respond_with(order_model_responder(latency))
        return server
    if kind == "stripe":
        from tests.support.stripe_server import StripeServer

        return StripeServer().start()
    from tests.support.smtp_server import SMTPTestServer

    return SMTPTestServer().start()


def _served(kind: str, server: Any) -> dict[str, float]:
    if kind == "smtp":
        return {"messages": len(server.messages)}
    served = dict(Counter(f"{r.method} {_ID.sub('{id}', r.path)}" for r in server.requests))
    return served | IN_FLIGHT.summary() if kind == "openai" else served


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("kind", choices=KINDS)
    parser.add_argument("--latency", type=float, default=0.0)
    args = parser.parse_args(argv)
    stopping = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopping.set())
    signal.signal(signal.SIGINT, lambda *_: stopping.set())
    server = _serve(args.kind, args.latency)
    print(json.dumps({"port": server.port}), flush=True)
    while not stopping.wait(0.5):
        if os.getppid() == 1:  # the benchmark died: do not outlive it
            break
    served = _served(args.kind, server)
    print(json.dumps({"requests": served}), flush=True)
    stop = threading.Thread(target=server.stop, daemon=True)
    stop.start()
    stop.join(5)
    return 0


if __name__ == "__main__":
    sys.exit(main())
