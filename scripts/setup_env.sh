#!/usr/bin/env bash
# Create (or reuse) a virtual environment and install medseg-attn into it.
# Usage: source-free; called by scripts/demo.sh and scripts/test.sh.
#   VENV=path        where the environment lives (default: .venv in the repository)
#   TORCH_SPEC=...   the torch requirement installed first when torch is missing
#                    (default torch==2.13.0, the CPU build; e.g. TORCH_SPEC="torch --index-url https://download.pytorch.org/whl/cu124")
#   EXTRAS=dev       optional extras of medseg-attn to install
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${VENV:-$repo/.venv}"
python="${PYTHON:-python3}"
if [ ! -x "$venv/bin/python" ]; then
  echo "[setup] creating virtual environment $venv" >&2
  "$python" -m venv "$venv"
fi
pip=("$venv/bin/python" -m pip --disable-pip-version-check -q)
if ! "$venv/bin/python" -c "import torch" >/dev/null 2>&1; then
  echo "[setup] installing ${TORCH_SPEC:-torch==2.13.0}" >&2
  # shellcheck disable=SC2086
  "${pip[@]}" install ${TORCH_SPEC:-torch==2.13.0}
fi
spec="$repo"
if [ -n "${EXTRAS:-}" ]; then spec="$repo[$EXTRAS]"; fi
echo "[setup] installing medseg-attn${EXTRAS:+[$EXTRAS]} (editable) and its dependencies" >&2
"${pip[@]}" install -e "$spec"
echo "$venv"
