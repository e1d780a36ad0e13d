import os
import re
import signal
import subprocess
import sys
import time

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser

DEFAULT_ADDRPORT = "127.0.0.1:8000"
# What runserver accepts: "8000", "host:8000", "1.2.3.4:8000", "[::1]:8000".
_ADDRPORT = re.compile(r"^(?:(?P<host>\[[0-9a-fA-F:.]+\]|[^\s:\[\]]+):)?(?P<port>\d{1,5})$")
# A server bound to every interface is reached, from this machine, on loopback.
_ANY_HOST = {"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "0": "127.0.0.1", "[::]": "[::1]"}


def site_url_for(addrport: str) -> str:
    """The address a browser on this machine uses for a server on `addrport`:
    `0.0.0.0:8080` is `http://127.0.0.1:8080`. `CommandError` for what runserver
    would refuse."""
    match = _ADDRPORT.match(addrport.strip())
    if match is None or not 0 < int(match["port"]) < 65536:
        raise CommandError(
            f"{addrport!r} is not an address to serve on: give PORT, HOST:PORT or "
            "[IPv6]:PORT, e.g. 8080, 0.0.0.0:8000 or [::1]:8000"
        )
    host = match["host"] or ""
    return f"http://{_ANY_HOST.get(host, host)}:{int(match['port'])}"


class Command(BaseCommand):
    help = (
        "Run the web server and a django-q2 cluster together; Ctrl-C stops both. The "
        "site's links (SITE_URL) follow the address unless SITE_URL is set."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "addrport",
            nargs="?",
            default=DEFAULT_ADDRPORT,
            help=f"Where the web server listens: PORT, HOST:PORT or [IPv6]:PORT (default "
            f"{DEFAULT_ADDRPORT}; 0.0.0.0:8000 for every interface).",
        )
        parser.add_argument(
            "--print-site-url",
            action="store_true",
            help="Print the site's address for ADDRPORT (SITE_URL if set) and exit.",
        )

    def handle(
        self, *args: object, addrport: str, print_site_url: bool = False, **options: object
    ) -> None:
        listen_url = site_url_for(addrport)
        # An explicit SITE_URL (a proxy, a public name) wins; otherwise the links point
        # where this server listens, in this process and the two it starts.
        site_url = os.environ.get("SITE_URL", "").strip() or listen_url
        if print_site_url:
            self.stdout.write(site_url)
            return
        os.environ["SITE_URL"] = site_url
        manage = [sys.executable, str(settings.BASE_DIR / "manage.py")]
        processes = {
            "web": subprocess.Popen([*manage, "runserver", "--noreload", addrport]),
            "qcluster": subprocess.Popen([*manage, "qcluster"]),
        }
        base = site_url.rstrip("/")
        self.stdout.write(
            f"web on {listen_url}/ and a qcluster with "
            f"{settings.Q_CLUSTER['workers']} workers; Ctrl-C stops both\n"
            f"  admin    {base}/admin/\n"
            f"  console  {base}/runs/\n"
            f"  API docs {base}/api/docs/\n"
            f"  links    follow SITE_URL={site_url}"
        )
        stopping = False

        def stop(signum: int, frame: object) -> None:
            nonlocal stopping
            stopping = True

        signal.signal(signal.SIGINT, stop)
        signal.signal(signal.SIGTERM, stop)
        while not stopping and all(p.poll() is None for p in processes.values()):
            time.sleep(0.2)
        for process in processes.values():
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for name, process in processes.items():
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
            if process.returncode not in (0, -signal.SIGTERM) and not stopping:
                self.stderr.write(f"{name} exited with status {process.returncode}")
        if not stopping:
            sys.exit(1)
