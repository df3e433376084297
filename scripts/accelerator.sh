#!/usr/bin/env bash
# Prints the accelerator this machine trains on: cuda (an NVIDIA GPU that
# nvidia-smi lists), tpu (a Cloud TPU VM: /dev/accel* or /dev/vfio devices)
# or cpu. ACCELERATOR=cpu|cuda|tpu overrides the detection. scripts/setup.sh
# installs the matching extra of setup.cfg (.[cuda], .[tpu]).
set -euo pipefail

accel=${ACCELERATOR:-}
if [ -z "$accel" ]; then
  if command -v nvidia-smi >/dev/null 2>&1 &&
      nvidia-smi -L 2>/dev/null | grep -q '^GPU '; then
    accel=cuda
  elif compgen -G '/dev/accel[0-9]*' >/dev/null ||
      compgen -G '/dev/vfio/[0-9]*' >/dev/null; then
    accel=tpu
  else
    accel=cpu
  fi
fi
case "$accel" in
  cpu|cuda|tpu) echo "$accel" ;;
  *) echo "error: ACCELERATOR=$accel is not one of cpu, cuda, tpu." >&2
     exit 2 ;;
esac
