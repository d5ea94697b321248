#!/usr/bin/env bash
# Set up (or reuse) the virtual environment and run the test suite. Extra arguments go to pytest.
. "$(dirname "${BASH_SOURCE[0]}")/env.sh"
python -m pytest -q tests "$@"
