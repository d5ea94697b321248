#!/bin/sh
# Runs a console script of the project (pods_train, pods_test, pods_demo, pods_analyze) for an experiment folder's
# pods_*.sh, from any shell: the one on PATH, else the checkout's virtual environment (.venv, or
# $IFR_VENV), else one line saying how to install it (exit status 2).
#   sh scripts/pods.sh TOOL [ARGUMENT ...]
tool=$1
shift
root=$(cd "$(dirname "$0")/.." && pwd)
venv=${IFR_VENV:-$root/.venv}
if command -v "$tool" >/dev/null 2>&1; then
    exec "$tool" "$@"
fi
if [ -x "$venv/bin/$tool" ]; then
    exec "$venv/bin/$tool" "$@"
fi
echo "ERROR: $tool is not installed: run 'bash $root/scripts/setup.sh' (creates $venv), or 'pip install -e $root' in your own environment" >&2
exit 2
