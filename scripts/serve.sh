#!/usr/bin/env bash
# Install into .venv, migrate, create the demo admin, then run web + qcluster together.
set -euo pipefail
cd "$(dirname "$0")/.."

usage() {
    cat <<'EOF'
usage: scripts/serve.sh [ADDRESS]

Install into .venv, migrate, create the demo admin (credentials printed), then run the
web server and a qcluster together; Ctrl-C stops both.

ADDRESS  where the web server listens: PORT, HOST:PORT or [IPv6]:PORT
         (default 127.0.0.1:8000; 0.0.0.0:8000 listens on every interface).
         The links printed, SITE_URL (links in the reviewers' emails) and the demo's
         links follow it: 0.0.0.0:8080 gives http://127.0.0.1:8080. Set SITE_URL
         yourself when the service is reached at another address (a proxy).
EOF
}
case "${1:-}" in
    -h | --help) usage; exit 0 ;;
    -*) usage >&2; exit 2 ;;
esac
[ $# -le 1 ] || { usage >&2; exit 2; }
ADDRESS=${1:-127.0.0.1:8000}

PYTHON=${PYTHON:-$(command -v python3.11 || command -v python3)}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install --quiet --disable-pip-version-check --require-hashes -r requirements.lock
# Checked before anything else runs, and the one place the address becomes a URL.
SITE_URL=$(.venv/bin/python manage.py serve --print-site-url "$ADDRESS")
export SITE_URL
.venv/bin/python manage.py migrate --noinput
.venv/bin/python manage.py bootstrap_demo
echo "The demo, in another terminal: SITE_URL=$SITE_URL .venv/bin/python manage.py demo"
exec .venv/bin/python manage.py serve "$ADDRESS"
