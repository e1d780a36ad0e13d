#!/usr/bin/env bash
# Mutation check (issue 23): break the service on purpose, one named break at a time, in
# a scratch copy, and show which breaks the fast tests covering them catch. Not part of
# scripts/test.sh; run it after changing a covered behaviour or its tests, and before a
# release. `bash scripts/mutants.sh [NAME-SUBSTRING ...]`; the breaks are data in
# scripts/mutants.py. Last line: `N passed, N failed` (passed: the break was caught).
set -euo pipefail
cd "$(dirname "$0")/.."
exec .venv/bin/python scripts/mutants.py "$@"
