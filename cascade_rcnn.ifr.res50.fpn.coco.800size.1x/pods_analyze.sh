#!/bin/sh
# Parameters and FLOPs of this experiment's model, per component, against the 4-conv mask head:
# sh pods_analyze.sh [--rois N] [--image-size H W] [--input IMAGES ... MODEL.WEIGHTS ckpt.pth] [KEY VALUE ...]
# (--input paths are taken relative to where you run it, as pods_demo's; ../scripts/pods.sh runs this
# checkout's pods_analyze, and a copy of this folder outside the checkout runs the pods_analyze on PATH,
# or in $IFR_VENV)
here=$(dirname "$0")
[ -f "$here/../scripts/pods.sh" ] && exec sh "$here/../scripts/pods.sh" pods_analyze --experiment "$here" "$@"
command -v pods_analyze >/dev/null 2>&1 && exec pods_analyze --experiment "$here" "$@"
[ -x "$IFR_VENV/bin/pods_analyze" ] && exec "$IFR_VENV/bin/pods_analyze" --experiment "$here" "$@"
echo "ERROR: pods_analyze is not on PATH and $(cd "$here" && pwd) is outside the IFR checkout: activate the environment IFR is installed in (e.g. . /path/to/ifr/.venv/bin/activate) or set IFR_VENV=/path/to/ifr/.venv, then run this again" >&2
exit 2
