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
# A download from the package index can break off for a while (seen in CI: torch's 767 MB wheel cut at half
# way, pip's own resumes then received nothing). pip keeps the files it finished in its cache, so the whole
# install is tried again after a growing pause: IFR_INSTALL_ATTEMPTS times in all, the first pause
# IFR_INSTALL_WAIT_S seconds.
INSTALL_ATTEMPTS="${IFR_INSTALL_ATTEMPTS:-4}"
INSTALL_WAIT_S="${IFR_INSTALL_WAIT_S:-30}"
if ! [[ "$INSTALL_ATTEMPTS" =~ ^[1-9][0-9]*$ && "$INSTALL_WAIT_S" =~ ^[0-9]+$ ]]; then
    echo "[env] IFR_INSTALL_ATTEMPTS must be a whole number >= 1 and IFR_INSTALL_WAIT_S one >= 0 (seconds);" \
         "got '$INSTALL_ATTEMPTS' and '$INSTALL_WAIT_S'" >&2
    exit 1
fi
PYTHON="${PYTHON:-python3.11}"
command -v "$PYTHON" >/dev/null 2>&1 || PYTHON=python3
if [ ! -x "$VENV/bin/python" ]; then
    echo "[env] creating virtual environment $VENV"
    "$PYTHON" -m venv "$VENV"
fi
# shellcheck disable=SC1091
. "$VENV/bin/activate"
pip_with_retries() {
    local attempt=1
    until python -m pip "$@"; do
        if [ "$attempt" -ge "$INSTALL_ATTEMPTS" ]; then
            echo "[env] 'pip $*' failed $attempt times (pip's message is above): if it is a network fault, run" \
                 "this again later (finished downloads are kept); otherwise fix what pip names" >&2
            return 1
        fi
        echo "[env] 'pip $*' failed (attempt $attempt of $INSTALL_ATTEMPTS): trying again in" \
             "$((INSTALL_WAIT_S * attempt)) s" >&2
        sleep $((INSTALL_WAIT_S * attempt))
        attempt=$((attempt + 1))
    done
}
STAMP="$VENV/.ifr-installed"
WANT="$( (cat "$ROOT/setup.py" "$CONSTRAINTS"; echo "$CONSTRAINTS") | sha256sum | cut -d' ' -f1)"
if [ ! -f "$STAMP" ] || [ "$(cat "$STAMP")" != "$WANT" ]; then
    echo "[env] installing ifr and its dependencies (torch pinned by $CONSTRAINTS) into $VENV (first run takes a few minutes)"
    pip_with_retries install -q --upgrade pip
    pip_with_retries install -q -c "$CONSTRAINTS" -e "$ROOT[test]"
    echo "$WANT" > "$STAMP"
fi
cd "$ROOT"
