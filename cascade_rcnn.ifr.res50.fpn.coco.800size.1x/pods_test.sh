#!/bin/sh
# Evaluate this experiment: sh pods_test.sh [MODEL.WEIGHTS ckpt.pth] [--start-iter A --end-iter B] [KEY VALUE ...]
# (works from any folder and shell: ../scripts/pods.sh runs this checkout's pods_test;
# a copy of this folder outside the checkout runs the pods_test on PATH, or in $IFR_VENV)
cd "$(dirname "$0")" || exit 1
[ -f ../scripts/pods.sh ] && exec sh ../scripts/pods.sh pods_test "$@"
command -v pods_test >/dev/null 2>&1 && exec pods_test "$@"
[ -x "$IFR_VENV/bin/pods_test" ] && exec "$IFR_VENV/bin/pods_test" "$@"
echo "ERROR: pods_test is not on PATH and $(pwd) is outside the IFR checkout: activate the environment IFR is installed in (e.g. . /path/to/ifr/.venv/bin/activate) or set IFR_VENV=/path/to/ifr/.venv, then run this again" >&2
exit 2
