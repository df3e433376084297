"""What a run records beside its checkpoints: the checkpoint meta (what
shapes the train state and the data order, checked on resume), state
digests, TensorBoard hyper-parameters and scalars (written, and read back
by `read_scalars`), eval_results.json."""

from __future__ import annotations

import collections
import glob
import hashlib
import json
import os
from typing import Any

from absl import logging
from etils import epath
import jax
import numpy as np

from gated_pixelcnn import input_pipeline
from gated_pixelcnn import workdir as workdir_lib


def flat_hparams(config) -> dict[str, Any]:
  out = {}

  def walk(prefix, node):
    for key, value in node.items():
      name = f'{prefix}{key}'
      if isinstance(value, dict):
        walk(name + '.', value)
      else:
        out[name] = value if isinstance(value, (int, float, str, bool)) \
            else str(value)
  walk('', config.to_dict())
  return out


def eval_scalars(metrics: dict[str, float]) -> dict[str, float]:
  """TensorBoard scalars of eval metrics: eval/bits_per_dim, ..."""
  return {f'eval/{k}': v for k, v in metrics.items() if k != 'num_examples'}


def digest_note(state) -> str:
  """With several processes: this process's index and state digest."""
  if jax.process_count() == 1:
    return ''
  return (f' (process {jax.process_index()}, replicated state digest '
          f'{state_digest(state)})')


def state_digest(state) -> str:
  """SHA-256 (first 16 hex digits) of this process's copy of every
  replicated array of ``state``: equal on all processes when they hold the
  same state. Arrays split over the mesh (shard_params) are left out."""
  digest = hashlib.sha256()
  for path, x in jax.tree_util.tree_leaves_with_path(state):
    if x.is_fully_replicated:
      digest.update(jax.tree_util.keystr(path).encode())
      digest.update(np.asarray(x.addressable_data(0)).tobytes())
  return digest.hexdigest()[:16]


# Checkpoint meta: batches are rows of one global order, the same for any
# number of processes (input_pipeline.TrainBatches).
DATA_ORDER = 'global'


def data_order(config) -> dict[str, Any]:
  """What the order of training batches depends on (besides the step; not
  on the number of processes, see input_pipeline)."""
  return {'seed': config.seed, 'batch_size': config.batch_size,
          'dataset': config.dataset}


def state_config(config) -> dict[str, Any]:
  """What shapes the train state (recorded in checkpoint meta and checked
  on resume): the model (its compute dtype aside), the optimizer, and
  whether EMA and gradient clipping are on."""
  model = {k: v for k, v in config.model.to_dict().items() if k != 'dtype'}
  return {'model': model, 'optimizer': config.optimizer,
          'ema': bool(config.ema_decay), 'grad_clip': bool(
              config.grad_clip_norm)}


def check_meta(meta: dict[str, Any], config) -> None:
  if meta.get('process_count', 1) > 1 and meta.get('data_order') != DATA_ORDER:
    logging.warning(
        'The checkpoint was written by %d processes with the older per-'
        'process data order; from here on the batches follow the global '
        'order (input_pipeline), so they differ from an uninterrupted run.',
        meta['process_count'])
  for key, value in data_order(config).items():
    if key in meta and meta[key] != value:
      logging.warning(
          'The checkpoint was written with %s=%r, this run has %r: the data '
          'order will differ from an uninterrupted run.', key, meta[key],
          value)


def write_eval_results(workdir: str, step: int, metrics: dict[str, float],
                       config) -> None:
  if jax.process_index() != 0:
    return
  results = {'step': step, 'dataset': config.dataset,
             'split': input_pipeline.get_spec(config.dataset).eval_split,
             **{f'eval/{k}': v for k, v in metrics.items()}}
  path = epath.Path(workdir) / 'eval_results.json'
  workdir_lib.write_atomic(path, json.dumps(results, indent=2))
  logging.info('Eval results: %s (written to %s)', results, path)


def read_scalars(workdir: str
                 ) -> dict[str, list[tuple[int, float, float]]]:
  """{tag: [(step, wall_time, value)]} of the scalars in every TensorBoard
  event file of ``workdir`` (one value per tag and step: the last written),
  sorted by step."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  series = collections.defaultdict(dict)
  pattern = os.path.join(workdir, 'events.out.tfevents.*')
  for path in sorted(glob.glob(pattern)):
    for event in tf.compat.v1.train.summary_iterator(path):
      for value in event.summary.value:
        if value.HasField('tensor'):
          array = tf.make_ndarray(value.tensor)
          if array.size != 1 or array.dtype.kind not in 'fiu':
            continue  # images, text, hyperparameters
          number = array.item()
        else:
          number = value.simple_value
        series[value.tag][event.step] = (event.wall_time, float(number))
  return {tag: sorted((s, t, v) for s, (t, v) in points.items())
          for tag, points in series.items()}
