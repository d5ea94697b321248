#!/bin/sh
# Evaluate this experiment: sh pods_test.sh [MODEL.WEIGHTS ckpt.pth] [--start-iter A --end-iter B] [KEY VALUE ...]
cd "$(dirname "$0")" || exit 1
exec pods_test "$@"
