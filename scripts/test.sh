#!/usr/bin/env bash
# One command on a fresh machine: install medseg-attn with its test dependencies and run the test suite.
#   scripts/test.sh [pytest options]      e.g. scripts/test.sh -m slow   (the long real-training tests)
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="$(EXTRAS=dev "$repo/scripts/setup_env.sh")"
cd "$repo"
# the linter first (configuration in pyproject.toml): a finding fails the run before any test starts
"$venv/bin/ruff" check --quiet .
exec "$venv/bin/python" -m pytest "$@"
