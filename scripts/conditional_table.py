"""Prints the test metrics of the runs made by scripts/train_conditional.sh.

  python scripts/conditional_table.py RUNS
"""

import json
import pathlib
import sys

ROWS = [
    ('unconditional', 'Gated PixelCNN, unconditional'),
    ('class', 'class-conditional (one-hot h)'),
    ('autoencoder_10', 'PixelCNN auto-encoder, 10-d h (global)'),
    ('autoencoder_10_spatial', 'PixelCNN auto-encoder, 10-d h (spatial m(h))'),
    ('autoencoder_100', 'PixelCNN auto-encoder, 100-d h (global)'),
    ('multiscale', 'multi-scale: 14x14 model + 28x28 given it'),
    ('embedding_pixelcnn', 'conditioned on a triplet embedding (32-d)'),
    ('mse_10', 'MSE auto-encoder, 10-d (baseline)'),
    ('mse_100', 'MSE auto-encoder, 100-d (baseline)'),
    ('embedding', 'embedding network (triplet loss)'),
]


def main(runs):
  runs = pathlib.Path(runs)
  print('| model | steps | test metric |')
  print('|---|---:|---|')
  for name, title in ROWS:
    path = runs / name / 'eval_results.json'
    if not path.exists():
      print(f'| {title} | - | not trained |')
      continue
    r = json.loads(path.read_text())
    if 'eval/bits_per_dim_total' in r:
      value = (f"{r['eval/bits_per_dim_total']:.3f} bits/dim (14x14: "
               f"{r['eval/bits_per_dim_low_res']:.3f}, rest given it, over all 784 dims: "
               f"{r['eval/bits_per_dim']:.3f})")
    elif 'eval/bits_per_dim' in r:
      value = f"{r['eval/bits_per_dim']:.3f} bits/dim"
    elif 'eval/mse' in r:
      value = f"MSE {r['eval/mse']:.1f} (per pixel, 0..255 scale)"
    else:
      value = f"triplet loss {r['eval/triplet_loss']:.3f}"
    print(f"| {title} | {r['step']} | {value} |")


if __name__ == '__main__':
  main(sys.argv[1] if len(sys.argv) > 1 else 'workdirs/conditional')
