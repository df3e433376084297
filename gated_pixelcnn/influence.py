"""Exact influence maps: which sub-pixels change which logits, bit for bit.

What the causality tests of every model family and bench/device_check.py
prove causality with. Every image (the base and each perturbed copy) is computed by the same compiled program, batch 1,
so the same logits come from the same instructions in the same position:
XLA may round one batch row differently from another (seen on a CPU with
AVX only and 8 fake devices), so a comparison across rows of one batch
could report a "leak" that is only rounding. Here a difference can only
come from the input.
"""

from __future__ import annotations

import jax
import numpy as np


def influence(model, H, W, C, num_bases=2, **cond):
  """changed[p, q]: the logits of sub-pixel p differ in any bit when q changes.

  p and q index sub-pixels in raster-then-channel order. For each of
  ``num_bases`` random base images, sub-pixel q is moved by 128 (mod 256),
  one q at a time; a pair counts as changed if it changed for any base
  (several bases make it very unlikely that ReLUs which happen to be off
  along the only path hide an influence). ``cond``: the model's
  conditioning inputs for one image (batch 1).
  """
  n = H * W * C
  changed_QxP = np.zeros((n, n), bool)
  variables = None
  forward = jax.jit(lambda variables, image: model.apply(variables, image,
                                                         **cond))

  def bits(image_n):
    image = np.asarray(image_n, np.int32).reshape(1, H, W, C)
    logits = np.asarray(forward(variables, image))
    return logits.reshape(n, 256).view(np.uint32)

  for seed in range(num_bases):
    base = np.random.default_rng(seed).integers(0, 256, n)
    if variables is None:
      variables = model.init(jax.random.PRNGKey(1),
                             base.reshape(1, H, W, C).astype(np.int32), **cond)
      variables = jax.tree_util.tree_map_with_path(randomize_bias, variables)
    reference = bits(base)
    for q in range(n):
      image = base.copy()
      image[q] = (image[q] + 128) % 256
      changed_QxP[q] |= (bits(image) != reference).any(axis=-1)
  return changed_QxP.T


def randomize_bias(path, x):
  """Biases start at zero; random ones make every parameter a generic value,
  so no influence can vanish by symmetry."""
  if jax.tree_util.keystr(path).endswith("['bias']"):
    key = jax.random.PRNGKey(x.size)
    return x + 0.1 * jax.random.normal(key, x.shape, x.dtype)
  return x


def gated_receptive_field(H, W, C, num_layers, kernel_size, first_kernel_size):
  """rf[p, q]: sub-pixel q lies in the Gated PixelCNN's receptive field of p.

  With reach R = k0//2 + (L-1)*(k//2): the R+1 rows above, R columns either
  side; R columns to the left in the current row; earlier channels of the
  current pixel.
  """
  R = first_kernel_size // 2 + (num_layers - 1) * (kernel_size // 2)
  i, j, c = sub_pixels(H, W, C)
  di = i[:, None] - i[None, :]     # p row - q row
  dj = j[None, :] - j[:, None]     # q col - p col
  above = (di >= 1) & (di <= R + 1) & (np.abs(dj) <= R)
  left = (di == 0) & (dj < 0) & (dj >= -R)
  here = (di == 0) & (dj == 0) & (c[None, :] < c[:, None])
  return above | left | here


def causal_order(H, W, C):
  """earlier[p, q]: q comes strictly before p in raster-then-channel order."""
  n = np.arange(H * W * C)
  return n[None, :] < n[:, None]


def sub_pixels(H, W, C):
  """Row, column and channel of every sub-pixel in raster-then-channel order."""
  i, j, c = np.meshgrid(np.arange(H), np.arange(W), np.arange(C),
                        indexing='ij')
  return i.reshape(-1), j.reshape(-1), c.reshape(-1)
