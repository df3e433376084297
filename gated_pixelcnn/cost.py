"""Analytic cost of the models: multiply-adds per pixel and FLOPs per image.

The cost model of PAPER.md section 3: every convolution counted at its full
kernel size (masked taps included, as the paper's 42 p^2 per layer does), a
multiply-add is 2 FLOPs, and a training step (forward, backward to the
activations, backward to the weights) costs 3x the forward pass. For the
Gated PixelCNN with k = 5 a middle layer costs exactly 42 p^2 multiply-adds
per pixel: vertical 3x5 (p -> 2p) 30 p^2, horizontal 1x3 6 p^2, v->h 4 p^2,
residual p^2, skip p^2.

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


def _gated_macs(model_config) -> int:
  p, C = model_config.features, model_config.num_channels
  total = 0
  for i in range(model_config.num_layers):
    k = model_config.first_kernel_size if i == 0 else model_config.kernel_size
    rows = k // 2 + 1
    inputs = C if i == 0 else p
    total += rows * k * inputs * 2 * p     # vertical (k//2+1) x k
    total += rows * inputs * 2 * p         # horizontal 1 x (k//2+1)
    total += 2 * p * 2 * p                 # v -> h link
    total += p * p                         # skip
    if i < model_config.num_layers - 1:
      total += p * p                       # residual (unused in the last)
  return total + _head_macs(model_config)


def _pixelcnn_macs(model_config) -> int:
  f, C = model_config.features, model_config.num_channels
  k0, k = model_config.first_kernel_size, model_config.kernel_size
  block = f * (f // 2) + k * k * (f // 2) ** 2 + (f // 2) * f
  return (k0 * k0 * C * f + model_config.num_layers * block +
          _head_macs(model_config))


def macs_per_pixel(model_config) -> int:
  """Multiply-adds per pixel of one forward pass (unconditional part)."""
  if model_config.name == 'gated_pixelcnn':
    return _gated_macs(model_config)
  if model_config.name == 'pixelcnn':
    return _pixelcnn_macs(model_config)
  raise ValueError(f'no cost model for model.name {model_config.name!r}')


def flops_per_image(model_config, image_shape) -> dict[str, float]:
  """{'forward': ..., 'train': ...} FLOPs for one image of ``(H, W, C)``."""
  H, W = image_shape[:2]
  forward = 2 * macs_per_pixel(model_config) * H * W
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
