#!/bin/sh
# Draw this experiment's predictions: sh pods_demo.sh --input IMAGES... MODEL.WEIGHTS ckpt.pth [KEY VALUE ...]
# (input paths are taken relative to where you run it; ../scripts/pods.sh finds pods_demo, and a copy of
# this folder outside the checkout runs the pods_demo on PATH, or in $IFR_VENV)
here=$(dirname "$0")
[ -f "$here/../scripts/pods.sh" ] && exec sh "$here/../scripts/pods.sh" pods_demo --experiment "$here" "$@"
command -v pods_demo >/dev/null 2>&1 && exec pods_demo --experiment "$here" "$@"
[ -x "$IFR_VENV/bin/pods_demo" ] && exec "$IFR_VENV/bin/pods_demo" --experiment "$here" "$@"
echo "ERROR: pods_demo is not on PATH and $(cd "$here" && pwd) is outside the IFR checkout: activate the environment IFR is installed in (e.g. . /path/to/ifr/.venv/bin/activate) or set IFR_VENV=/path/to/ifr/.venv, then run this again" >&2
exit 2
