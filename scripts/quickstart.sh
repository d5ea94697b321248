#!/usr/bin/env bash
# Set up (or reuse) the virtual environment and run the main job: train a small IFR Mask R-CNN on the
# built-in synthetic dataset on the CPU (~10 minutes), then print the COCO tables. Extra arguments go to
# `python -m ifr.tools.quickstart` (e.g. --max-iter 200, or KEY VALUE config overrides).
. "$(dirname "${BASH_SOURCE[0]}")/env.sh"
python -m ifr.tools.quickstart "$@"
