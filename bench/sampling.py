"""Wall time of the naive and cached samplers (batch 16), and how the cached
one scales with image size.

  python -m bench.sampling [--naive_steps=64] [--batch=16]

The naive sampler's loop steps all cost the same (each runs the full model on
the whole canvas), so it is timed over --naive_steps steps and scaled to the
H*W*C steps of a whole image; the output says so. Compile time is excluded
(every function runs once before it is timed).
"""

import os
import pathlib
import platform
import sys
import time

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
if not __package__:   # run as a file, its folder would shadow installed modules
  sys.exit(f'Run it as a module from the repository root: python -m '
           f'bench.{pathlib.Path(__file__).stem} ...')

from absl import app  # pylint: disable=g-import-not-at-top
from absl import flags
import jax
import jax.numpy as jnp

from configs import default  # pylint: disable=g-import-not-at-top
from gated_pixelcnn import models
from gated_pixelcnn import sampling

_BATCH = flags.DEFINE_integer('batch', 16, 'images sampled at once')
_NAIVE_STEPS = flags.DEFINE_integer(
    'naive_steps', 64, 'loop steps the naive sampler is timed over (scaled '
    'to the H*W*C steps of a whole image)')


def _model(num_channels):
  config = default.get_model_config()
  config.num_channels = num_channels
  # Same width; the head must split into one group per colour.
  config.head_features -= config.head_features % num_channels
  return models.create_model(config), config


def _timed(fn):
  jax.block_until_ready(fn())          # compile and warm up
  start = time.perf_counter()
  jax.block_until_ready(fn())
  return time.perf_counter() - start


def time_cached(model, variables, shape, batch):
  return _timed(lambda: sampling.sample(
      model, variables, jax.random.PRNGKey(0), num_samples=batch,
      image_shape=shape, method='cached'))


def time_naive(model, variables, shape, batch, steps):
  """Seconds for a whole image, from `steps` timed loop steps."""
  total = shape[0] * shape[1] * shape[2]
  steps = min(steps, total)
  canvas = jnp.zeros((batch, *shape), jnp.uint8)
  seconds = _timed(lambda: sampling.complete(
      model, variables, jax.random.PRNGKey(0), canvas, total - steps,
      method='naive'))
  return seconds / steps * total


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments {argv[1:]}')
  batch, naive_steps = _BATCH.value, _NAIVE_STEPS.value
  print(f'machine: {platform.machine()}, {os.cpu_count()} CPU cores, '
        f'JAX {jax.__version__} on {jax.devices()[0].platform}; batch '
        f'{batch}, float32')
  print(f'naive: timed over {naive_steps} loop steps, scaled to H*W*C '
        f'steps\n')
  print(f'{"model":<34}{"image":>10}{"naive s":>11}{"cached s":>11}'
        f'{"speed-up":>10}')
  for shape in ((28, 28, 1), (32, 32, 3)):
    model, config = _model(shape[2])
    variables = model.init(jax.random.PRNGKey(0),
                           jnp.zeros((1, *shape), jnp.int32))
    naive = time_naive(model, variables, shape, batch, naive_steps)
    cached = time_cached(model, variables, shape, batch)
    name = (f'{config.num_layers} layers, p={config.features}, '
            f'head={config.head_features}')
    print(f'{name:<34}{"x".join(map(str, shape)):>10}{naive:>11.1f}'
          f'{cached:>11.2f}{naive / cached:>9.0f}x', flush=True)
  print('\ncached sampler vs image size (1 channel, default model):')
  print(f'{"image":>10}{"pixels":>8}{"cached s":>11}{"ms/pixel":>10}')
  model, _ = _model(1)
  for side in (16, 32, 64):
    shape = (side, side, 1)
    variables = model.init(jax.random.PRNGKey(0),
                           jnp.zeros((1, *shape), jnp.int32))
    cached = time_cached(model, variables, shape, batch)
    print(f'{"x".join(map(str, shape)):>10}{side * side:>8}{cached:>11.2f}'
          f'{1000 * cached / side**2:>10.2f}', flush=True)


if __name__ == '__main__':
  app.run(main)
