#!/usr/bin/env bash
# Sets up everything from nothing and runs the test suite.
#
#   bash scripts/test.sh [pytest args...]
#
# Creates .venv (Python >= 3.11) in the repository, installs the package with
# its test extra, and runs pytest on all cores. Safe to rerun.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
"$PYTHON" - <<'PY'
import sys
if sys.version_info < (3, 11):
    sys.exit(f'Python >= 3.11 is required, found {sys.version.split()[0]}; '
             'set PYTHON=/path/to/python3.11 and rerun.')
PY
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -e ".[test]"

# TensorFlow is used for tf.data only: keep it off any GPU, and quiet.
export CUDA_VISIBLE_DEVICES="" TF_CPP_MIN_LOG_LEVEL=2 JAX_PLATFORMS=cpu
exec .venv/bin/python -m pytest -n "${PYTEST_WORKERS:-2}" -q "$@"
