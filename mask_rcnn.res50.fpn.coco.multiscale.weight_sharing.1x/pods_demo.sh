#!/bin/sh
# Draw this experiment's predictions: sh pods_demo.sh --input IMAGES... MODEL.WEIGHTS ckpt.pth [KEY VALUE ...]
# (input paths are taken relative to where you run it; ../scripts/pods.sh finds pods_demo)
here=$(dirname "$0")
exec sh "$here/../scripts/pods.sh" pods_demo --experiment "$here" "$@"
