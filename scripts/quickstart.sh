#!/usr/bin/env bash
# Set up (or reuse) the virtual environment and run the main job. Extra arguments go to the job.
. "$(dirname "${BASH_SOURCE[0]}")/env.sh"
python -m ifr.deq.demo "$@"
