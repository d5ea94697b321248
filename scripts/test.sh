#!/usr/bin/env bash
# Set up (or reuse) the virtual environment and run the test suite: bash scripts/test.sh [PATH...] [OPTION...]
# Arguments go to pytest. With paths (files, folders or node ids such as tests/test_docs.py::test_x, relative
# to where you are) it runs those; with options only (-k NAME, -x, ...) or nothing, the whole suite in tests/.
# IFR_VENV and IFR_CONSTRAINTS choose the environment and its torch pair (see scripts/env.sh).
arguments=()
names_a_path=""
takes_a_value=""
for argument in "$@"; do
    if [ -n "$takes_a_value" ]; then
        takes_a_value=""
    elif [[ "$argument" == -* ]]; then
        # pytest's options whose value is the next argument (not a path to test)
        case "$argument" in
            -k|-m|-p|-o|-c|--deselect|--ignore|--ignore-glob|--rootdir|--basetemp|--confcutdir|--junit-xml) takes_a_value=1 ;;
        esac
    elif [ -e "${argument%%::*}" ]; then
        names_a_path=1
        path="${argument%%::*}"  # made absolute: env.sh runs pytest from the checkout's root
        argument="$(cd "$(dirname "$path")" && pwd)/$(basename "$path")${argument#"$path"}"
    fi
    arguments+=("$argument")
done
. "$(dirname "${BASH_SOURCE[0]}")/env.sh"
if [ -n "$names_a_path" ]; then
    python -m pytest -q "${arguments[@]}"
else
    python -m pytest -q tests "${arguments[@]}"
fi
