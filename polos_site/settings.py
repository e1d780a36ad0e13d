"""Settings, read from the environment (see `.env.example` for every variable).

Defaults give a working development service on a fresh machine: SQLite in the
project directory, django-q2's ORM broker on the same database, the simulated
model and payment gateway. Production sets `DJANGO_DEBUG=0` and the variables
that `manage.py check --deploy` asks for.
"""

import os
from datetime import timedelta
from decimal import Decimal, InvalidOperation
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import dj_database_url
import django_stubs_ext
from django.core.exceptions import ImproperlyConfigured

# Lets classes that django-stubs types as generic be subscripted at run time too
# (`admin.ModelAdmin[WorkflowRun]`), as `mypy` asks (scripts/test.sh).
django_stubs_ext.monkeypatch()

BASE_DIR = Path(__file__).resolve().parent.parent


def env_str(name: str, default: str = "") -> str:
    return os.environ.get(name, default).strip()


def env_bool(name: str, default: bool) -> bool:
    raw = env_str(name)
    if not raw:
        return default
    if raw.lower() in {"1", "true", "yes", "on"}:
        return True
    if raw.lower() in {"0", "false", "no", "off"}:
        return False
    raise ImproperlyConfigured(f"{name} must be 1/0, true/false, yes/no or on/off, not {raw!r}")


def env_int(name: str, default: int) -> int:
    raw = env_str(name)
    try:
        return int(raw) if raw else default
    except ValueError:
        raise ImproperlyConfigured(f"{name} must be an integer, not {raw!r}") from None


def env_decimal(name: str, default: str) -> Decimal:
    raw = env_str(name, default)
    try:
        return Decimal(raw)
    except InvalidOperation:
        raise ImproperlyConfigured(f"{name} must be a decimal amount, not {raw!r}") from None


def env_list(name: str, default: list[str]) -> list[str]:
    raw = env_str(name)
    return [item.strip() for item in raw.split(",") if item.strip()] if raw else default


def env_amounts(name: str) -> dict[str, Decimal]:
    """ "usd:1000,jpy:150000" as {"usd": Decimal("1000"), "jpy": Decimal("150000")}."""
    amounts = {}
    for item in env_list(name, []):
        currency, _, amount = item.partition(":")
        try:
            value = Decimal(amount.strip())
        except InvalidOperation:
            value = Decimal("NaN")
        if len(currency.strip()) != 3 or not value.is_finite() or value < 0:
            raise ImproperlyConfigured(
                f"{name} must look like usd:1000,jpy:150000, not {item!r} in it"
            )
        amounts[currency.strip().lower()] = value
    return amounts


DEBUG = env_bool("DJANGO_DEBUG", True)

SECRET_KEY = env_str("DJANGO_SECRET_KEY")
if not SECRET_KEY:
    if not DEBUG:
        raise ImproperlyConfigured("DJANGO_SECRET_KEY must be set when DJANGO_DEBUG=0")
    SECRET_KEY = "django-insecure-development-only-key-do-not-use-in-production"

ALLOWED_HOSTS = env_list("DJANGO_ALLOWED_HOSTS", ["localhost", "127.0.0.1", "[::1]"])
CSRF_TRUSTED_ORIGINS = env_list("DJANGO_CSRF_TRUSTED_ORIGINS", [])

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "rest_framework.authtoken",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    # Before django_q: its `qcluster` command (many segments per worker, clean stop)
    # replaces django-q2's.
    "workflows",
    "django_q",
    "axes",
    "orders",
    "orders.client_webhooks",
    # Last: its admin module gives third-party admin actions their permissions.
    "polos_site",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    # Before anything looks a cookie, a header or the URL up in the database.
    "polos_site.middleware.NulRefusalMiddleware",
    # Serves the admin's and the console's static files from gunicorn: no CDN, no nginx.
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    # Last, as django-axes asks: turns a locked-out login into its 429 page.
    "axes.middleware.AxesMiddleware",
]

ROOT_URLCONF = "polos_site.urls"
WSGI_APPLICATION = "polos_site.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

# --- Database -------------------------------------------------------------------------
# SQLite (the default) runs in WAL mode with IMMEDIATE transactions and a 20 s busy
# timeout: writers queue instead of failing with "database is locked".
# Persistent connections matter: django-q2 closes stale connections on every poll,
# and reconnecting each time cuts PostgreSQL throughput by an order of magnitude.
DATABASES = {
    "default": dj_database_url.parse(
        env_str("DATABASE_URL", f"sqlite:///{BASE_DIR / 'db.sqlite3'}"),
        conn_max_age=env_int("DATABASE_CONN_MAX_AGE", 600),
        conn_health_checks=True,
    )
}
# PostgreSQL: Django's connection pool, one per process, opened lazily (so after
# django-q2 forks its workers; see workflows/apps.py). A process never holds more than
# DATABASE_POOL_MAX_SIZE connections, whatever its threads do: a web process's request
# threads and a worker's sync threads borrow one per request or call and give it back.
DATABASE_POOL_MAX_SIZE = env_int("DATABASE_POOL_MAX_SIZE", 8)
_ENGINE = DATABASES["default"]["ENGINE"]
if _ENGINE == "django.db.backends.postgresql" and env_bool("DATABASE_POOL", True):
    DATABASES["default"]["CONN_MAX_AGE"] = 0  # the pool keeps the connections
    DATABASES["default"]["CONN_HEALTH_CHECKS"] = False
    DATABASES["default"].setdefault("OPTIONS", {})["pool"] = {
        "min_size": 0,
        "max_size": DATABASE_POOL_MAX_SIZE,
        "timeout": env_int("DATABASE_POOL_TIMEOUT", 30),
    }
# PostgreSQL: parameters bound by the server rather than quoted into the SQL by psycopg in
# Python, and repeated statements prepared there; why, and when to turn it off:
# docs/deploy.md, "Database connections".
if _ENGINE == "django.db.backends.postgresql" and env_bool("DATABASE_SERVER_SIDE_BINDING", True):
    DATABASES["default"].setdefault("OPTIONS", {}).update(
        server_side_binding=True, prepare_threshold=5
    )
if _ENGINE == "django.db.backends.sqlite3":
    DATABASES["default"]["OPTIONS"] = {
        "transaction_mode": "IMMEDIATE",
        "timeout": 20,
        "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL;",
    }
    # A file, not memory: the test suite's qcluster subprocesses share it.
    DATABASES["default"]["TEST"] = {
        "NAME": env_str("TEST_SQLITE_PATH", str(BASE_DIR / ".test-db.sqlite3"))
    }

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = BASE_DIR / "staticfiles"
STATICFILES_DIRS = [BASE_DIR / "static"]

LOGIN_URL = "admin:login"

# --- Login throttling (django-axes) -----------------------------------------------------
# After AXES_FAILURE_LIMIT wrong passwords for one username from one address, logins
# (even with the right password) are refused with 429 for the cool-off. Attempts are
# counted in the database, so every web process sees them; a success resets the count.
# `manage.py axes_reset` lifts a lockout early. Behind a proxy every client shares its
# address, so the lockout is effectively per username.
AUTHENTICATION_BACKENDS = [
    "axes.backends.AxesStandaloneBackend",
    "polos_site.auth_backends.OneQueryPermissionBackend",
]
AXES_FAILURE_LIMIT = env_int("LOGIN_FAILURE_LIMIT", 5)
AXES_COOLOFF_TIME = timedelta(minutes=env_int("LOGIN_COOLOFF_MINUTES", 15))
AXES_LOCKOUT_PARAMETERS = [["username", "ip_address"]]
AXES_RESET_ON_SUCCESS = True
DEFAULT_EXCEPTION_REPORTER_FILTER = "polos_site.reporting.SafeReporterFilter"

# --- Security (production) ------------------------------------------------------------
SECURE_PROXY_SSL_HEADER = (
    ("HTTP_X_FORWARDED_PROTO", "https") if env_bool("DJANGO_BEHIND_TLS_PROXY", False) else None
)
SECURE_SSL_REDIRECT = env_bool("DJANGO_SECURE_SSL_REDIRECT", not DEBUG)
SESSION_COOKIE_SECURE = env_bool("DJANGO_SECURE_COOKIES", not DEBUG)
CSRF_COOKIE_SECURE = SESSION_COOKIE_SECURE
SECURE_HSTS_SECONDS = env_int("DJANGO_HSTS_SECONDS", 0 if DEBUG else 31_536_000)
SECURE_HSTS_INCLUDE_SUBDOMAINS = SECURE_HSTS_SECONDS > 0
SECURE_HSTS_PRELOAD = SECURE_HSTS_SECONDS > 0
SECURE_REDIRECT_EXEMPT = [r"^healthz$"]

# --- Task queue (django-q2) -----------------------------------------------------------
# One task executes one run segment (start or resume → complete, fail or suspend), so
# `timeout` bounds the longest segment, model calls included. `retry` must exceed it
# or a slow segment would be delivered twice (harmless thanks to the run lease, but
# wasted). The engine's own tables are the record of every run, so django-q2 keeps no
# successful results (save_limit -1) and only failed tasks, which are rare.
REDIS_URL = env_str("REDIS_URL")
Q_CLUSTER = {
    "name": env_str("Q_CLUSTER_NAME", "polos"),
    "workers": env_int("Q_WORKERS", 2),
    "timeout": env_int("Q_TIMEOUT", 600),
    "retry": env_int("Q_TIMEOUT", 600) + 120,
    "max_attempts": 3,
    "save_limit": -1,
    "ack_failures": True,
    "catch_up": False,
    "poll": 0.05,
    # Tasks a worker process takes before it is replaced; it drains its segments first.
    "recycle": env_int("Q_RECYCLE", 500),
    "label": "Task queue",
    "sync": env_bool("Q_SYNC", False),
}
if os.environ.get("PYTEST_XDIST_WORKER"):
    # A pytest-xdist worker of the test suite is a deployment of its own (pytest-django
    # gives it its own test database): its own queue on a shared Redis too, which the
    # qcluster subprocesses it starts (inheriting its environment) agree on.
    Q_CLUSTER["name"] = f"{Q_CLUSTER['name']}-{os.environ['PYTEST_XDIST_WORKER']}"
    if REDIS_URL:
        # and its own Redis database: the cache shares it with the broker, and a test's
        # cache.clear() empties the whole database. gwN takes the URL's number less N.
        redis_parts = urlsplit(REDIS_URL)
        redis_database = int(redis_parts.path.strip("/") or 0) - int(
            os.environ["PYTEST_XDIST_WORKER"].removeprefix("gw")
        )
        REDIS_URL = urlunsplit(redis_parts._replace(path=f"/{redis_database % 16}"))
if REDIS_URL:
    Q_CLUSTER["redis"] = REDIS_URL
else:
    Q_CLUSTER["orm"] = "default"
    # django-q2's ORM broker, a task's take and acknowledgement one statement each
    # (workflows/engine/queue.py).
    Q_CLUSTER["broker_class"] = "workflows.engine.queue.OrmBroker"

# --- Workflow engine ------------------------------------------------------------------
# Modules imported at start-up so that their @workflow functions are registered.
WORKFLOWS_MODULES = [
    "orders.order_processing",
    "orders.client_webhooks.delivery",
    *env_list("WORKFLOWS_EXTRA_MODULES", []),
]
WORKFLOWS_LEASE_SECONDS = env_int("WORKFLOWS_LEASE_SECONDS", 60)
# A run pending this long with no task waiting for it in the queue lost its task (a
# killed cluster held it); the reaper queues it again.
WORKFLOWS_PENDING_REQUEUE_SECONDS = env_int("WORKFLOWS_PENDING_REQUEUE_SECONDS", 60)
# How often each worker process runs the reaper (besides the minute's schedule), so that
# a crash is recovered about one lease (or WORKFLOWS_PENDING_REQUEUE_SECONDS) after it.
WORKFLOWS_REAP_SECONDS = env_int("WORKFLOWS_REAP_SECONDS", 10)
# Run segments one worker process keeps in flight on its event loop (workflows/worker/runtime.py).
WORKFLOWS_CONCURRENCY = env_int("WORKFLOWS_CONCURRENCY", 100)
# Threads per worker process for sync work (ORM, Stripe, SMTP), each with a connection.
WORKFLOWS_SYNC_THREADS = env_int("WORKFLOWS_SYNC_THREADS", 6)
# On SIGTERM or recycle: how long in-flight segments may finish before their runs are
# handed back to the queue. With the 5 s step grace the worker exits within 30 s.
WORKFLOWS_DRAIN_SECONDS = env_int("WORKFLOWS_DRAIN_SECONDS", 20)
# A worker cluster's commits do not wait for the disk, except those that guard an outside
# effect; 1 makes them all wait (workflows/engine/durability.py says why not by default).
WORKFLOWS_WORKER_DURABLE_COMMITS = env_bool("WORKFLOWS_WORKER_DURABLE_COMMITS", False)
# How long a task waits for a free slot before it goes back on the queue (below Q_TIMEOUT).
WORKFLOWS_SLOT_WAIT_SECONDS = min(60, env_int("Q_TIMEOUT", 600) // 2)
# The longest segment (start or resume to complete, fail or suspend), model calls included.
WORKFLOWS_SEGMENT_TIMEOUT_SECONDS = env_int("Q_TIMEOUT", 600)
# Cluster-wide caps on model calls in flight: "provider:model=N" or "provider=N", comma-
# separated (workflows/engine/limits.py). The simulated provider is not capped unless named.
# Each process leases a block of slots with its runs' leases (WORKFLOWS_LEASE_SECONDS): a
# dead process's slots are free again one lease period after it died. Why the default is
# 200, and what to set instead: docs/deploy.md, "Model-provider limits".
WORKFLOWS_MODEL_CONCURRENCY = {
    name.strip(): int(limit)
    for name, _, limit in (
        item.partition("=") for item in env_list("WORKFLOWS_MODEL_CONCURRENCY", ["openai=200"])
    )
}
# Dollars per million input/output tokens, by model name (a dated name such as
# gpt-4o-mini-2024-07-18 takes its base model's price). Extend or override with
# WORKFLOWS_MODEL_PRICES="model:input/output,..." (workflows/engine/pricing.py).
WORKFLOWS_MODEL_PRICES = {
    "gpt-4o-mini": {"input": "0.15", "output": "0.60"},
    "gpt-4o": {"input": "2.50", "output": "10.00"},
    "gpt-4.1-mini": {"input": "0.40", "output": "1.60"},
    "gpt-4.1": {"input": "2.00", "output": "8.00"},
    # The simulated provider's stand-ins ("simulated:<model>"), priced as gpt-4o-mini so
    # that the demo shows what its runs would cost; "simulated:0/0" makes them free.
    "simulated": {"input": "0.15", "output": "0.60"},
}
for _name, _, _prices in (item.partition(":") for item in env_list("WORKFLOWS_MODEL_PRICES", [])):
    _input, _, _output = _prices.partition("/")
    try:
        WORKFLOWS_MODEL_PRICES[_name.strip()] = {
            "input": str(Decimal(_input)),
            "output": str(Decimal(_output)),
        }
    except ArithmeticError:
        raise ImproperlyConfigured(
            f"WORKFLOWS_MODEL_PRICES: {_name}:{_prices} is not model:input/output"
        ) from None
# Most one run may spend on model calls, in dollars (unset: no budget); a workflow's
# own `@workflow(budget_usd=...)` wins.
WORKFLOWS_RUN_BUDGET_USD = env_str("WORKFLOWS_RUN_BUDGET_USD") or None
# How long one model call keeps waiting out 429s (Retry-After honoured) before it fails.
WORKFLOWS_RATE_LIMIT_PATIENCE_SECONDS = env_int("WORKFLOWS_RATE_LIMIT_PATIENCE_SECONDS", 600)
# Outages (workflows/engine/retry.py, workflows/engine/circuits.py): a step that names
# its dependency retries its transient failures (refused or reset connections, timeouts,
# 5xx, 429) for this many seconds from the first one, waiting durably, before its run fails;
# WORKFLOWS_TRANSIENT_RETRY_HORIZONS="stripe=7200,smtp=600" sets it per dependency.
WORKFLOWS_TRANSIENT_RETRY_HORIZON = env_int("WORKFLOWS_TRANSIENT_RETRY_HORIZON", 3600)
WORKFLOWS_TRANSIENT_RETRY_HORIZONS: dict[str, float] = {}
for _item in env_list("WORKFLOWS_TRANSIENT_RETRY_HORIZONS", []):
    _dependency, _, _seconds = _item.partition("=")
    try:
        WORKFLOWS_TRANSIENT_RETRY_HORIZONS[_dependency.strip()] = float(int(_seconds))
    except ValueError:
        raise ImproperlyConfigured(
            f"WORKFLOWS_TRANSIENT_RETRY_HORIZONS: {_item!r} is not dependency=seconds"
        ) from None
if WORKFLOWS_TRANSIENT_RETRY_HORIZON <= 0 or min(
    WORKFLOWS_TRANSIENT_RETRY_HORIZONS.values(), default=1
) <= 0:
    raise ImproperlyConfigured("A transient retry horizon is a number of seconds above 0")
# A dependency's circuit opens after this many consecutive transient failures, across
# runs and processes (0: never); while open, one probe goes out at a time, the pause
# between probes doubling from 1 s up to WORKFLOWS_CIRCUIT_PROBE_SECONDS.
WORKFLOWS_CIRCUIT_FAILURES = env_int("WORKFLOWS_CIRCUIT_FAILURES", 5)
WORKFLOWS_CIRCUIT_PROBE_SECONDS = env_int("WORKFLOWS_CIRCUIT_PROBE_SECONDS", 5)
# How often each worker process queues the runs whose next attempt is due and hands out
# the circuits' probes.
WORKFLOWS_WAKE_SECONDS = env_int("WORKFLOWS_WAKE_SECONDS", 1)
if WORKFLOWS_WAKE_SECONDS < 1 or WORKFLOWS_CIRCUIT_PROBE_SECONDS < 1:
    raise ImproperlyConfigured(
        "WORKFLOWS_WAKE_SECONDS and WORKFLOWS_CIRCUIT_PROBE_SECONDS are at least 1 (seconds)"
    )

# Retention of finished runs' history (workflows/engine/retention.py): their steps and
# waits go once the run finished longer ago than the hours, or is not among the rows
# most recently finished; 0 turns a threshold off. A pass runs every 5 minutes, in
# batches of WORKFLOWS_RETENTION_BATCH runs, for at most WORKFLOWS_RETENTION_PASS_SECONDS.
WORKFLOWS_RETENTION_HOURS = env_int("WORKFLOWS_RETENTION_HOURS", 720)
WORKFLOWS_RETENTION_ROWS = env_int("WORKFLOWS_RETENTION_ROWS", 1_000_000)
WORKFLOWS_RETENTION_BATCH = env_int("WORKFLOWS_RETENTION_BATCH", 100)
WORKFLOWS_RETENTION_PASS_SECONDS = env_int("WORKFLOWS_RETENTION_PASS_SECONDS", 60)
if (
    min(WORKFLOWS_RETENTION_HOURS, WORKFLOWS_RETENTION_ROWS) < 0
    or min(WORKFLOWS_RETENTION_BATCH, WORKFLOWS_RETENTION_PASS_SECONDS) < 1
):
    raise ImproperlyConfigured(
        "WORKFLOWS_RETENTION_HOURS and _ROWS are 0 (off) or more; "
        "WORKFLOWS_RETENTION_BATCH and _PASS_SECONDS at least 1"
    )

# --- Model provider -------------------------------------------------------------------
# `openai` speaks Chat Completions through the official SDK to OPENAI_BASE_URL (OpenAI,
# vLLM, Ollama, llama.cpp...). `simulated` is a deterministic offline stand-in: the
# default without an API key in development, and only on explicit request in production.
OPENAI_API_KEY = env_str("OPENAI_API_KEY")
OPENAI_BASE_URL = env_str("OPENAI_BASE_URL")
OPENAI_MAX_RETRIES = env_int("OPENAI_MAX_RETRIES", 2)
OPENAI_TIMEOUT = float(env_str("OPENAI_TIMEOUT", "60"))
LLM_PROVIDER = env_str("LLM_PROVIDER") or ("openai" if OPENAI_API_KEY or not DEBUG else "simulated")
if LLM_PROVIDER not in {"openai", "simulated"}:
    raise ImproperlyConfigured(f"LLM_PROVIDER must be openai or simulated, not {LLM_PROVIDER!r}")
SIMULATED_MODEL_LATENCY = float(env_str("SIMULATED_MODEL_LATENCY", "0"))

# --- Orders -------------------------------------------------------------------------
# Orders above the threshold (strictly) wait for a fraud reviewer; an undecided review
# is treated as a rejection after the timeout.
FRAUD_REVIEW_THRESHOLD = env_decimal("FRAUD_REVIEW_THRESHOLD", "1000.00")
# Per currency, in its major units ("usd:1000,jpy:150000,eur:1000"). A currency not
# listed falls back to FRAUD_REVIEW_THRESHOLD if it has two decimals (USD, EUR...); a
# zero-decimal one (JPY...) must be listed, or all its orders are reviewed (see
# orders.policy).
FRAUD_REVIEW_THRESHOLDS = env_amounts("FRAUD_REVIEW_THRESHOLDS")
FRAUD_REVIEW_TIMEOUT = env_int("FRAUD_REVIEW_TIMEOUT", 86_400)
# The reviewers get an email when a review opens, and a reminder once this share of its
# time has passed with the review still open (0 turns reminders off).
FRAUD_REVIEW_REMINDER_AT = float(env_decimal("FRAUD_REVIEW_REMINDER_AT", "0.75"))
if not 0 <= FRAUD_REVIEW_REMINDER_AT < 1:
    raise ImproperlyConfigured("FRAUD_REVIEW_REMINDER_AT must be at least 0 and below 1")
# A reviewer's claim on a review ("being reviewed by ...") lapses after this many
# minutes, so that a reviewer who walked away does not hold the review up.
FRAUD_REVIEW_CLAIM_MINUTES = env_int("FRAUD_REVIEW_CLAIM_MINUTES", 15)
if FRAUD_REVIEW_CLAIM_MINUTES < 1:
    raise ImproperlyConfigured("FRAUD_REVIEW_CLAIM_MINUTES must be at least 1")
# Where this service is reached, for absolute links in emails (the review page).
SITE_URL = env_str("SITE_URL", "http://127.0.0.1:8000")
# Orders under review are authorized, not charged, and card authorizations lapse (about
# 7 days online): the review must end before they do (checked by orders.policy).
PAYMENT_AUTHORIZATION_DAYS = env_int("PAYMENT_AUTHORIZATION_DAYS", 7)
ORDER_MAX_AMOUNT = env_decimal("ORDER_MAX_AMOUNT", "100000.00")
# Lowercase ISO codes; three-decimal currencies and Stripe's special cases are refused.
ORDER_CURRENCIES = [c.lower() for c in env_list("ORDER_CURRENCIES", ["usd", "eur", "gbp"])]

# --- Payments ---------------------------------------------------------------------------
# `stripe` charges through the official SDK (STRIPE_API_BASE points it at another
# server); `simulated` is an offline stand-in, the default only without a key in
# development.
STRIPE_API_KEY = env_str("STRIPE_API_KEY")
STRIPE_API_BASE = env_str("STRIPE_API_BASE")
STRIPE_MAX_NETWORK_RETRIES = env_int("STRIPE_MAX_NETWORK_RETRIES", 2)
# Verifies `POST /webhooks/stripe/` (whsec_...); unset, the endpoint refuses every event.
STRIPE_WEBHOOK_SECRET = env_str("STRIPE_WEBHOOK_SECRET")
PAYMENT_GATEWAY = env_str("PAYMENT_GATEWAY") or (
    "stripe" if STRIPE_API_KEY or not DEBUG else "simulated"
)
if PAYMENT_GATEWAY not in {"stripe", "simulated"}:
    raise ImproperlyConfigured(
        f"PAYMENT_GATEWAY must be stripe or simulated, not {PAYMENT_GATEWAY!r}"
    )

# --- Email ------------------------------------------------------------------------------
EMAIL_HOST = env_str("EMAIL_HOST")
EMAIL_PORT = env_int("EMAIL_PORT", 25)
EMAIL_HOST_USER = env_str("EMAIL_HOST_USER")
EMAIL_HOST_PASSWORD = env_str("EMAIL_HOST_PASSWORD")
EMAIL_USE_TLS = env_bool("EMAIL_USE_TLS", False)
EMAIL_USE_SSL = env_bool("EMAIL_USE_SSL", False)
EMAIL_TIMEOUT = env_int("EMAIL_TIMEOUT", 30)
# Django's SMTP backend, recording how far each message got (orders/mail.py): a send cut
# off after its data is in doubt, never sent again on a guess.
EMAIL_BACKEND = (
    "orders.mail.SMTPEmailBackend"
    if EMAIL_HOST
    else "django.core.mail.backends.console.EmailBackend"
)
DEFAULT_FROM_EMAIL = env_str("DEFAULT_FROM_EMAIL", "orders@localhost")
SERVER_EMAIL = DEFAULT_FROM_EMAIL
EMAIL_MESSAGE_ID_DOMAIN = env_str("EMAIL_MESSAGE_ID_DOMAIN", "orders.localhost")

# --- Cache ----------------------------------------------------------------------------
# Shared by every web process, so the API throttles count each client's requests once,
# not once per gunicorn worker: Redis when REDIS_URL is set, else a database table
# (created by the orders migration 0004; `createcachetable` is not needed), whose `set`
# is one statement (polos_site/cache.py).
if REDIS_URL:
    CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": REDIS_URL,
        }
    }
else:
    CACHES = {
        "default": {
            "BACKEND": "polos_site.cache.DatabaseCache",
            "LOCATION": "polos_cache",
        }
    }

# --- API ------------------------------------------------------------------------------
REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "rest_framework.authentication.TokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    # A token alone places no order: every API view also needs its role's permission.
    "DEFAULT_PERMISSION_CLASSES": [
        "rest_framework.permissions.IsAuthenticated",
        "orders.api.permissions.IntakeClientPermission",
    ],
    # JSON only, its numbers exact (Decimal): amounts are money.
    "DEFAULT_PARSER_CLASSES": ["orders.api.parsers.ExactJSONParser"],
    "DEFAULT_THROTTLE_CLASSES": ["rest_framework.throttling.UserRateThrottle"],
    "DEFAULT_THROTTLE_RATES": {"user": env_str("API_THROTTLE_RATE", "600/minute")},
    # `?limit=` is capped (orders.api.pagination): no request reads a whole table.
    "DEFAULT_PAGINATION_CLASS": "orders.api.pagination.LimitOffsetPagination",
    # The domain's `NotFound` (a selector's) is a 404.
    "EXCEPTION_HANDLER": "orders.api.exceptions.api_exception_handler",
    "PAGE_SIZE": 50,
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "TEST_REQUEST_DEFAULT_FORMAT": "json",
}
SPECTACULAR_SETTINGS = {
    "TITLE": "Order processing API",
    "DESCRIPTION": "Submit orders, follow their workflow runs, decide fraud reviews.",
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    # An order's shown status appears in the order and in a review's order: one enum,
    # under the name it had before reviews had their own endpoints.
    "ENUM_NAME_OVERRIDES": {"OrderOutputStatusEnum": "orders.selectors.ORDER_STATUS_CHOICES"},
}

# --- Webhooks to API clients (orders/client_webhooks/) --------------------------------------
# Seconds between a delivery's attempts; one more attempt follows the last pause, then the
# delivery is failed. The default spans about 24 h: 5 s, 30 s, 2 min, 10 min, 30 min, then
# hourly.
WEBHOOKS_RETRY_SCHEDULE = [
    float(s)
    for s in env_list("WEBHOOKS_RETRY_SCHEDULE", ["5", "30", "120", "600", "1800", *["3600"] * 23])
]
# An endpoint whose deliveries failed this many times in a row is disabled.
WEBHOOKS_DISABLE_AFTER = env_int("WEBHOOKS_DISABLE_AFTER", 5)
WEBHOOKS_TIMEOUT_SECONDS = float(env_str("WEBHOOKS_TIMEOUT_SECONDS", "10"))
# Plain http URLs (development only), and private/loopback/link-local addresses (tests,
# a receiver on the same network): both refused by default (server-side request forgery).
WEBHOOKS_ALLOW_HTTP = env_bool("WEBHOOKS_ALLOW_HTTP", False)
WEBHOOKS_ALLOW_PRIVATE = env_bool("WEBHOOKS_ALLOW_PRIVATE", False)
# The events' `links` are absolute on this base (e.g. https://orders.example.com); unset,
# they are paths.
WEBHOOKS_LINKS_BASE_URL = env_str("WEBHOOKS_LINKS_BASE_URL")

# --- Logging --------------------------------------------------------------------------
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"}},
    # Credentials (URL userinfo, auth headers, secret settings' values) are masked in
    # every record before any handler writes it (workflows/engine/redaction.py). Every handler
    # gets the filter: a handler added here must list it too.
    "filters": {"redact": {"()": "workflows.engine.redaction.RedactingFilter"}},
    "handlers": {
        "console": {
            "class": "logging.StreamHandler",
            "formatter": "plain",
            "filters": ["redact"],
        }
    },
    "root": {"handlers": ["console"], "level": env_str("LOG_LEVEL", "INFO")},
    # django-q2 logs as "django-q" (through the root's handlers: it adds none of its own).
    "loggers": {
        "django-q": {"level": env_str("Q_LOG_LEVEL", "WARNING")},
        # Not its start-up banner in every command's output; lockouts still log.
        "axes.apps": {"level": "WARNING"},
    },
}

# --- Metrics and traces (workflows/observability/) ------------------------------------
import hashlib  # noqa: E402 (kept within this section)
import tempfile  # noqa: E402

# GET /metrics answers with `Authorization: Bearer <METRICS_TOKEN>`; unset, it answers 404.
METRICS_TOKEN = env_str("METRICS_TOKEN")
# prometheus-client's multiprocess mode: every web and worker process of this host writes
# its counters there and a scrape merges them. It must be in the environment before
# prometheus-client is imported (here, first thing) and is created now. The default is
# named after the deployment (queue name and database), so two deployments or test runs
# on one machine do not mix; wipe it when the whole deployment restarts (docs/deploy.md).
PROMETHEUS_MULTIPROC_DIR = env_str("PROMETHEUS_MULTIPROC_DIR") or os.path.join(
    tempfile.gettempdir(),
    "polos-metrics-{}-{}".format(
        Q_CLUSTER["name"],
        hashlib.sha256(
            repr(
                [DATABASES["default"].get(k) for k in ("ENGINE", "HOST", "PORT", "NAME")]
                + [DATABASES["default"].get("TEST", {}).get("NAME"), REDIS_URL]
            ).encode()
        ).hexdigest()[:12],
    ),
)
os.makedirs(PROMETHEUS_MULTIPROC_DIR, exist_ok=True)
os.environ["PROMETHEUS_MULTIPROC_DIR"] = PROMETHEUS_MULTIPROC_DIR
# OpenTelemetry traces over OTLP/HTTP when set (e.g. http://otel-collector:4318); an
# application that installs its own TracerProvider gets the spans there instead.
OTEL_EXPORTER_OTLP_ENDPOINT = env_str("OTEL_EXPORTER_OTLP_ENDPOINT")
OTEL_EXPORTER_OTLP_TRACES_ENDPOINT = env_str("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
OTEL_SERVICE_NAME = env_str("OTEL_SERVICE_NAME", "polos")
