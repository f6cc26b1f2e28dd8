#!/usr/bin/env bash
# Sets up a virtualenv (./.venv, or $STORG_VENV) with storg and its test
# extras, then runs the tests.
#
#   bash scripts/test.sh [PYTEST ARGS]
#       The whole suite: every pytest test and 150 + 150 simulator seeds
#       (3 and 5 nodes), in two lanes at once, one per core:
#         - the `process` tests (real twistd nodes, iptables; tests/faults
#           comes first), at normal priority: their nodes must not starve;
#         - the other tests, then the simulator seeds, under `nice`: they
#           are CPU-bound and use what the nodes leave (the fault scenarios
#           leave most of a core idle).
#       PYTEST ARGS (--durations=30, -x, ...) go to both pytest runs.  The
#       lane of the other tests prints its output when it is done.  The
#       exit status is non-zero if anything failed.
#
#   bash scripts/test.sh -m "not process" [PYTEST ARGS]   (or any -m/-k, or paths)
#       The quick loop, or any other selection: one pytest run with exactly
#       these arguments and no simulator seeds (they are a lane of the whole
#       run; alone: python -m storg.raft.sim --seeds 150 --nodes 3).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${STORG_VENV:-.venv}
if [ ! -x "$VENV/bin/python" ]; then
    python3 -m venv "$VENV"
fi
PY="$VENV/bin/python"
"$PY" -m pip install -q --upgrade pip >/dev/null
"$PY" -m pip install -q -e '.[test]'

selected=0
for arg in "$@"; do
    case "$arg" in
        -m|-k|-m?*|-k?*) selected=1 ;;
        -*) ;;
        *) if [ -e "${arg%%::*}" ]; then selected=1; fi ;;
    esac
done
if [ "$selected" = 1 ]; then
    exec "$PY" -m pytest -q "$@"
fi

lanes=$(mktemp -d "${TMPDIR:-/tmp}/storg-test.XXXXXX")
other_pid=
cleanup() {
    if [ -n "$other_pid" ] && kill -0 "$other_pid" 2>/dev/null; then
        kill -- "-$other_pid" 2>/dev/null || kill "$other_pid" 2>/dev/null || true
        wait "$other_pid" 2>/dev/null || true
    fi
    rm -rf "$lanes"
}
trap cleanup EXIT

# The lane of the other tests and the simulator, in a process group of its own (set -m)
# so that an interrupted run can stop all of it.
set -m
(
    status=0
    nice -n 10 "$PY" -m pytest -q -m "not process" --basetemp="$lanes/unit" "$@" || status=1
    nice -n 10 "$PY" -m storg.raft.sim --seeds 150 --nodes 3 || status=1
    nice -n 10 "$PY" -m storg.raft.sim --seeds 150 --nodes 5 || status=1
    exit "$status"
) >"$lanes/other.log" 2>&1 &
other_pid=$!
set +m

process_status=0
"$PY" -m pytest -q -m process --basetemp="$lanes/process" "$@" || process_status=$?

other_status=0
wait "$other_pid" || other_status=$?
other_pid=
echo
echo "=== the other tests (-m 'not process') and the simulator seeds ==="
cat "$lanes/other.log"
if [ "$process_status" != 0 ] || [ "$other_status" != 0 ]; then
    echo "FAILED: process tests exit $process_status, other tests and simulator exit $other_status"
    exit 1
fi
