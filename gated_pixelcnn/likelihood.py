"""From logits to log-likelihoods and bits per dimension."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

Array = jax.Array


def log_prob(logits_BxHxWxCx256: Array, images_BxHxWxC: Array,
             mask_HxWxC: Array | None = None) -> Array:
  """log p(x) in nats per image, float32 [B]: the sum of the sub-pixel terms.

  With ``mask_HxWxC`` only the sub-pixels where it is 1 count (multi-scale:
  the pixels the conditioning already fixes are not modelled again).
  """
  if logits_BxHxWxCx256.shape[:-1] != images_BxHxWxC.shape:
    raise ValueError(f'logits {logits_BxHxWxCx256.shape} do not match images '
                     f'{images_BxHxWxC.shape} (expected images.shape + (256,)).')
  logp = jax.nn.log_softmax(logits_BxHxWxCx256.astype(jnp.float32), axis=-1)
  picked_BxHxWxC = jnp.take_along_axis(
      logp, images_BxHxWxC.astype(jnp.int32)[..., None], axis=-1)[..., 0]
  if mask_HxWxC is not None:
    picked_BxHxWxC = jnp.where(mask_HxWxC[None] > 0, picked_BxHxWxC, 0.0)
  return picked_BxHxWxC.sum(axis=(1, 2, 3))


def bits_per_dim(logits_BxHxWxCx256: Array, images_BxHxWxC: Array) -> Array:
  """-log2 p(x) / (H*W*C) per image, float32 [B]."""
  num_dims = math.prod(images_BxHxWxC.shape[1:])
  return -log_prob(logits_BxHxWxCx256, images_BxHxWxC) / (
      num_dims * math.log(2.0))
