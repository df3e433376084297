"""Causal building blocks: masked convolutions, the gated unit, the gated block.

Conventions used throughout (shapes in names, see STYLE.md):

* Sub-pixels are ordered in raster order, then by colour channel (R, G, B).
* Feature maps that may read the current pixel are split into ``num_colors``
  contiguous groups; group ``c`` may carry information about colour channels
  ``< c`` (mask A) or ``<= c`` (mask B) of the current pixel. With one colour
  there is a single group and the masks reduce to "hide" (A) / "show" (B).
* A gated convolution produces ``2p`` maps, the halves ``f`` and ``g``; both
  halves use the same group layout, so ``tanh(f_c) * sigmoid(g_c)`` stays in
  group ``c``.
"""

from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array
Dtype = Any
Padding = tuple[tuple[int, int], tuple[int, int]]


def channel_groups(num_features: int, num_colors: int, halves: int = 1) -> np.ndarray:
  """Colour group of each of ``num_features`` channels (contiguous blocks).

  With ``halves=2`` the channels are two concatenated halves (the f and g
  inputs of a gated unit) and each half gets the same group layout.
  """
  per_half = num_features // halves
  if per_half * halves != num_features or per_half % num_colors:
    raise ValueError(
        f'{num_features} channels cannot be split into {halves} half(s) of '
        f'{num_colors} equal colour groups; use a multiple of '
        f'{halves * num_colors}.')
  return np.tile(np.arange(per_half) * num_colors // per_half, halves)


def colour_mask(in_groups: np.ndarray, out_groups: np.ndarray,
                mask_type: str) -> np.ndarray:
  """[in, out] 0/1 mask: strict ('A') or inclusive ('B') group ordering."""
  if mask_type == 'A':
    return (in_groups[:, None] < out_groups[None, :]).astype(np.float32)
  if mask_type == 'B':
    return (in_groups[:, None] <= out_groups[None, :]).astype(np.float32)
  raise ValueError(f"mask_type must be 'A' or 'B', got {mask_type!r}")


def kernel_mask(kernel_size: tuple[int, int], current: tuple[int, int],
                in_groups: np.ndarray, out_groups: np.ndarray,
                mask_type: str) -> np.ndarray:
  """[kh, kw, in, out] mask of a conv whose tap ``current`` is the current pixel.

  Taps before ``current`` in raster order are open, taps after it are closed,
  and the ``current`` tap gets the colour mask.
  """
  kh, kw = kernel_size
  order = np.arange(kh * kw).reshape(kh, kw)
  here = order[current]
  mask = np.zeros((kh, kw, len(in_groups), len(out_groups)), np.float32)
  mask[order < here] = 1.0
  mask[current] = colour_mask(in_groups, out_groups, mask_type)
  return mask


def apply_mask(kernel_KhxKwxIxO: Array, mask_type: str | None,
               num_colors: int = 1, current: tuple[int, int] | None = None,
               in_halves: int = 1, out_halves: int = 1) -> Array:
  """The kernel with its causal/colour mask applied (see `kernel_mask`).

  ``current`` defaults to the bottom-right tap. The mask is a numpy constant,
  so under jit it folds into the kernel.
  """
  if mask_type is None:
    return kernel_KhxKwxIxO
  kh, kw, num_in, num_out = kernel_KhxKwxIxO.shape
  current = current if current is not None else (kh - 1, kw - 1)
  mask = kernel_mask((kh, kw), current,
                     channel_groups(num_in, num_colors, in_halves),
                     channel_groups(num_out, num_colors, out_halves),
                     mask_type)
  return kernel_KhxKwxIxO * mask


class MaskedConv(nn.Module):
  """2D convolution with explicit padding and an optional causal/colour mask.

  ``mask_type=None`` gives a plain convolution. Otherwise the tap ``current``
  of the kernel is the current pixel (see `kernel_mask`), ``in_halves`` and
  ``out_halves`` describe the group layout of the inputs and outputs.
  """
  features: int
  kernel_size: tuple[int, int] = (1, 1)
  padding: Padding = ((0, 0), (0, 0))
  mask_type: str | None = None
  current: tuple[int, int] | None = None  # defaults to the bottom-right tap
  num_colors: int = 1
  in_halves: int = 1
  out_halves: int = 1
  use_bias: bool = True
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x_BxHxWxI: Array) -> Array:
    kh, kw = self.kernel_size
    kernel = self.param(
        'kernel', nn.initializers.lecun_normal(),
        (kh, kw, x_BxHxWxI.shape[-1], self.features), jnp.float32)
    kernel = apply_mask(kernel, self.mask_type, self.num_colors, self.current,
                        self.in_halves, self.out_halves)
    x = x_BxHxWxI.astype(self.dtype)
    kernel = kernel.astype(self.dtype)
    if self.kernel_size == (1, 1) and self.padding == ((0, 0), (0, 0)):
      y = jnp.einsum('bhwi,io->bhwo', x, kernel[0, 0])
    else:
      y = jax.lax.conv_general_dilated(
          x, kernel, window_strides=(1, 1), padding=self.padding,
          dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
    if self.use_bias:
      bias = self.param('bias', nn.initializers.zeros, (self.features,),
                        jnp.float32)
      y = y + bias.astype(self.dtype)[None, None, None, :]
    return y


def gate(x_BxHxWx2P: Array) -> Array:
  """Gated unit: tanh(f) * sigmoid(g), f and g the two halves of the maps."""
  f, g = jnp.split(x_BxHxWx2P, 2, axis=-1)
  return jnp.tanh(f) * jax.nn.sigmoid(g)


def shift_down(x_BxHxWxC: Array) -> Array:
  """Moves every row one down, inserting a row of zeros at the top."""
  return jnp.pad(x_BxHxWxC, ((0, 0), (1, 0), (0, 0), (0, 0)))[:, :-1]


def vertical_padding(kernel_size: int) -> Padding:
  """Padding of the (k//2 + 1) x k vertical conv: output row i sees rows <= i.

  ``k//2`` zero rows on top and none below, so the kernel's bottom row lies
  on the output row; ``k//2`` columns each side keep the width.
  """
  r = kernel_size // 2
  return ((r, 0), (r, r))


def horizontal_padding(kernel_size: int) -> Padding:
  """Padding of the 1 x (k//2 + 1) horizontal conv: output column j sees <= j.

  ``k//2`` zero columns on the left only, so the kernel's rightmost tap is the
  current pixel (masked by the colour mask).
  """
  return ((0, 0), (kernel_size // 2, 0))


class GatedBlock(nn.Module):
  """One Gated PixelCNN layer: vertical and horizontal stacks with a v->h link.

  The vertical stack at row i sees input rows <= i (all columns within reach);
  the horizontal stack at (i, j) sees columns <= j of row i (the current pixel
  only through colour masks) and, through the link, vertical features of rows
  < i. The link is taken from the vertical pre-activation and shifted down one
  row before it is added, so no information flows from row i of the vertical
  stack into row i of the horizontal stack. There is no h->v path.
  """
  features: int
  kernel_size: int
  num_colors: int = 1
  first: bool = False      # mask A on the current pixel, no residual
  last: bool = False       # vertical output and residual path are unused
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, v_BxHxWxI: Array, h_BxHxWxI: Array,
               cond_BxD: Array | None = None,
               cond_BxHxWxS: Array | None = None
               ) -> tuple[Array | None, Array | None, Array]:
    """Returns (vertical out, horizontal out, skip); outputs unused when last."""
    p, k, C = self.features, self.kernel_size, self.num_colors
    mask = 'A' if self.first else 'B'

    v_pre = MaskedConv(2 * p, (k // 2 + 1, k), vertical_padding(k),
                       dtype=self.dtype, name='vertical_conv')(v_BxHxWxI)
    h_pre = MaskedConv(2 * p, (1, k // 2 + 1), horizontal_padding(k),
                       mask_type=mask, num_colors=C, out_halves=2, dtype=self.dtype,
                       name='horizontal_conv')(h_BxHxWxI)
    # Link from the vertical pre-activation, shifted so row i gets rows < i.
    link = MaskedConv(2 * p, use_bias=False, dtype=self.dtype,
                      name='v_to_h')(v_pre)
    h_pre = h_pre + shift_down(link)

    # Conditioning is added before the nonlinearity in both stacks. It may
    # depend on anything except the image being modelled.
    if cond_BxD is not None:
      cond = nn.Dense(4 * p, use_bias=False, dtype=self.dtype,
                      name='global_cond')(cond_BxD)[:, None, None, :]
      v_pre = v_pre + cond[..., :2 * p]
      h_pre = h_pre + cond[..., 2 * p:]
    if cond_BxHxWxS is not None:
      cond = MaskedConv(4 * p, use_bias=False, dtype=self.dtype,
                        name='spatial_cond')(cond_BxHxWxS)
      v_pre = v_pre + cond[..., :2 * p]
      h_pre = h_pre + cond[..., 2 * p:]

    h_gated = gate(h_pre)
    skip = MaskedConv(p, mask_type='B', num_colors=C, dtype=self.dtype,
                      name='skip')(h_gated)
    if self.last:
      return None, None, skip
    v_out = gate(v_pre)
    h_out = MaskedConv(p, mask_type='B', num_colors=C, dtype=self.dtype,
                       name='residual')(h_gated)
    if not self.first:
      h_out = h_out + h_BxHxWxI
    return v_out, h_out, skip
