#!/usr/bin/env bash
# Sets up everything from nothing and trains the default model (Gated
# PixelCNN on Fashion-MNIST, offline) in WORKDIR, resuming if it has
# checkpoints. Extra arguments go to gated_pixelcnn.main.
#
#   bash scripts/train.sh [WORKDIR] [--config.num_train_steps=...]
set -euo pipefail
cd "$(dirname "$0")/.."
workdir=${1:-workdirs/default}
shift || true
bash scripts/setup.sh
# main.py keeps TensorFlow (tf.data only) off the GPUs; JAX uses them.
export TF_CPP_MIN_LOG_LEVEL=2
exec .venv/bin/python -m gated_pixelcnn.main --config=configs/default.py \
  --workdir="$workdir" "$@"
