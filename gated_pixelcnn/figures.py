"""Figures: sample, completion, reconstruction and interpolation grids, what
--mode=sample/complete/reconstruct/embed_sample/interpolate and training's
periodic samples write to PNG and TensorBoard, and the tiling and PNG
writing they share."""

from __future__ import annotations

import io
import math
import time

from absl import logging
from etils import epath
import jax
from jax.experimental import multihost_utils
import jax.numpy as jnp
import numpy as np
from PIL import Image

from gated_pixelcnn import datasets
from gated_pixelcnn import errors
from gated_pixelcnn import input_pipeline
from gated_pixelcnn import sampling
from gated_pixelcnn import workdir as workdir_lib

OCCLUDED_VALUE = 128  # grey: how the hidden part of an image is shown


def make_grid(images_RxKxHxWxC: np.ndarray, pad: int = 2,
              pad_value: int = 255) -> np.ndarray:
  """Tiles R rows of K images into one uint8 [H', W', C] image."""
  images = np.asarray(images_RxKxHxWxC, np.uint8)
  R, K, H, W, C = images.shape
  grid = np.full((R * (H + pad) + pad, K * (W + pad) + pad, C), pad_value,
                 np.uint8)
  for r in range(R):
    for k in range(K):
      y, x = pad + r * (H + pad), pad + k * (W + pad)
      grid[y:y + H, x:x + W] = images[r, k]
  return grid


def save_png(path: str, grid_HxWxC: np.ndarray, scale: int = 2) -> str:
  """Writes a grid as PNG (nearest-neighbour upscaled by ``scale``)."""
  grid = np.asarray(grid_HxWxC, np.uint8)
  if scale > 1:
    grid = grid.repeat(scale, axis=0).repeat(scale, axis=1)
  image = Image.fromarray(grid[..., 0] if grid.shape[-1] == 1 else grid)
  buffer = io.BytesIO()
  image.save(buffer, format='PNG')
  out = epath.Path(path)
  out.parent.mkdir(parents=True, exist_ok=True)
  workdir_lib.write_atomic(out, buffer.getvalue())
  return path


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
      image_shape=image_shape, labels=labels,
      **_sampling_kwargs(sample_config)))
  logging.info('Sampled %d images (%s) in %.1f s.', rows * cols,
               sample_config.method, time.time() - start)
  return make_grid(images.reshape(rows, cols, *image_shape))


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
  return make_grid(rows)


def write_grid(writer, workdir: str, step: int, name: str,
               grid: np.ndarray) -> str:
  """PNG under WORKDIR/samples/ and an image summary (process 0 only)."""
  path = str(epath.Path(workdir) / 'samples' / f'{name}_{step:08d}.png')
  if jax.process_index() == 0:
    save_png(path, grid)
    writer.write_images(step, {name: grid[None]})
    writer.flush()
    logging.info('Wrote %s', path)
  return path


# --------------------------------------------------------- conditional models


def is_conditioned_on_images(model) -> bool:
  """Models whose samples are drawn given h of an image (AE, embedding,
  multi-scale), not from labels or nothing."""
  return model.conditioned_on_images


def can_sample(trainer) -> bool:
  return trainer.model.objective == 'likelihood'


def test_images(trainer, builder, n: int, per_class: bool = False
                ) -> tuple[np.ndarray, np.ndarray | None]:
  """The first ``n`` images of the eval split (and labels where the dataset
  has them); ``per_class``: the first of each class in turn (0, 1, 2, ...)."""
  source = input_pipeline.open_split(builder, trainer.spec.eval_split,
                                    per_process=False)
  has_labels = bool(trainer.data_spec.num_classes)
  if per_class and has_labels:
    scan = source.__getitems__(list(range(min(len(source), 50 * n))))
    by_class = {}
    for k, ex in enumerate(scan):
      by_class.setdefault(int(ex['label']), []).append(k)
    order, rank = [], 0
    while len(order) < n and any(rank < len(v) for v in by_class.values()):
      order += [v[rank] for _, v in sorted(by_class.items()) if rank < len(v)]
      rank += 1
    examples = [scan[k] for k in order[:n]]
  else:
    examples = source.__getitems__(list(range(min(n, len(source)))))
  if not examples:
    raise datasets.DatasetError(
        f'the {trainer.spec.eval_split} split is empty.')
  images = np.stack([ex['image'] for ex in examples])
  labels = (np.asarray([ex['label'] for ex in examples], np.int32)
            if has_labels else None)
  return images, labels


def conditioning_of(trainer, params, images) -> jax.Array:
  """h of full-size images for a conditional model: its encoder's output,
  the frozen embedding, or the subsampled image."""
  model = trainer.model
  if model.has_encoder:
    return model.apply({'params': params}, jnp.asarray(images),
                       method='encode')
  return trainer.conditioner.add({'image': jnp.asarray(images)})['cond']


def sample_given(trainer, params, rng, h, images=None, sample_config=None
                 ) -> np.ndarray:
  """uint8 [N, H, W, C] samples of a conditional model given h [N, ...].

  Multi-scale: the low-resolution pixels are taken from ``images`` (full
  size, with the low-resolution image at (f*i, f*j)) and kept.
  """
  sample_config = sample_config or trainer.config.sample
  image_shape = trainer.spec.image_shape
  decoder, variables, inputs = sampling.decoder_inputs(
      trainer.model, {'params': params}, h, image_shape)
  n = len(h)
  canvas = np.zeros((n, *image_shape), np.int32)
  fixed = None
  f = trainer.conditioner.factor
  if trainer.conditioner.source == 'subsample':
    canvas[:, ::f, ::f] = np.asarray(images)[:, ::f, ::f]
    fixed = trainer.conditioner.nll_mask(image_shape) == 0
  start = time.time()
  out = np.asarray(sampling.complete(
      decoder, variables, rng, canvas, 0, fixed=fixed, **inputs,
      **_sampling_kwargs(sample_config)))
  logging.info('Sampled %d images given h (%s) in %.1f s.', n,
               sample_config.method, time.time() - start)
  return out


def conditional_grid(trainer, params, rng, images, num_samples: int,
                     extra_columns=()) -> np.ndarray:
  """Rows of: the image | extra columns (e.g. an MSE reconstruction) |
  ``num_samples`` samples given the image's h."""
  images = np.asarray(images)
  N = len(images)
  h = conditioning_of(trainer, params, images)
  h = jnp.repeat(h, num_samples, axis=0)
  batch = np.repeat(images, num_samples, axis=0)
  samples = sample_given(trainer, params, rng, h, batch)
  columns = [images[:, None], *[np.asarray(c)[:, None] for c in extra_columns],
             samples.reshape(N, num_samples, *images.shape[1:])]
  return make_grid(np.concatenate(columns, axis=1))


def multiscale_grid(trainer, params, rng, num_rows: int, num_samples: int
                    ) -> np.ndarray:
  """Multi-scale generation from scratch: the low-resolution model samples
  ``num_rows`` small images, the full model ``num_samples`` images given
  each. Rows of: the small image (enlarged) | full-size samples."""
  run = trainer.conditioner.run
  f = trainer.conditioner.factor
  low_rng, high_rng = jax.random.split(rng)
  low = np.asarray(sampling.sample(
      run.trainer.model, {'params': host_params(run.params)}, low_rng,
      num_samples=num_rows, image_shape=run.trainer.spec.image_shape,
      **_sampling_kwargs(trainer.config.sample)))
  H, W, C = trainer.spec.image_shape
  canvas = np.zeros((num_rows, H, W, C), np.uint8)
  canvas[:, ::f, ::f] = low
  batch = np.repeat(canvas, num_samples, axis=0)
  samples = sample_given(trainer, params, high_rng,
                         conditioning_of(trainer, params, batch), batch)
  enlarged = low.repeat(f, axis=1).repeat(f, axis=2)[:, :H, :W]
  return make_grid(np.concatenate(
      [enlarged[:, None], samples.reshape(num_rows, num_samples, H, W, C)],
      axis=1))


def samples_grid(trainer, params, rng, builder) -> np.ndarray:
  """The samples written at every evaluation during training (and by
  --mode=sample, except for multi-scale): unconditional or one row per
  class, or for models conditioned on images, test images | samples given
  their h."""
  sample_config = trainer.config.sample
  if is_conditioned_on_images(trainer.model):
    images, _ = test_images(trainer, builder, sample_config.num_samples,
                            per_class=True)
    return conditional_grid(trainer, params, rng, images,
                            sample_config.num_completions)
  return sample_grid(trainer.model, params, rng, trainer.spec.image_shape,
                     sample_config)


def interpolation_grid(trainer, params, rng, image_a, image_b,
                       num_points: int, num_rows: int) -> np.ndarray:
  """Rows of: image a | samples given h on the line from h(a) to h(b) |
  image b; each row draws with its own key."""
  pair = np.stack([image_a, image_b])
  h = conditioning_of(trainer, params, pair)
  if h.ndim != 2:
    raise errors.ConfigError('interpolation needs a vector h (auto-encoder or '
                     'embedding model).')
  t = jnp.linspace(0.0, 1.0, num_points)[:, None]
  line = (1.0 - t) * h[0][None] + t * h[1][None]        # [points, D]
  h_all = jnp.tile(line, (num_rows, 1))
  samples = sample_given(trainer, params, rng, h_all)
  samples = samples.reshape(num_rows, num_points, *pair.shape[1:])
  ends = np.repeat(pair[None], num_rows, axis=0)
  return make_grid(np.concatenate(
      [ends[:, :1], samples, ends[:, 1:]], axis=1))
