# Sourced by the other scripts: create (or reuse) ./.venv with the project installed, then activate it.
# Re-installs only when setup.py or constraints.txt changed since the last install. The tested torch /
# torchvision pair comes from constraints.txt; to use your own environment's torch instead, install
# with `pip install -e .` there (setup.py only states a range, so your torch is kept).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${IFR_VENV:-$ROOT/.venv}"
PYTHON="${PYTHON:-python3.11}"
command -v "$PYTHON" >/dev/null 2>&1 || PYTHON=python3
if [ ! -x "$VENV/bin/python" ]; then
    echo "[env] creating virtual environment $VENV"
    "$PYTHON" -m venv "$VENV"
fi
# shellcheck disable=SC1091
. "$VENV/bin/activate"
STAMP="$VENV/.ifr-installed"
WANT="$(cat "$ROOT/setup.py" "$ROOT/constraints.txt" | sha256sum | cut -d' ' -f1)"
if [ ! -f "$STAMP" ] || [ "$(cat "$STAMP")" != "$WANT" ]; then
    echo "[env] installing ifr and its dependencies (torch pinned by constraints.txt) into $VENV (first run takes a few minutes)"
    python -m pip install -q --upgrade pip
    python -m pip install -q -c "$ROOT/constraints.txt" -e "$ROOT[test]"
    echo "$WANT" > "$STAMP"
fi
cd "$ROOT"
