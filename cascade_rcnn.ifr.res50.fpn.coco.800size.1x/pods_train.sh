#!/bin/sh
# Train this experiment: sh pods_train.sh [--resume] [--num-gpus N] [KEY VALUE ...]
# (works from any folder and shell: ../scripts/pods.sh runs this checkout's pods_train;
# a copy of this folder outside the checkout runs the pods_train on PATH, or in $IFR_VENV)
cd "$(dirname "$0")" || exit 1
[ -f ../scripts/pods.sh ] && exec sh ../scripts/pods.sh pods_train "$@"
command -v pods_train >/dev/null 2>&1 && exec pods_train "$@"
[ -x "$IFR_VENV/bin/pods_train" ] && exec "$IFR_VENV/bin/pods_train" "$@"
echo "ERROR: pods_train is not on PATH and $(pwd) is outside the IFR checkout: activate the environment IFR is installed in (e.g. . /path/to/ifr/.venv/bin/activate) or set IFR_VENV=/path/to/ifr/.venv, then run this again" >&2
exit 2
