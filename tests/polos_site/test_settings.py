"""Settings come from the environment: production defaults are safe, and the deploy
checklist passes with the production variables set."""

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PRODUCTION = {
    "DJANGO_DEBUG": "0",
    "DJANGO_SECRET_KEY": "a-long-random-production-secret-key-0123456789-abcdefghijklmnop",
    "DJANGO_ALLOWED_HOSTS": "orders.example.com",
    "DATABASE_URL": "sqlite:////tmp/settings-check.sqlite3",
}


def manage(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    clean = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("DJANGO_", "OPENAI_", "STRIPE_", "LLM_", "PAYMENT_"))
    }
    return subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=ROOT,
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_check_deploy_is_clean_with_production_variables():
    result = manage("check", "--deploy", "--fail-level", "WARNING", env=PRODUCTION)
    assert result.returncode == 0, result.stderr
    assert "no issues" in result.stdout


def test_production_never_falls_back_to_simulated_providers():
    code = (
        "from django.conf import settings; print(settings.LLM_PROVIDER, settings.PAYMENT_GATEWAY)"
    )
    result = manage("shell", "-c", code, env=PRODUCTION)
    assert result.stdout.split()[-2:] == ["openai", "stripe"], result.stderr
    asked = manage(
        "shell",
        "-c",
        code,
        env={**PRODUCTION, "LLM_PROVIDER": "simulated", "PAYMENT_GATEWAY": "simulated"},
    )
    assert asked.stdout.split()[-2:] == ["simulated", "simulated"], asked.stderr


def test_production_without_a_secret_key_refuses_to_start():
    env = {k: v for k, v in PRODUCTION.items() if k != "DJANGO_SECRET_KEY"}
    result = manage("check", env=env)
    assert result.returncode != 0
    assert "DJANGO_SECRET_KEY must be set when DJANGO_DEBUG=0" in result.stderr


def test_error_pages_hide_credentials_in_connection_urls(settings):
    from polos_site.reporting import SafeReporterFilter

    settings.REDIS_URL = "redis://:hunter2@cache.internal:6379/0"
    settings.Q_CLUSTER = {**settings.Q_CLUSTER, "redis": settings.REDIS_URL}
    settings.STRIPE_API_KEY = "sk_live_secret"
    shown = SafeReporterFilter().get_safe_settings()
    assert "hunter2" not in str(shown) and "sk_live_secret" not in str(shown)


def test_the_retry_horizons_are_read_per_dependency_and_bad_ones_refused():
    code = (
        "from django.conf import settings; "
        "print(settings.WORKFLOWS_TRANSIENT_RETRY_HORIZON, "
        "settings.WORKFLOWS_TRANSIENT_RETRY_HORIZONS)"
    )
    env = {
        "WORKFLOWS_TRANSIENT_RETRY_HORIZON": "1800",
        "WORKFLOWS_TRANSIENT_RETRY_HORIZONS": "stripe=7200, smtp=600",
    }
    result = manage("shell", "-c", code, env=env)
    assert result.stdout.strip().endswith("1800 {'stripe': 7200.0, 'smtp': 600.0}"), result.stderr
    for bad in ("stripe", "stripe=soon", "smtp=0"):
        refused = manage("check", env={"WORKFLOWS_TRANSIENT_RETRY_HORIZONS": bad})
        assert refused.returncode != 0 and "horizon" in refused.stderr.lower(), bad
