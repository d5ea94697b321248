#!/usr/bin/env bash
# The device check (see scripts/gpu_check.py): bash scripts/gpu_check.sh [--out DIR] [--dry-run]
# Uses the Python of the active environment when it has ifr installed (your own CUDA torch), else ./.venv.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if ! python -c "import ifr, torch" >/dev/null 2>&1; then
    . "$ROOT/scripts/env.sh"
fi
exec python "$ROOT/scripts/gpu_check.py" "$@"
