#!/bin/sh
# Runs a console script of the project (pods_train, pods_test, pods_demo, pods_analyze) for an experiment folder's
# pods_*.sh, from any shell, always with this checkout's code: the one in $IFR_VENV or the checkout's .venv,
# else the one on PATH when its environment imports ifr from this checkout; a pods_* on PATH that runs another
# clone's ifr is refused, as is no install at all, with one line saying what to do (exit status 2).
#   sh scripts/pods.sh TOOL [ARGUMENT ...]
tool=$1
shift
root=$(cd "$(dirname "$0")/.." && pwd -P)
venv=${IFR_VENV:-$root/.venv}
if [ -x "$venv/bin/$tool" ]; then
    exec "$venv/bin/$tool" "$@"
fi
if found=$(command -v "$tool" 2>/dev/null); then
    # The interpreter of the console script (its #! line) says which ifr it imports.
    interpreter=$(sed -n '1s/^#! *//p' "$found")
    package=$($interpreter -c 'import os, ifr; print(os.path.dirname(os.path.realpath(ifr.__file__)))' 2>/dev/null)
    if [ "$package" = "$root/ifr" ]; then
        exec "$found" "$@"
    fi
    echo "ERROR: the $tool on PATH ($found) runs the ifr of ${package:-an environment without ifr}, not this checkout's ($root/ifr): run 'bash $root/scripts/setup.sh' (creates $root/.venv, used from then on), or 'pip install -e $root' in the active environment" >&2
    exit 2
fi
echo "ERROR: $tool is not installed: run 'bash $root/scripts/setup.sh' (creates $venv), or 'pip install -e $root' in your own environment" >&2
exit 2
