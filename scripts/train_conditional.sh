#!/usr/bin/env bash
# Trains every model of the README's "Conditional models" section on
# Fashion-MNIST with the same budget (STEPS steps of batch 32 for each
# PixelCNN) in RUNS/<name>, then writes each model's figure and prints the
# table of test bits/dim. Runs that already finished are skipped (each run
# resumes from its checkpoints).
#
#   bash scripts/train_conditional.sh [RUNS] [STEPS]
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-workdirs/conditional}
steps=${2:-600}
bash scripts/setup.sh >/dev/null
# main.py keeps TensorFlow (tf.data only) off the GPUs; JAX uses them.
export TF_CPP_MIN_LOG_LEVEL=2
main() { .venv/bin/python -m gated_pixelcnn.main "$@"; }
budget=(--config.num_train_steps="$steps" --config.eval_every_steps="$steps")

train() {  # NAME CONFIG [ARGS...]: train unless finished, log to RUNS/NAME.log
  local name=$1 config=$2
  shift 2
  if [[ -f "$runs/$name/eval_results.json" ]]; then
    echo "== $name: done already"
    return
  fi
  echo "== $name: training ($(date +%H:%M:%S))"
  mkdir -p "$runs/$name"
  local start=$SECONDS
  main --config="$config" --workdir="$runs/$name" "$@" \
    >"$runs/$name.log" 2>&1
  echo "== $name: $((SECONDS - start)) s"
}

# The networks other models read: embedding (triplet loss) and MSE baseline.
train embedding configs/fashion_mnist_embedding.py
train mse_10 configs/fashion_mnist_autoencoder.py:mse --config.num_train_steps=2000
train mse_100 configs/fashion_mnist_autoencoder.py:mse --config.num_train_steps=2000 \
  --config.model.bottleneck=100
# The PixelCNNs, all with the same budget.
train unconditional configs/default.py "${budget[@]}"
train class configs/fashion_mnist_class.py "${budget[@]}"
train autoencoder_10 configs/fashion_mnist_autoencoder.py "${budget[@]}"
train autoencoder_100 configs/fashion_mnist_autoencoder.py "${budget[@]}" \
  --config.model.bottleneck=100
train autoencoder_10_spatial configs/fashion_mnist_autoencoder.py "${budget[@]}" \
  --config.model.conditioning=spatial
train multiscale_low configs/fashion_mnist_multiscale.py:low "${budget[@]}"
train multiscale configs/fashion_mnist_multiscale.py "${budget[@]}" \
  --config.conditioning.workdir="$runs/multiscale_low"
train embedding_pixelcnn configs/fashion_mnist_embedding_pixelcnn.py "${budget[@]}" \
  --config.conditioning.workdir="$runs/embedding"

# Figures (PNG under RUNS/<name>/samples/).
echo "== figures ($(date +%H:%M:%S))"
main --config=configs/fashion_mnist_class.py --workdir="$runs/class" --mode=sample
main --config=configs/default.py --workdir="$runs/unconditional" --mode=sample \
  --config.sample.num_samples=60
for b in 10 100; do
  main --config=configs/fashion_mnist_autoencoder.py --workdir="$runs/autoencoder_$b" \
    --config.model.bottleneck=$b --mode=reconstruct \
    --config.sample.mse_workdir="$runs/mse_$b"
done
main --config=configs/fashion_mnist_multiscale.py --workdir="$runs/multiscale" \
  --config.conditioning.workdir="$runs/multiscale_low" --mode=sample
main --config=configs/fashion_mnist_embedding_pixelcnn.py \
  --workdir="$runs/embedding_pixelcnn" --config.conditioning.workdir="$runs/embedding" \
  --mode=embed_sample
main --config=configs/fashion_mnist_embedding_pixelcnn.py \
  --workdir="$runs/embedding_pixelcnn" --config.conditioning.workdir="$runs/embedding" \
  --mode=interpolate --config.sample.num_completions=3 \
  --config.sample.interpolate_pair='(0, 2)'   # a coat and an ankle boot
.venv/bin/python scripts/conditional_table.py "$runs"
