#!/bin/sh
# Train this experiment: sh pods_train.sh [--resume] [--num-gpus N] [KEY VALUE ...]
cd "$(dirname "$0")" || exit 1
exec pods_train "$@"
