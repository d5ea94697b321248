#!/bin/sh
# Draw this experiment's predictions: sh pods_demo.sh --input IMAGES... MODEL.WEIGHTS ckpt.pth [KEY VALUE ...]
# (input paths are taken relative to where you run it)
exec pods_demo --experiment "$(dirname "$0")" "$@"
