#!/usr/bin/env bash
# Sets up everything from nothing (Debian/Ubuntu, Python >= 3.11):
#   * Debian's dataset-fashion-mnist (the offline default dataset), if missing;
#   * .venv in the checkout with the package installed (editable), the JAX
#     build for the machine's accelerator (scripts/accelerator.sh: an NVIDIA
#     GPU gets .[cuda], a Cloud TPU VM .[tpu]; ACCELERATOR=cpu|cuda|tpu
#     overrides) and, with `--test`, the test extra.
# Safe to rerun. Source of truth for scripts/train.sh and scripts/test.sh.
set -euo pipefail
cd "$(dirname "$0")/.."

accel=$(bash scripts/accelerator.sh)
extras=()
[ "${1:-}" = "--test" ] && extras+=(test)
[ "$accel" != cpu ] && extras+=("$accel")
extra=""
if [ ${#extras[@]} -gt 0 ]; then
  extra="[$(IFS=,; echo "${extras[*]}")]"
fi

if [ ! -d /usr/share/datasets/fashion-mnist ]; then
  if [ "$(id -u)" = 0 ]; then sudo=""; else sudo="sudo"; fi
  echo "Installing Debian package dataset-fashion-mnist ..." >&2
  $sudo apt-get update -qq
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
    dataset-fashion-mnist >/dev/null
fi

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
echo "Installing gated_pixelcnn${extra} for accelerator: $accel ..." >&2
.venv/bin/python -m pip install --quiet -e ".${extra}"
