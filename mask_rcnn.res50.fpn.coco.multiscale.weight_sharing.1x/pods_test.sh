#!/bin/sh
# Evaluate this experiment: sh pods_test.sh [MODEL.WEIGHTS ckpt.pth] [--start-iter A --end-iter B] [KEY VALUE ...]
# (works from any folder and shell: ../scripts/pods.sh finds pods_test on PATH or in the checkout's .venv)
cd "$(dirname "$0")" || exit 1
exec sh ../scripts/pods.sh pods_test "$@"
