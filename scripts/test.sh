#!/usr/bin/env bash
# Install into .venv and run the whole suite: lint, migrations check, pytest on SQLite,
# then pytest again on PostgreSQL when one answers at $TEST_POSTGRES_URL.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-$(command -v python3.11 || command -v python3)}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install --quiet --disable-pip-version-check -r requirements-dev.txt
unset DATABASE_URL REDIS_URL

.venv/bin/ruff check .
.venv/bin/python manage.py makemigrations --check --dry-run >/dev/null \
  || { echo "models and migrations disagree: run makemigrations"; exit 1; }

echo "== test suite on SQLite"
.venv/bin/python -m pytest "$@"

PG_URL=${TEST_POSTGRES_URL:-postgres://postgres@127.0.0.1:5432/test}
if .venv/bin/python scripts/service_up.py postgres "$PG_URL"; then
  echo "== test suite on PostgreSQL ($PG_URL)"
  DATABASE_URL="$PG_URL" .venv/bin/python -m pytest "$@"
else
  echo "== PostgreSQL: SKIPPED (no server answers at $PG_URL)"
fi
