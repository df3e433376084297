"""PixelCNN, Row LSTM, Diagonal BiLSTM and Gated PixelCNN on one wall-clock
budget: the PixelRNN/PixelCNN papers' comparison at small scale.

  python -m bench.compare_models --minutes=12 --out=docs/compare
  python -m bench.compare_models --models=row_lstm --minutes=1 --out=/tmp/c

Each model trains in its own subprocess, as `main.py` trains it on this host
(one CPU device per core, auto micro-batches), from its config:
configs/fashion_mnist_pixelcnn.py, _row_lstm.py, _diagonal_bilstm.py and
default.py, all with the same optimizer (RMSProp 1e-3, 100 warm-up steps,
then constant: a schedule that decays over a fixed number of steps does not
fit a time budget) and batch 32. The clock counts training steps only
(compilation, evaluation and data waiting excluded; data is read ahead).
At --points times it evaluates the exact bits/dim of the first --subset
test images, and at the end of the whole 10,000-image test split. Prints
parameters, images/s, steps, the final test bits/dim; writes OUT/results.json
and OUT/compare.png (subset test bits/dim against training time).
"""

from __future__ import annotations

import importlib
import json
import os
import pathlib
import subprocess
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
if not __package__:   # run as a file, its folder would shadow installed modules
  sys.exit(f'Run it as a module from the repository root: python -m '
           f'bench.{pathlib.Path(__file__).stem} ...')
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

from absl import app  # pylint: disable=g-import-not-at-top
from absl import flags  # pylint: disable=g-import-not-at-top

CONFIGS = {
    'pixelcnn': 'configs.fashion_mnist_pixelcnn',
    'row_lstm': 'configs.fashion_mnist_row_lstm',
    'diagonal_bilstm': 'configs.fashion_mnist_diagonal_bilstm',
    'gated_pixelcnn': 'configs.default',
}
LABELS = {'pixelcnn': 'PixelCNN', 'row_lstm': 'Row LSTM',
          'diagonal_bilstm': 'Diagonal BiLSTM',
          'gated_pixelcnn': 'Gated PixelCNN'}

_MODELS = flags.DEFINE_string(
    'models', ','.join(CONFIGS), f'comma-separated subset of {sorted(CONFIGS)}')
_MINUTES = flags.DEFINE_float(
    'minutes', 12.0, 'minutes of training steps for each model')
_POINTS = flags.DEFINE_integer(
    'points', 6, 'evaluations of the --subset test images during training, '
    'at equal times')
_SUBSET = flags.DEFINE_integer(
    'subset', 1000, 'number of first test images evaluated at each point')
_OUT = flags.DEFINE_string('out', str(ROOT / 'docs' / 'compare'),
                           'folder for results.json and compare.png')
_WORKER = flags.DEFINE_string(
    'worker', None, 'internal: train this one model and print its figures as '
    'JSON (the subprocess each model runs in)')


def _known_models(value: str) -> bool:
  unknown = sorted(set(value.split(',')) - set(CONFIGS))
  if unknown:
    raise flags.ValidationError(
        f'unknown model(s) {unknown}; choose from {sorted(CONFIGS)}')
  return True


flags.register_validator('models', _known_models)


def load_config(name: str):
  config = importlib.import_module(CONFIGS[name]).get_config()
  config.optimizer = 'rmsprop'
  config.learning_rate = 1e-3
  config.warmup_steps = 100
  config.lr_schedule = 'constant'
  config.batch_size = 32
  return config


def train_one(name: str, minutes: float, points: int, subset: int) -> dict:
  """Trains ``name`` for ``minutes`` of step time; returns its figures."""
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from gated_pixelcnn import input_pipeline  # pylint: disable=g-import-not-at-top
  from gated_pixelcnn import parallel  # pylint: disable=g-import-not-at-top
  from gated_pixelcnn import train  # pylint: disable=g-import-not-at-top

  config = load_config(name)
  parallel.configure_cpu_devices(config)
  trainer = train.Trainer(config)
  builder = input_pipeline.get_builder(config)
  source = input_pipeline.open_split(builder, 'train', per_process=False)
  test = input_pipeline.open_split(builder, 'test')
  batches = input_pipeline.TrainBatches(source, config.batch_size,
                                        config.seed, False).iterate(0)
  state = trainer.init(jax.random.PRNGKey(config.seed))
  params = sum(x.size for x in jax.tree_util.tree_leaves(state.params))

  class Subset:  # the first `subset` test images, as a data source
    def __len__(self):
      return subset

    def __getitems__(self, idx):
      return test.__getitems__(idx)

  def subset_bpd():
    return trainer.evaluate(state.params, Subset(), subset,
                            config.eval_batch_size)['bits_per_dim']

  start = time.perf_counter()
  state, _ = trainer.train_step(state, trainer.global_batch(next(batches)))
  jax.block_until_ready(state)
  compile_s = time.perf_counter() - start
  budget = minutes * 60
  marks = [budget * (k + 1) / points for k in range(points)]
  curve = [{'seconds': 0.0, 'steps': 1, 'bits_per_dim': subset_bpd()}]
  elapsed, steps = 0.0, 1
  while marks:
    batch = trainer.global_batch(next(batches))
    tick = time.perf_counter()
    state, metrics = trainer.train_step(state, batch)
    steps += 1
    if steps % 16 == 0 or elapsed + 30 > marks[0]:
      jax.block_until_ready(metrics)
    elapsed += time.perf_counter() - tick
    if elapsed >= marks[0]:
      jax.block_until_ready(state)
      marks.pop(0)
      curve.append({'seconds': elapsed, 'steps': steps,
                    'bits_per_dim': subset_bpd(),
                    'train_bits_per_dim': float(metrics['bits_per_dim'])})
      print(f'{name}: {elapsed / 60:.1f} min, step {steps}, subset '
            f'{curve[-1]["bits_per_dim"]:.4f}', flush=True)
  final = trainer.evaluate_split(state.params, builder)
  if not np.isfinite(final['bits_per_dim']):
    raise RuntimeError(f'{name}: non-finite test bits/dim')
  return {'model': name, 'params': int(params), 'steps': steps,
          'train_seconds': elapsed, 'compile_seconds': compile_s,
          'images_per_second': (steps - 1) * config.batch_size / elapsed,
          'test_bits_per_dim': final['bits_per_dim'], 'curve': curve,
          'devices': jax.device_count(), 'microbatches': trainer.microbatches,
          'subset': subset}


def plot(results: list[dict], path: pathlib.Path, minutes: float) -> None:
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  fig, ax = plt.subplots(figsize=(7, 4.5))
  for r in results:
    curve = r['curve'][1:]  # the untrained point (8 bits/dim) squeezes the axis
    ax.plot([p['seconds'] / 60 for p in curve],
            [p['bits_per_dim'] for p in curve], marker='o',
            label=f'{LABELS[r["model"]]} ({r["params"] / 1e3:.0f}K params, '
                  f'final {r["test_bits_per_dim"]:.3f})')
  ax.set_xlabel('training time on 2 CPU cores (minutes, steps only)')
  ax.set_ylabel(f'test bits/dim (first {results[0]["subset"]:,} images)')
  ax.set_title(f'Fashion-MNIST, {minutes:g} minutes each, RMSProp 1e-3, '
               'batch 32')
  ax.grid(alpha=0.3)
  ax.legend()
  fig.tight_layout()
  fig.savefig(path, dpi=120)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments {argv[1:]}')
  names = _MODELS.value.split(',')
  if _WORKER.value:
    print(json.dumps(train_one(_WORKER.value, _MINUTES.value, _POINTS.value,
                               _SUBSET.value)))
    return
  out = pathlib.Path(_OUT.value)
  out.mkdir(parents=True, exist_ok=True)
  results = []
  for name in names:
    proc = subprocess.run(
        [sys.executable, '-m', 'bench.compare_models', f'--worker={name}',
         f'--minutes={_MINUTES.value}', f'--points={_POINTS.value}',
         f'--subset={_SUBSET.value}'],
        cwd=ROOT, stdout=subprocess.PIPE, text=True, check=False)
    if proc.returncode:
      sys.exit(f'{name} failed (exit {proc.returncode}); see its log above.')
    results.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    (out / 'results.json').write_text(json.dumps(results, indent=2))
  print(f'\nFashion-MNIST, {_MINUTES.value:g} minutes of training steps each '
        f'on this machine ({os.cpu_count()} cores), RMSProp 1e-3 constant, '
        f'batch 32:\n')
  print('| model | params | steps | images/s | test bits/dim (10,000) |')
  print('|---|---|---|---|---|')
  for r in results:
    print(f'| {LABELS[r["model"]]} | {r["params"]:,} | {r["steps"]:,} | '
          f'{r["images_per_second"]:.1f} | {r["test_bits_per_dim"]:.4f} |')
  try:
    plot(results, out / 'compare.png', _MINUTES.value)
    print(f'\nwrote {out / "compare.png"} and {out / "results.json"}')
  except ImportError:
    print(f'\nwrote {out / "results.json"} (pip install -e ".[plot]" for '
          f'the plot)')


if __name__ == '__main__':
  app.run(main)
