#!/usr/bin/env bash
# The whole suite: real-kernel tests, then UI tests. Both must pass.
set -uo pipefail
cd "$(dirname "$0")/.."
rc=0
.venv/bin/python -m pytest -q -p no:cacheprovider tests/kernel || rc=1
.venv/bin/python -m pytest -q -p no:cacheprovider tests/ui || rc=1
exit $rc
