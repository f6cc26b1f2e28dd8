#!/usr/bin/env bash
# Sets up a virtualenv (./.venv, or $STORG_VENV) with storg and its test
# extras, then runs the whole test suite and a few hundred simulator seeds.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${STORG_VENV:-.venv}
if [ ! -x "$VENV/bin/python" ]; then
    python3 -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install -q --upgrade pip >/dev/null
"$VENV/bin/python" -m pip install -q -e '.[test]'
"$VENV/bin/python" -m pytest -q "$@"
"$VENV/bin/python" -m storg.raft.sim --seeds 150 --nodes 3
"$VENV/bin/python" -m storg.raft.sim --seeds 150 --nodes 5
