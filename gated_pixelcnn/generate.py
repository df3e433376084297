"""Sample and completion grids of a model: what --mode=sample/complete and
training's periodic samples write to PNG and TensorBoard."""

from __future__ import annotations

import math
import time

from absl import logging
from etils import epath
import jax
from jax.experimental import multihost_utils
import jax.numpy as jnp
import numpy as np

from gated_pixelcnn import grids
from gated_pixelcnn import sampling

OCCLUDED_VALUE = 128  # grey: how the hidden part of an image is shown


def host_params(params):
  """Parameters as host arrays, gathered across processes if needed."""
  if all(x.is_fully_addressable for x in jax.tree_util.tree_leaves(params)):
    return jax.device_get(params)
  return multihost_utils.process_allgather(params, tiled=True)


def _sampling_kwargs(sample_config) -> dict:
  return {'method': sample_config.method,
          'temperature': sample_config.temperature}


def sample_grid(model, params, rng, image_shape, sample_config) -> np.ndarray:
  """A grid of samples; one row per class for class-conditional models."""
  n = sample_config.num_samples
  num_classes = getattr(model, 'num_classes', 0)
  if num_classes:
    per_class = max(1, n // num_classes)
    labels = jnp.repeat(jnp.arange(num_classes), per_class)
    rows, cols = num_classes, per_class
  else:
    labels = None
    cols = math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
  start = time.time()
  images = np.asarray(sampling.sample(
      model, {'params': params}, rng, num_samples=rows * cols,
      image_shape=image_shape, labels=labels, **_sampling_kwargs(sample_config)))
  logging.info('Sampled %d images (%s) in %.1f s.', rows * cols,
               sample_config.method, time.time() - start)
  return grids.make_grid(images.reshape(rows, cols, *image_shape))


def completion_grid(model, params, rng, images, labels, num_rows: int,
                    num_completions: int, sample_config) -> np.ndarray:
  """Rows of: original | occluded (lower part grey) | completions."""
  images = np.asarray(images)
  N, H, W, C = images.shape
  observed = num_rows * W * C
  # Every completion of every image in one batch.
  batch = np.repeat(images, num_completions, axis=0)
  batch_labels = (None if labels is None
                  else jnp.repeat(jnp.asarray(labels), num_completions))
  start = time.time()
  completions = np.asarray(sampling.complete(
      model, {'params': params}, rng, batch, observed, labels=batch_labels,
      **_sampling_kwargs(sample_config)))
  logging.info('Completed %d images (%s) in %.1f s.', len(batch),
               sample_config.method, time.time() - start)
  occluded = images.copy()
  occluded[:, num_rows:] = OCCLUDED_VALUE
  rows = np.concatenate([
      images[:, None], occluded[:, None],
      completions.reshape(N, num_completions, H, W, C)], axis=1)
  return grids.make_grid(rows)


def write_grid(writer, workdir: str, step: int, name: str,
               grid: np.ndarray) -> str:
  """PNG under WORKDIR/samples/ and an image summary (process 0 only)."""
  path = str(epath.Path(workdir) / 'samples' / f'{name}_{step:08d}.png')
  if jax.process_index() == 0:
    grids.save_png(path, grid)
    writer.write_images(step, {name: grid[None]})
    writer.flush()
    logging.info('Wrote %s', path)
  return path
