#!/usr/bin/env bash
# Static checks: ruff's lint rules (no formatting) over the code, the tests
# and the benchmarks, then mypy over storg/ (--strict for storg.raft, storg.s3,
# storg.storage and storg.wire; see pyproject.toml).  Assumes the virtualenv
# that scripts/test.sh makes (./.venv, or $STORG_VENV), whose test extras
# carry ruff, mypy and types-PyYAML; creates nothing (no caches either).
#
#   scripts/lint.sh          everything
#   scripts/lint.sh --lower  only the strict lower layers and their tests
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${STORG_VENV:-.venv}
if [ "${1:-}" = "--lower" ]; then
    RUFF_PATHS=(storg/raft storg/storage storg/wire storg/s3 tests/raft tests/storage tests/wire tests/s3)
    MYPY_TARGETS=(--no-warn-unused-configs -p storg.raft -p storg.storage -p storg.wire -p storg.s3)  # zope.interface is not imported here
else
    RUFF_PATHS=(storg tests benchmarks)
    MYPY_TARGETS=(storg)
fi
status=0
"$VENV/bin/ruff" check --no-cache "${RUFF_PATHS[@]}" || status=1
"$VENV/bin/mypy" --cache-dir=/dev/null "${MYPY_TARGETS[@]}" || status=1
exit $status
