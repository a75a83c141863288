#!/usr/bin/env bash
# The whole suite: unit tests (no kernel, no terminal), real-kernel tests (root), UI tests. All must pass.
set -uo pipefail
cd "$(dirname "$0")/.."
rc=0
.venv/bin/python -m pytest -q -p no:cacheprovider tests/unit || rc=1
# -rs: say why tests were skipped (the BCC engine tests skip where BCC cannot compile)
.venv/bin/python -m pytest -q -rs -p no:cacheprovider tests/kernel || rc=1
.venv/bin/python -m pytest -q -p no:cacheprovider tests/ui || rc=1
exit $rc
