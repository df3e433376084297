"""Analytic cost of the models: multiply-adds per pixel and FLOPs per image.

The cost model: every convolution counted at its full kernel size (masked
taps included, as the paper's 42 p^2 per layer does), a multiply-add is 2
FLOPs, and a training step (forward, backward to the activations, backward
to the weights) costs 3x the forward pass. For the
Gated PixelCNN with k = 5 a middle layer costs exactly 42 p^2 multiply-adds
per pixel: vertical 3x5 (p -> 2p) 30 p^2, horizontal 1x3 6 p^2, v->h 4 p^2,
residual p^2, skip p^2.

`macs_per_pixel` is that per-pixel count. The implementation skips the
vertical stack's last row, which feeds nothing (`layers.GatedBlock`), so an
H x W image costs `macs_per_image`: the vertical convolutions and the v->h
link over (H - 1) x W pixels, the rest over H x W; FLOPs and rates reported
by the benchmarks use that exact count.

`matmul_macs` counts the multiply-adds of the convolutions and matrix
products that a traced function really executes, so tests can check that
the implementation does no more (and no less) than the model asks for.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import jax
from jax.extend import core as jex_core
import numpy as np

NUM_VALUES = 256
TRAIN_FLOPS_PER_FORWARD_FLOP = 3


def _head_macs(model_config) -> int:
  hidden = model_config.head_features
  return (model_config.features * hidden +
          hidden * model_config.num_channels * NUM_VALUES)


def _gated_stack_macs(model_config) -> tuple[int, int]:
  """(vertical stack, rest) multiply-adds per pixel of the Gated PixelCNN."""
  p, C = model_config.features, model_config.num_channels
  vertical = rest = 0
  for i in range(model_config.num_layers):
    k = model_config.first_kernel_size if i == 0 else model_config.kernel_size
    rows = k // 2 + 1
    inputs = C if i == 0 else p
    vertical += rows * k * inputs * 2 * p  # vertical (k//2+1) x k
    vertical += 2 * p * 2 * p              # v -> h link
    rest += rows * inputs * 2 * p          # horizontal 1 x (k//2+1)
    rest += p * p                          # skip
    if i < model_config.num_layers - 1:
      rest += p * p                        # residual (unused in the last)
  return vertical, rest + _head_macs(model_config)


def _pixelcnn_macs(model_config) -> int:
  f, C = model_config.features, model_config.num_channels
  k0, k = model_config.first_kernel_size, model_config.kernel_size
  block = f * (f // 2) + k * k * (f // 2) ** 2 + (f // 2) * f
  return (k0 * k0 * C * f + model_config.num_layers * block +
          _head_macs(model_config))


def macs_per_pixel(model_config) -> int:
  """Multiply-adds per pixel of one forward pass (unconditional part)."""
  if model_config.name == 'gated_pixelcnn':
    return sum(_gated_stack_macs(model_config))
  if model_config.name == 'pixelcnn':
    return _pixelcnn_macs(model_config)
  raise ValueError(f'no cost model for model.name {model_config.name!r}')


def macs_per_image(model_config, image_shape, all_rows: bool = False) -> int:
  """Multiply-adds of one forward pass over an ``(H, W, ...)`` image, as
  executed (the Gated PixelCNN's vertical stack skips the last row; with
  ``all_rows``, as an implementation that computes it, e.g. the paper's
  count)."""
  H, W = image_shape[:2]
  if model_config.name == 'gated_pixelcnn' and not all_rows:
    vertical, rest = _gated_stack_macs(model_config)
    return vertical * (H - 1) * W + rest * H * W
  return macs_per_pixel(model_config) * H * W


def flops_per_image(model_config, image_shape, all_rows: bool = False
                    ) -> dict[str, float]:
  """{'forward': ..., 'train': ...} FLOPs for one image of ``(H, W, C)``
  (``all_rows``: see `macs_per_image`)."""
  forward = 2 * macs_per_image(model_config, image_shape, all_rows)
  return {'forward': float(forward),
          'train': float(TRAIN_FLOPS_PER_FORWARD_FLOP * forward)}


def _eqn_macs(eqn) -> int:
  if eqn.primitive.name == 'dot_general':
    (contract, _), _ = eqn.params['dimension_numbers']
    lhs = eqn.invars[0].aval.shape
    out = eqn.outvars[0].aval.shape
    return math.prod(out) * math.prod(lhs[d] for d in contract)
  if eqn.primitive.name == 'conv_general_dilated':
    rhs = eqn.invars[1].aval.shape
    spec = eqn.params['dimension_numbers'].rhs_spec  # (out, in, spatial...)
    per_output = math.prod(rhs[d] for d in spec[1:])
    return math.prod(eqn.outvars[0].aval.shape) * per_output
  return 0


def matmul_macs(fn: Callable[..., Any], *args, **kwargs) -> int:
  """Multiply-adds of all dots and convolutions ``fn(*args)`` executes."""
  closed = jax.make_jaxpr(fn)(*args, **kwargs)

  def walk(jaxpr) -> int:
    total = 0
    for eqn in jaxpr.eqns:
      total += _eqn_macs(eqn)
      for sub in jex_core.jaxprs_in_params(eqn.params):
        total += walk(sub)
    return total

  return walk(closed.jaxpr)


def measured_matmul_gflops(n: int = 2048, repeats: int = 10) -> float:
  """This machine's float32 matmul GFLOP/s (best of ``repeats``), via XLA."""
  import time  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  a = jnp.asarray(np.random.RandomState(0).randn(n, n), jnp.float32)
  f = jax.jit(lambda x, y: x @ y)
  jax.block_until_ready(f(a, a))
  best = float('inf')
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(f(a, a))
    best = min(best, time.perf_counter() - start)
  return 2 * n**3 / best / 1e9


# ------------------------------------------------------ what a run costs

# Peak dense bfloat16 FLOP/s of one device (chip) from the vendors' spec
# sheets, and Google Cloud on-demand list prices in USD per chip-hour
# (us-central regions, 2025; check cloud.google.com/tpu/pricing before
# spending). GPU prices vary too much by provider to list: pass --price.
ACCELERATORS = {
    'tpu-v4': (275e12, 3.22),
    'tpu-v5e': (197e12, 1.20),
    'tpu-v5p': (459e12, 4.20),
    'tpu-v6e': (918e12, 2.70),
    'a100': (312e12, None),
    'h100': (989e12, None),
}

# Images in the eval split of each dataset (for the cost of evaluations).
EVAL_EXAMPLES = {
    'downsampled_imagenet/64x64': 50_000,
    'downsampled_imagenet/32x32': 50_000,
    'cifar10': 10_000,
    'fashion_mnist': 10_000,
    'mnist': 10_000,
}


def training_estimate(config, image_shape, num_devices: int,
                      peak_flops: float, utilization: float,
                      price_per_device_hour: float | None = None
                      ) -> dict[str, float]:
  """Time and cost of ``config``'s whole run from the cost model.

  FLOPs = steps * batch * train FLOPs per image, plus the forward passes of
  every evaluation (every eval_every_steps and at the last step) over the
  eval split. Time = FLOPs / (devices * peak * utilization), where
  utilization (the fraction of peak the step achieves, "MFU") is an
  assumption the caller states; sampling and input are not counted.
  """
  if num_devices < 1 or peak_flops <= 0 or not 0 < utilization <= 1:
    raise ValueError('need devices >= 1, peak > 0 and 0 < utilization <= 1.')
  per_image = flops_per_image(config.model, image_shape)
  train = config.num_train_steps * config.batch_size * per_image['train']
  # As train_and_evaluate: every eval_every_steps and at the last step.
  steps, every = config.num_train_steps, config.eval_every_steps
  num_evals = steps // every + (steps % every != 0) if steps else 1
  evals = (num_evals * EVAL_EXAMPLES.get(config.dataset, 0) *
           per_image['forward'])
  seconds = (train + evals) / (num_devices * peak_flops * utilization)
  out = {'train_flops': train, 'eval_flops': evals,
         'total_flops': train + evals, 'hours': seconds / 3600,
         'device_hours': num_devices * seconds / 3600}
  if price_per_device_hour is not None:
    out['usd'] = out['device_hours'] * price_per_device_hour
  return out


def main(argv):
  """python -m gated_pixelcnn.cost --config=configs/imagenet64.py \\
      --accelerator=tpu-v5e --devices=32 [--utilization=0.25,0.5]"""
  del argv
  from absl import flags  # pylint: disable=g-import-not-at-top
  from gated_pixelcnn import input_pipeline  # pylint: disable=g-import-not-at-top
  f = flags.FLAGS
  config = f.config
  peak, price = ACCELERATORS[f.accelerator]
  peak = f.peak_tflops * 1e12 if f.peak_tflops else peak
  price = f.price if f.price is not None else price
  shape = input_pipeline.get_spec(config.dataset).image_shape
  f_sub = config.get('subsample', 1)
  shape = (shape[0] // f_sub, shape[1] // f_sub, shape[2])
  per_image = flops_per_image(config.model, shape)
  print(f'{config.dataset} {shape}, {config.model.num_layers} layers x '
        f'{config.model.features}, batch {config.batch_size}, '
        f'{config.num_train_steps:,} steps')
  print(f'per image: {per_image["forward"] / 1e9:.1f} GFLOP forward, '
        f'{per_image["train"] / 1e9:.1f} GFLOP train step')
  print(f'{f.devices} x {f.accelerator} at {peak / 1e12:.0f} TFLOP/s peak '
        f'(bf16), price {"$%.2f" % price if price else "not given"} per '
        f'device-hour')
  for u in f.utilization:
    est = training_estimate(config, shape, f.devices, peak, float(u), price)
    cost = f', ${est["usd"]:,.0f}' if 'usd' in est else ''
    print(f'utilization {float(u):.0%}: {est["total_flops"]:.3g} FLOPs '
          f'({est["eval_flops"] / est["total_flops"]:.1%} eval) -> '
          f'{est["hours"]:.1f} h, {est["device_hours"]:,.0f} device-hours'
          f'{cost}')


if __name__ == '__main__':
  from absl import app  # pylint: disable=g-import-not-at-top
  from absl import flags  # pylint: disable=g-import-not-at-top
  from ml_collections import config_flags  # pylint: disable=g-import-not-at-top
  config_flags.DEFINE_config_file('config', None, 'A configs/*.py file.')
  flags.DEFINE_enum('accelerator', 'tpu-v5e', sorted(ACCELERATORS),
                    'Device kind (sets peak FLOP/s and list price).')
  flags.DEFINE_integer('devices', 32, 'Number of devices (chips).')
  flags.DEFINE_list('utilization', ['0.25', '0.5'],
                    'Assumed fractions of peak the train step reaches.')
  flags.DEFINE_float('peak_tflops', None, 'Override the peak TFLOP/s.')
  flags.DEFINE_float('price', None, 'USD per device-hour (overrides).')
  flags.mark_flags_as_required(['config'])
  app.run(main)
