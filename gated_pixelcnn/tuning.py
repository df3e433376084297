"""How to compute on this machine: measured once, then cached.

``config.conv_impl = 'auto'`` picks one of layers.CONV_IMPLS for the train
step. On TPU/GPU that is XLA's convolution. On a CPU the fastest one
depends on the CPU (AVX-512 or only AVX) and on the shapes, so each
candidate's train step is compiled and timed on the run's own mesh, model
and batch shape (a few steps, a few seconds each), and the fastest is kept
in a small JSON cache (``$XDG_CACHE_HOME/gated_pixelcnn/tuning.json``),
keyed by the CPU, the JAX version, XLA_FLAGS and the shapes; delete the
file to measure again. Another formulation replaces XLA's convolution only
when it is at least MARGIN faster, so timing noise does not move it. Every
choice computes the same function with the same parameters
(tests/test_models.py), up to float rounding, so the choice may change
between runs and resumes.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import os
import pathlib
import platform
import time
from typing import Callable, Sequence

from absl import logging
import jax
import jax.numpy as jnp
import numpy as np
import optax

from gated_pixelcnn import layers
from gated_pixelcnn import steps
from gated_pixelcnn import workdir

# A cache file larger than this is not read (it holds a few entries).
MAX_CACHE_BYTES = 1 << 20
MAX_ENTRIES = 256
TIMED_STEPS = 3
# How much faster than the first candidate (XLA's convolution) another
# must be to be chosen.
MARGIN = 0.05


def cache_path() -> pathlib.Path | None:
  """$XDG_CACHE_HOME/gated_pixelcnn/tuning.json (~/.cache without it);
  None where there is no home folder (nothing is cached then)."""
  try:
    root = os.environ.get('XDG_CACHE_HOME') or pathlib.Path.home() / '.cache'
  except RuntimeError:
    return None
  return pathlib.Path(root) / 'gated_pixelcnn' / 'tuning.json'


def cpu_name() -> str:
  """The CPU's model name and vector extensions, e.g. 'AMD EPYC [avx fma
  avx2 avx512f]': what decides which convolution is fastest."""
  name, flags = 'unknown CPU', set()
  try:
    with open('/proc/cpuinfo') as f:
      for line in f:
        key, _, value = line.partition(':')
        if key.strip() == 'model name' and name == 'unknown CPU':
          name = value.strip()
        elif key.strip() == 'flags':
          flags = set(value.split())
          break
  except OSError:
    pass
  if name == 'unknown CPU':
    name = platform.processor() or platform.machine() or name
  wanted = ('avx', 'fma', 'avx2', 'avx512f', 'amx_tile')
  return f"{name} [{' '.join(f for f in wanted if f in flags)}]"


def _valid(entry) -> bool:
  if not isinstance(entry, dict):
    return False
  seconds = entry.get('seconds')
  return (entry.get('choice') in layers.CONV_IMPLS and
          isinstance(seconds, dict) and
          all(isinstance(v, (int, float)) for v in seconds.values()))


def _read(path: pathlib.Path | None) -> dict:
  """The cache's entries; a missing file is empty, and an unreadable,
  oversized, malformed or not a regular file is ignored with a warning (it
  is only a cache) and replaced when written."""
  if path is None or not path.exists():
    return {}
  try:
    if not path.is_file():
      raise ValueError('not a regular file')
    with open(path, 'rb') as f:
      data = f.read(MAX_CACHE_BYTES + 1)
    if len(data) > MAX_CACHE_BYTES:
      raise ValueError(f'larger than {MAX_CACHE_BYTES} bytes')
    entries = json.loads(data)
    if not isinstance(entries, dict) or not all(
        _valid(v) for v in entries.values()):
      raise ValueError('not a tuning cache')
    return entries
  except (OSError, ValueError, RecursionError) as e:
    logging.warning('Ignoring the tuning cache %s (%s); measuring again.',
                    path, e)
    return {}


def choose(key: dict, candidates: Sequence[str],
           measure: Callable[[str], float],
           path: pathlib.Path | None = None) -> tuple[str, dict]:
  """The candidate with the least ``measure(candidate)`` (seconds) for
  ``key``, the first one unless another is MARGIN faster: from the cache
  when it holds ``key``, else measured and stored. A candidate whose
  measurement fails (e.g. out of memory) counts as infinitely slow.
  Returns (choice, the cache entry: choice, seconds, key, when)."""
  path = path or cache_path()
  digest = hashlib.sha256(
      json.dumps(key, sort_keys=True).encode()).hexdigest()[:24]
  entries = _read(path)
  if digest in entries and entries[digest]['choice'] in candidates:
    return entries[digest]['choice'], entries[digest]
  seconds = {}
  for candidate in candidates:
    try:
      seconds[candidate] = float(measure(candidate))
    except Exception as e:  # pylint: disable=broad-except
      if candidate == candidates[0]:
        raise
      logging.warning('Timing %r failed (%s: %s); not using it.', candidate,
                      type(e).__name__, e)
      seconds[candidate] = math.inf
  choice = min(seconds, key=seconds.get)
  if seconds[choice] > (1 - MARGIN) * seconds[candidates[0]]:
    choice = candidates[0]
  entries[digest] = {'choice': choice, 'seconds': seconds, 'key': key,
                     'measured': time.strftime('%Y-%m-%dT%H:%M:%S')}
  if len(entries) > MAX_ENTRIES:   # the oldest go first
    entries = dict(list(entries.items())[-MAX_ENTRIES:])
  if path is not None:
    try:
      path.parent.mkdir(parents=True, exist_ok=True)
      workdir.write_atomic(path, json.dumps(entries, indent=1))
    except OSError as e:
      logging.warning('Could not write the tuning cache %s (%s).', path, e)
  return choice, entries[digest]


def time_train_step(model, mesh, batch_shape, microbatches: int,
                    num_classes: int = 0, steps_timed: int = TIMED_STEPS
                    ) -> float:
  """Seconds per train step (fastest of ``steps_timed``, after compiling)
  of ``model`` on a zero batch of ``batch_shape`` sharded over ``mesh``,
  as train.Trainer runs it (plain SGD: the optimizer costs the same
  whichever convolution)."""
  sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(
      'data'))
  batch = {'image': jax.device_put(np.zeros(batch_shape, np.int32),
                                   sharding)}
  if num_classes:
    batch['label'] = jax.device_put(np.zeros(batch_shape[:1], np.int32),
                                    sharding)
  params = model.init(jax.random.PRNGKey(0), np.zeros(
      (1, *batch_shape[1:]), np.int32), **steps.model_kwargs(
          model, {k: v[:1] for k, v in batch.items()}))['params']
  tx = optax.sgd(0.0)
  state = jax.device_put(
      steps.TrainState(step=jnp.zeros((), jnp.int32), params=params,
                       opt_state=tx.init(params), ema_params=None,
                       rng=jax.random.PRNGKey(0)),
      jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec()))
  step = jax.jit(functools.partial(
      steps.train_step, model=model, tx=tx, schedule=optax.constant_schedule(
          0.0), ema_decay=0.0, microbatches=microbatches))
  state, metrics = step(state, batch)            # compiles
  jax.block_until_ready(metrics)
  best = float('inf')
  for _ in range(steps_timed):
    start = time.perf_counter()
    state, metrics = step(state, batch)
    jax.block_until_ready(metrics)
    best = min(best, time.perf_counter() - start)
  return best


def conv_impl(config, make_model: Callable[[str], object], mesh,
              batch_shape, microbatches: int) -> str:
  """What ``config.conv_impl = 'auto'`` means here: the fastest of
  layers.CONV_IMPLS (see the module doc); 'conv' off the CPU and for models
  without convolutions to choose."""
  model = make_model('conv')
  if (mesh.devices.flat[0].platform != 'cpu' or
      not hasattr(model, 'conv_impl')):
    return 'conv'
  if hasattr(model, 'decoder_module'):  # conditional: time its decoder
    make_model = lambda impl, make=make_model: make(impl).decoder_module()
    model = model.decoder_module()
  key = {'cpu': cpu_name(), 'devices': mesh.size, 'jax': jax.__version__,
         'xla_flags': os.environ.get('XLA_FLAGS', ''),
         'model': config.model.to_dict(),
         'batch': list(batch_shape), 'microbatches': microbatches}
  num_classes = getattr(model, 'num_classes', 0)

  def measure(impl: str) -> float:
    logging.info('Timing the train step with conv_impl=%r (once per '
                 'machine and shape).', impl)
    return time_train_step(make_model(impl), mesh, batch_shape,
                           microbatches, num_classes)

  choice, entry = choose(key, layers.CONV_IMPLS, measure)
  logging.info('conv_impl=auto: %r on %s (seconds per step: %s; cache %s).',
               choice, key['cpu'],
               {k: round(v, 4) for k, v in entry['seconds'].items()},
               cache_path())
  return choice
