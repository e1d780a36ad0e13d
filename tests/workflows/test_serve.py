"""`manage.py serve` and `scripts/serve.sh`: the address argument, and the site's links
(SITE_URL) following it."""

import subprocess
from io import StringIO
from pathlib import Path

import pytest
from django.core.management import CommandError, call_command

from workflows.management.commands.serve import site_url_for

SERVE_SH = Path(__file__).resolve().parents[2] / "scripts" / "serve.sh"


@pytest.mark.parametrize(
    ("addrport", "url"),
    [
        ("127.0.0.1:8000", "http://127.0.0.1:8000"),
        ("8080", "http://127.0.0.1:8080"),
        ("0.0.0.0:8000", "http://127.0.0.1:8000"),  # every interface: reached on loopback
        ("localhost:9000", "http://localhost:9000"),
        ("[::1]:8000", "http://[::1]:8000"),
        ("[::]:8000", "http://[::1]:8000"),
    ],
)
def test_the_address_becomes_the_sites_url(addrport, url):
    assert site_url_for(addrport) == url


@pytest.mark.parametrize("addrport", ["", "http://x:80", "host:port", "a b:80", "99999", ":80"])
def test_an_address_runserver_would_refuse_is_a_usage_error(addrport):
    with pytest.raises(CommandError, match=r"is not an address to serve on: give PORT"):
        site_url_for(addrport)


def test_print_site_url_follows_the_address_unless_site_url_is_set(monkeypatch):
    def printed(*args: str) -> str:
        out = StringIO()
        call_command("serve", "--print-site-url", *args, stdout=out)
        return out.getvalue().strip()

    monkeypatch.delenv("SITE_URL", raising=False)
    assert printed("0.0.0.0:8080") == "http://127.0.0.1:8080"
    assert printed() == "http://127.0.0.1:8000"
    monkeypatch.setenv("SITE_URL", "https://orders.example.com")  # behind a proxy
    assert printed("0.0.0.0:8080") == "https://orders.example.com"


def test_serve_sh_documents_its_address_and_refuses_extra_arguments():
    helped = subprocess.run(
        ["bash", str(SERVE_SH), "--help"], capture_output=True, text=True, timeout=30
    )
    assert helped.returncode == 0
    assert helped.stdout.startswith("usage: scripts/serve.sh [ADDRESS]")
    assert "0.0.0.0:8080 gives http://127.0.0.1:8080" in helped.stdout
    assert "SITE_URL" in helped.stdout
    for args in (["--port", "80"], ["127.0.0.1:8000", "extra"]):
        refused = subprocess.run(
            ["bash", str(SERVE_SH), *args], capture_output=True, text=True, timeout=30
        )
        assert refused.returncode == 2 and refused.stderr.startswith("usage:"), args
