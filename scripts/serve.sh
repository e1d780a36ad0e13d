#!/usr/bin/env bash
# Install into .venv, migrate, create the demo admin, then run web + qcluster together.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-$(command -v python3.11 || command -v python3)}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install --quiet --disable-pip-version-check --require-hashes -r requirements.lock
.venv/bin/python manage.py migrate --noinput
.venv/bin/python manage.py bootstrap_demo
exec .venv/bin/python manage.py serve "${1:-127.0.0.1:8000}"
