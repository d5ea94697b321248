#!/usr/bin/env bash
# Set up the project: create ./.venv (or reuse it) with ifr and its pinned dependencies installed.
. "$(dirname "${BASH_SOURCE[0]}")/env.sh"
echo "[env] ready: $VENV (the folders' pods_*.sh scripts use it; or '. $VENV/bin/activate')"
