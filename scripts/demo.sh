#!/usr/bin/env bash
# One command on a fresh machine: install medseg-attn and run the demo on the built-in real brain MRI.
#   scripts/demo.sh [OUTPUT_DIR] [extra demo options, e.g. --minutes 2 --baseline]
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="$("$repo/scripts/setup_env.sh")"
output="${1:-demo_out}"
shift || true
exec "$venv/bin/medseg-attn" demo --output "$output" "$@"
