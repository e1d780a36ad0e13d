#!/usr/bin/env bash
# Install into .venv and run the whole suite: lint, migrations and type checks, then every
# test on SQLite; the engine-dependent ones (marker `db_engine`) on PostgreSQL and the
# broker's own (marker `broker`) again on Redis, when those servers are installed
# (started here if they are not running); skipped, saying so, when they are not.
#
# On CI (CI=true) nothing is skipped for want of a part: a missing Chromium, PostgreSQL
# or Redis fails the run, unless ALLOW_SKIP names it (ALLOW_SKIP=chromium,postgres,redis).
# The tests apply the same rule (tests/support/requirements.py).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-$(command -v python3.11 || command -v python3)}

# The browser tests drive Debian's Chromium; install it where this user can, while pip
# installs the rest (both mostly wait on downloads and the disk).
chromium_install=
if [ ! -x /usr/bin/chromium ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  echo "== installing Debian's chromium for the browser tests"
  { apt-get install -y -qq chromium || { apt-get update -qq && apt-get install -y -qq chromium; }; } \
    >/dev/null 2>&1 &
  chromium_install=$!
fi

# Keep compiled modules: three pytest passes, and the hundreds of qcluster, gunicorn and
# manage.py subprocesses the tests start, import the same sources; without the .pyc
# files each one compiles them again (and pytest rewrites every test module's asserts).
# So pip need not compile every installed module up front: the first import does it.
unset PYTHONDONTWRITEBYTECODE
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install --quiet --no-compile --disable-pip-version-check \
  --require-hashes -r requirements-dev.lock
unset DATABASE_URL REDIS_URL

skip_allowed() {  # $1: chromium, postgres or redis
  case "${CI:-}" in 1 | true | TRUE | True | yes) ;; *) return 0 ;; esac
  case ",${ALLOW_SKIP:-}," in *",$1,"*) return 0 ;; esac
  return 1
}

missing() {  # $1: the part, $2: what is skipped for want of it
  if skip_allowed "$1"; then
    echo "== $2: SKIPPED"
  else
    echo "== $2: FAILED: CI=true and $1 is missing (ALLOW_SKIP=$1 would allow the skip)"
    exit 1
  fi
}

.venv/bin/ruff check .
.venv/bin/python manage.py makemigrations --check --dry-run >/dev/null 2>&1 \
  || { echo "models and migrations disagree: run manage.py makemigrations"; exit 1; }

# Types: strict on workflows/, basic on orders/ (pyproject.toml, [tool.mypy]). A cold
# mypy takes about a minute of one core: it runs beside the tests at the lowest
# priority, on the CPU they leave idle while they wait on clusters, and the run fails at
# the end if it found anything.
mypy_log=$(mktemp)
nice -n 19 .venv/bin/mypy >"$mypy_log" 2>&1 &
mypy_check=$!

if [ -n "$chromium_install" ] && ! wait "$chromium_install"; then
  echo "   chromium could not be installed: the browser tests will skip (fail with CI=true)"
fi

# pytest-xdist workers (TEST_WORKERS=1 turns them off). Three on two cores: half the
# suite's time is spent waiting on clusters, servers and leases, not computing (four
# gain little more and squeeze the tests' timing windows); on PostgreSQL two, as each
# worker's clusters hold pooled connections of the server's 100, and two on Redis,
# which runs beside PostgreSQL.
# Each worker is a deployment of its own: its own test database (pytest-django suffixes
# it: .test-db.sqlite3_gw0, test_test_gw1), its own queue name, Redis database and
# metrics directory (polos_site/settings.py, PYTEST_XDIST_WORKER), its own local servers.
# `worksteal` hands a worker that ran out of tests some of another's.
WORKERS=${TEST_WORKERS:-3}
parallel=()
[ "$WORKERS" -gt 1 ] && parallel=(-n "$WORKERS" --dist worksteal)
parallel_two=()
[ "$WORKERS" -gt 1 ] && parallel_two=(-n 2 --dist worksteal)

PG_URL=${TEST_POSTGRES_URL:-postgres://postgres@127.0.0.1:5432/test}
postgres_up=false
.venv/bin/python scripts/service_up.py postgres "$PG_URL" && postgres_up=true

echo "== test suite on SQLite"
# Every test runs here, except those that need PostgreSQL itself (several clusters,
# connection pooling; marker `postgres`) and, when PostgreSQL is there to run them, the
# qcluster tests of the engine's behaviour (markers `qcluster` and `db_engine`: crashes,
# take-overs, chaos): real clusters are the suite's slowest tests, so these run once, on
# the engine production runs. The outage drills (marker `outage`) run here only: they
# test the engine's waits, not the database or the broker.
on_sqlite="not postgres"
$postgres_up && on_sqlite="not postgres and not (qcluster and db_engine)"
.venv/bin/python -m pytest "${parallel[@]}" -m "$on_sqlite" "$@"

# The PostgreSQL and Redis passes run side by side: both mostly wait on clusters. The
# Redis pass's output follows the PostgreSQL pass's.
REDIS_TEST_URL=${TEST_REDIS_URL:-redis://127.0.0.1:6379/15}
redis_pass=
redis_log=$(mktemp)
if .venv/bin/python scripts/service_up.py redis "$REDIS_TEST_URL"; then
  # The broker's own behaviour (marker `broker`: delivery through real clusters, tasks
  # lost with a killed cluster, what waits).
  REDIS_URL="$REDIS_TEST_URL" .venv/bin/python -m pytest "${parallel_two[@]}" \
    -m "broker and not postgres and not outage" "$@" >"$redis_log" 2>&1 &
  redis_pass=$!
else
  missing redis "Redis (not installed, or no server answers at $REDIS_TEST_URL)"
fi

status=0
if $postgres_up; then
  echo "== engine-dependent tests on PostgreSQL ($PG_URL)"
  # Only what behaves differently on another engine (marker `db_engine`: locking,
  # constraints, connections, the queue, races; README "Tests") and what needs
  # PostgreSQL itself.
  DATABASE_URL="$PG_URL" .venv/bin/python -m pytest "${parallel_two[@]}" \
    -m "(db_engine or postgres) and not outage" "$@" || status=$?
else
  missing postgres "PostgreSQL (not installed, or no server answers at $PG_URL)"
fi

if [ -n "$redis_pass" ]; then
  echo "== queue tests on the Redis broker ($REDIS_TEST_URL)"
  wait "$redis_pass" || status=$?
  cat "$redis_log"
fi
rm -f "$redis_log"

echo "== mypy"
wait "$mypy_check" || status=$?
cat "$mypy_log"
rm -f "$mypy_log"
exit "$status"
