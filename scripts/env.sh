# Sourced by the other scripts: create (or reuse) the virtual environment with the project installed, then
# activate it. Re-installs only when setup.py, the constraints file or its choice changed since the last
# install. The torch / torchvision pair comes from the constraints file: constraints.txt (the newest tested
# pair) unless IFR_CONSTRAINTS names another, e.g. constraints-lower.txt (setup.py's lower bound), usually
# with IFR_VENV naming a second environment for it. To use your own environment's torch instead, install with
# `pip install -e '.[test]'` there (setup.py only states a range, so your torch is kept).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${IFR_VENV:-$ROOT/.venv}"
CONSTRAINTS="${IFR_CONSTRAINTS:-$ROOT/constraints.txt}"
if [ ! -f "$CONSTRAINTS" ]; then
    echo "[env] IFR_CONSTRAINTS names $CONSTRAINTS, which is not a file: name constraints.txt or constraints-lower.txt" >&2
    exit 1
fi
CONSTRAINTS="$(cd "$(dirname "$CONSTRAINTS")" && pwd)/$(basename "$CONSTRAINTS")"
PYTHON="${PYTHON:-python3.11}"
command -v "$PYTHON" >/dev/null 2>&1 || PYTHON=python3
if [ ! -x "$VENV/bin/python" ]; then
    echo "[env] creating virtual environment $VENV"
    "$PYTHON" -m venv "$VENV"
fi
# shellcheck disable=SC1091
. "$VENV/bin/activate"
STAMP="$VENV/.ifr-installed"
WANT="$( (cat "$ROOT/setup.py" "$CONSTRAINTS"; echo "$CONSTRAINTS") | sha256sum | cut -d' ' -f1)"
if [ ! -f "$STAMP" ] || [ "$(cat "$STAMP")" != "$WANT" ]; then
    echo "[env] installing ifr and its dependencies (torch pinned by $CONSTRAINTS) into $VENV (first run takes a few minutes)"
    python -m pip install -q --upgrade pip
    python -m pip install -q -c "$CONSTRAINTS" -e "$ROOT[test]"
    echo "$WANT" > "$STAMP"
fi
cd "$ROOT"
