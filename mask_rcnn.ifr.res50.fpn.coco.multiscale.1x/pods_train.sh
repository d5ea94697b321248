#!/bin/sh
# Train this experiment: sh pods_train.sh [--resume] [--num-gpus N] [KEY VALUE ...]
# (works from any folder and shell: ../scripts/pods.sh finds pods_train on PATH or in the checkout's .venv)
cd "$(dirname "$0")" || exit 1
exec sh ../scripts/pods.sh pods_train "$@"
