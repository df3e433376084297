"""Training recipes on a fixed wall-clock budget, measured: which optimizer,
learning rate, schedule, averaging and shape give the lowest test bits/dim
for the time.

  python -m bench.recipe --list
  python -m bench.recipe --minutes=15 --candidates=baseline,adam_2e-3
  python -m bench.recipe --plot --out=docs/recipe     # the figure only

A candidate is configs/default.py plus a few overrides (CANDIDATES). Each
trains in its own subprocess as main.py trains on this host (one CPU device
per core, auto micro-batches, the Trainer's jitted step, the same data
order). The number of steps is the budget divided by the step time measured
on 20 steps of a first compilation, so that every schedule (warm-up, cosine,
WSD) is sized to the budget, as num_train_steps is sized for a run. The
clock counts training steps only; evaluations are timed apart. At --points
times the exact bits/dim of the first --subset test images (of the params
and, with EMA, of the average); at the end, of the whole 10,000-image test
split, with the mean train bits/dim of the last 50 steps next to it
(over- or under-fitting). Results are merged into OUT/results.json (one
entry per candidate and budget); OUT/recipe.png plots them.
"""

from __future__ import annotations

import json
import os
import pathlib
import resource
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

# name: overrides of configs/default.py (dotted keys).
CANDIDATES = {
    'baseline': {},   # the default: RMSProp 1e-3, cosine, 8 x 48, batch 32
    'rmsprop_2e-3': {'learning_rate': 2e-3},
    'adam_1e-3': {'optimizer': 'adam', 'learning_rate': 1e-3},
    'adam_2e-3': {'optimizer': 'adam', 'learning_rate': 2e-3},
    'adam_4e-3': {'optimizer': 'adam', 'learning_rate': 4e-3},
    'adam_8e-3': {'optimizer': 'adam', 'learning_rate': 8e-3},
    'adam_2e-3_ema': {'optimizer': 'adam', 'learning_rate': 2e-3,
                      'ema_decay': 0.999},
    'adam_2e-3_ema995': {'optimizer': 'adam', 'learning_rate': 2e-3,
                         'ema_decay': 0.995},
    'adam_2e-3_wsd': {'optimizer': 'adam', 'learning_rate': 2e-3,
                      'lr_schedule': 'wsd'},
    'adam_2e-3_warmup500': {'optimizer': 'adam', 'learning_rate': 2e-3,
                            'warmup_steps': 500},
    'adam_2e-3_clip1': {'optimizer': 'adam', 'learning_rate': 2e-3,
                        'grad_clip_norm': 1.0},
    'adam_2e-3_batch16': {'optimizer': 'adam', 'learning_rate': 2e-3,
                          'batch_size': 16},
    'adam_2e-3_batch64': {'optimizer': 'adam', 'learning_rate': 2e-3,
                          'batch_size': 64},
    'adam_2e-3_w64': {'optimizer': 'adam', 'learning_rate': 2e-3,
                      'model.features': 64},
    'adam_2e-3_w32_l12': {'optimizer': 'adam', 'learning_rate': 2e-3,
                          'model.features': 32, 'model.num_layers': 12},
    'adam_2e-3_k3_l12': {'optimizer': 'adam', 'learning_rate': 2e-3,
                         'model.kernel_size': 3, 'model.num_layers': 12},
    'adam_2e-3_l6': {'optimizer': 'adam', 'learning_rate': 2e-3,
                     'model.num_layers': 6},
    'adam_2e-3_head128': {'optimizer': 'adam', 'learning_rate': 2e-3,
                          'model.head_features': 128},
    'adam_2e-3_first5': {'optimizer': 'adam', 'learning_rate': 2e-3,
                         'model.first_kernel_size': 5},
    'adamw_2e-3': {'optimizer': 'adamw', 'learning_rate': 2e-3,
                   'weight_decay': 1e-4},
}

_CANDIDATES = flags.DEFINE_string(
    'candidates', ','.join(CANDIDATES),
    'comma-separated candidates to train (--list shows them)')
_MINUTES = flags.DEFINE_float(
    'minutes', 15.0, 'minutes of training steps for each candidate')
_POINTS = flags.DEFINE_integer(
    'points', 6, 'evaluations of the --subset test images during training, '
    'at equal steps')
_SUBSET = flags.DEFINE_integer(
    'subset', 1000, 'number of first test images evaluated at each point')
_OUT = flags.DEFINE_string('out', str(ROOT / 'docs' / 'recipe'),
                           'folder for results.json and recipe.png')
_LIST = flags.DEFINE_bool('list', False, 'print the candidates and exit')
_PLOT = flags.DEFINE_bool(
    'plot', False, 'only redraw OUT/recipe.png and print the table')
_RUNS = flags.DEFINE_list(
    'runs', [], 'LABEL=WORKDIR@START: full training runs (main.py) to add to '
    'OUT/runs.json and the figure: the exact test bits/dim of each '
    'evaluation against the wall time since START (seconds since the epoch, '
    'e.g. `date +%s` just before the run was started)')
_CHILD = flags.DEFINE_string(
    'child', None, 'internal: train this one candidate and print its result '
    '(the subprocess each candidate runs in)')


@flags.multi_flags_validator(['candidates', 'list', 'plot', 'child'])
def _known_candidates(values) -> bool:
  if values['list'] or values['plot'] or values['child']:
    return True   # --candidates is not used
  unknown = sorted({n for n in values['candidates'].split(',') if n} -
                   set(CANDIDATES))
  if unknown:
    raise flags.ValidationError(
        f'unknown candidates {unknown}; --list shows them.')
  return True


def make_config(overrides: dict):
  from configs import default  # pylint: disable=g-import-not-at-top
  config = default.get_config()
  for key, value in overrides.items():
    node, _, leaf = key.rpartition('.')
    (config[node] if node else config)[leaf] = value
  return config


def _cpu_seconds() -> float:
  usage = resource.getrusage(resource.RUSAGE_SELF)
  return usage.ru_utime + usage.ru_stime


def train_candidate(name: str, minutes: float, points: int,
                    subset: int) -> dict:
  """Trains candidate ``name`` for ``minutes`` of step time; its figures."""
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from gated_pixelcnn import input_pipeline  # pylint: disable=g-import-not-at-top
  from gated_pixelcnn import parallel  # pylint: disable=g-import-not-at-top
  from gated_pixelcnn import train  # pylint: disable=g-import-not-at-top

  config = make_config(CANDIDATES[name])
  parallel.configure_cpu_devices(config)
  builder = input_pipeline.get_builder(config)
  source = input_pipeline.open_split(builder, 'train', per_process=False)
  test = input_pipeline.open_split(builder, 'test')

  def batches(trainer):
    stream = input_pipeline.TrainBatches(source, config.batch_size,
                                         config.seed, False).iterate(0)
    return (trainer.global_batch(b) for b in stream)

  # The step time, on a first compilation, sizes the schedule.
  probe = train.Trainer(config)
  state = probe.init(jax.random.PRNGKey(config.seed))
  data = batches(probe)
  state, _ = probe.train_step(state, next(data))
  jax.block_until_ready(state)
  tick = time.perf_counter()
  for _ in range(20):
    state, metrics = probe.train_step(state, next(data))
  jax.block_until_ready(metrics)
  step_seconds = (time.perf_counter() - tick) / 20
  config.num_train_steps = max(config.warmup_steps + 1,
                               int(minutes * 60 / step_seconds))
  del probe, state, data

  trainer = train.Trainer(config)
  state = trainer.init(jax.random.PRNGKey(config.seed))
  params = sum(x.size for x in jax.tree_util.tree_leaves(state.params))
  data = batches(trainer)

  class Subset:  # the first `subset` test images, as a data source
    def __len__(self):
      return subset

    def __getitems__(self, idx):
      return test.__getitems__(idx)

  def subset_bpd(p):
    return trainer.evaluate(p, Subset(), subset,
                            config.eval_batch_size)['bits_per_dim']

  marks = [round(config.num_train_steps * (k + 1) / points)
           for k in range(points)]
  curve, recent = [], []
  elapsed, eval_seconds, cpu0 = 0.0, 0.0, _cpu_seconds()
  for step in range(1, config.num_train_steps + 1):
    batch = next(data)
    tick = time.perf_counter()
    state, metrics = trainer.train_step(state, batch)
    if step % 16 == 0 or step in marks or step == 1:
      jax.block_until_ready(metrics)
    if step == 1:   # compilation: not training time
      tick = time.perf_counter()
    elapsed += time.perf_counter() - tick
    if step > config.num_train_steps - 50:
      recent.append(metrics['bits_per_dim'])
    if step in marks:
      tick = time.perf_counter()
      point = {'seconds': elapsed, 'steps': step,
               'bits_per_dim': subset_bpd(state.params),
               'train_bits_per_dim': float(metrics['bits_per_dim'])}
      if config.ema_decay:
        point['ema_bits_per_dim'] = subset_bpd(trainer.eval_params(state))
      eval_seconds += time.perf_counter() - tick
      curve.append(point)
      print(f'{name}: {elapsed / 60:.1f} min, step {step}, subset '
            f'{point["bits_per_dim"]:.4f}'
            + (f', EMA {point["ema_bits_per_dim"]:.4f}' if config.ema_decay
               else ''), flush=True)
  cpu = _cpu_seconds() - cpu0
  tick = time.perf_counter()
  final = trainer.evaluate_split(state.params, builder)['bits_per_dim']
  result = {'params_bits_per_dim': final}
  if config.ema_decay:
    result['ema_bits_per_dim'] = trainer.evaluate_split(
        trainer.eval_params(state), builder)['bits_per_dim']
  eval_seconds += time.perf_counter() - tick
  best = min(result.values())
  if not np.isfinite(best):
    raise RuntimeError(f'{name}: non-finite test bits/dim')
  return {'candidate': name, 'overrides': CANDIDATES[name],
          'minutes': minutes, 'params': int(params),
          'steps': config.num_train_steps, 'batch_size': config.batch_size,
          'train_seconds': elapsed, 'eval_seconds': eval_seconds,
          'cpu_seconds': cpu, 'probe_step_seconds': step_seconds,
          'images_per_second': config.num_train_steps * config.batch_size /
                               elapsed,
          'test_bits_per_dim': best, **result,
          'train_bits_per_dim_last50': float(np.mean(recent)),
          'curve': curve, 'subset': subset, 'devices': jax.device_count(),
          'microbatches': trainer.microbatches,
          'cpu': _cpu_name(), 'date': time.strftime('%Y-%m-%d')}


def _cpu_name() -> str:
  """The CPU (gated_pixelcnn.tuning reads it) and its core count."""
  from gated_pixelcnn import tuning  # pylint: disable=g-import-not-at-top
  return f'{tuning.cpu_name()}, {os.cpu_count()} cores'


def _load(path: pathlib.Path) -> list[dict]:
  return json.loads(path.read_text()) if path.exists() else []


def _save(path: pathlib.Path, results: list[dict]) -> None:
  from gated_pixelcnn import workdir  # pylint: disable=g-import-not-at-top
  path.parent.mkdir(parents=True, exist_ok=True)
  workdir.write_atomic(path, json.dumps(results, indent=1))


def read_run(spec: str) -> dict:
  """LABEL=WORKDIR@START -> the run's evaluations against wall time."""
  from gated_pixelcnn import records  # pylint: disable=g-import-not-at-top
  label, _, rest = spec.partition('=')
  workdir, _, start = rest.rpartition('@')
  try:
    start = float(start)
  except ValueError:
    start = None
  if not label or not workdir or start is None:
    raise app.UsageError(f'--runs entry {spec!r}: expected '
                         'LABEL=WORKDIR@START_SECONDS.')
  evals = records.read_scalars(workdir).get('eval/bits_per_dim')
  if not evals:
    raise app.UsageError(f'{workdir} has no eval/bits_per_dim events.')
  return {'run': label, 'workdir': workdir, 'cpu': _cpu_name(),
          'points': [{'minutes': (wall - start) / 60, 'steps': step,
                      'bits_per_dim': value}
                     for step, wall, value in evals]}


def table(results: list[dict]) -> str:
  rows = ['| candidate | overrides | minutes | params | steps | images/s | '
          'test bits/dim (params) | EMA | train (last 50 steps) |',
          '|---|---|---:|---:|---:|---:|---:|---:|---:|']
  for r in sorted(results, key=lambda r: (r['minutes'],
                                          r['test_bits_per_dim'])):
    overrides = ', '.join(f'{k}={v}' for k, v in r['overrides'].items())
    ema = r.get('ema_bits_per_dim')
    rows.append(
        f'| {r["candidate"]} | {overrides or "(default)"} | {r["minutes"]:g} '
        f'| {r["params"] / 1e3:.0f}K | {r["steps"]} | '
        f'{r["images_per_second"]:.0f} | {r["params_bits_per_dim"]:.4f} | '
        f'{f"{ema:.4f}" if ema else "-"} | '
        f'{r["train_bits_per_dim_last50"]:.3f} |')
  return '\n'.join(rows)


def plot(results: list[dict], runs: list[dict], path: pathlib.Path) -> None:
  """One panel per budget of the candidates' curves, and one of the full
  runs (OUT/runs.json) against wall time."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  budgets = sorted({r['minutes'] for r in results})
  panels = len(budgets) + bool(runs)
  fig, axes = plt.subplots(1, panels, figsize=(6.5 * panels, 4.5),
                           squeeze=False)
  if runs:
    ax = axes[0][-1]
    for run in runs:
      ax.plot([p['minutes'] for p in run['points']],
              [p['bits_per_dim'] for p in run['points']], marker='o',
              label=f'{run["run"]} ({run["points"][-1]["bits_per_dim"]:.3f})')
    ax.axhline(2.9, color='grey', linestyle=':', linewidth=1)
    ax.set_xlabel('wall time since the start of training (minutes)')
    ax.set_ylabel('test bits/dim (all 10,000 images)')
    ax.set_title('bash scripts/train.sh, Fashion-MNIST, 2 CPU cores')
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
  for ax, minutes in zip(axes[0], budgets):
    for r in sorted((r for r in results if r['minutes'] == minutes),
                    key=lambda r: r['test_bits_per_dim']):
      key = 'ema_bits_per_dim' if 'ema_bits_per_dim' in r['curve'][0] else (
          'bits_per_dim')
      ax.plot([p['seconds'] / 60 for p in r['curve']],
              [p[key] for p in r['curve']], marker='o', markersize=3,
              label=f'{r["candidate"]} ({r["test_bits_per_dim"]:.3f})')
    ax.set_xlabel('training time (minutes, steps only)')
    ax.set_ylabel(f'test bits/dim (first {results[0]["subset"]:,} images)')
    ax.set_title(f'{minutes:g}-minute budget, Fashion-MNIST, 2 CPU cores')
    ax.set_ylim(top=3.6)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(path, dpi=110)


def main(argv) -> None:
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments {argv[1:]}')
  if _LIST.value:
    for name, overrides in CANDIDATES.items():
      print(f'{name}: {overrides or "(the default)"}')
    return
  if _CHILD.value:
    result = train_candidate(_CHILD.value, _MINUTES.value, _POINTS.value,
                             _SUBSET.value)
    print('RESULT ' + json.dumps(result))
    return
  out = pathlib.Path(_OUT.value)
  results = _load(out / 'results.json')
  if not _PLOT.value:
    names = [n for n in _CANDIDATES.value.split(',') if n]
    for name in names:
      start = time.time()
      proc = subprocess.run(
          [sys.executable, '-m', 'bench.recipe', f'--child={name}',
           f'--minutes={_MINUTES.value}', f'--points={_POINTS.value}',
           f'--subset={_SUBSET.value}'], cwd=ROOT, stdout=subprocess.PIPE,
          text=True, check=False)
      lines = [line for line in proc.stdout.splitlines()
               if line.startswith('RESULT ')]
      if proc.returncode or not lines:
        print(f'{name}: failed (exit {proc.returncode}); see stderr above.',
              flush=True)
        continue
      result = json.loads(lines[-1][len('RESULT '):])
      results = [r for r in results if not (
          r['candidate'] == name and r['minutes'] == _MINUTES.value)]
      results.append(result)
      _save(out / 'results.json', results)
      print(f'{name}: test {result["test_bits_per_dim"]:.4f} bits/dim after '
            f'{result["steps"]} steps ({(time.time() - start) / 60:.1f} min '
            'in all)', flush=True)
  runs = _load(out / 'runs.json')
  if _RUNS.value:
    for spec in _RUNS.value:
      run = read_run(spec)
      runs = [r for r in runs if r['run'] != run['run']] + [run]
      print(f'{run["run"]}: ' + ', '.join(
          f'{p["bits_per_dim"]:.4f} at {p["minutes"]:.1f} min (step '
          f'{p["steps"]})' for p in run['points']))
    _save(out / 'runs.json', runs)
  if results:
    print(table(results))
    try:
      plot(results, runs, out / 'recipe.png')
    except ImportError:
      print('(no figure: pip install matplotlib)')


if __name__ == '__main__':
  app.run(main)
