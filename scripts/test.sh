#!/usr/bin/env bash
# Sets up everything from nothing and runs the test suite.
#
#   bash scripts/test.sh [pytest args...]
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --test

# TensorFlow is used for tf.data/TFDS only: keep it off any GPU, and quiet.
export CUDA_VISIBLE_DEVICES="" TF_CPP_MIN_LOG_LEVEL=2 JAX_PLATFORMS=cpu
exec .venv/bin/python -m pytest -n "${PYTEST_WORKERS:-2}" -q "$@"
