#!/bin/sh
# Parameters and FLOPs of this experiment's model, per component, against the 4-conv mask head:
# sh pods_analyze.sh [--rois N] [--image-size H W] [--input IMAGES ... MODEL.WEIGHTS ckpt.pth] [KEY VALUE ...]
# (works from any folder and shell: ../scripts/pods.sh finds pods_analyze on PATH or in the checkout's .venv)
cd "$(dirname "$0")" || exit 1
exec sh ../scripts/pods.sh pods_analyze "$@"
