"""Causal building blocks: masked convolutions, the gated unit, the gated
block, and the PixelRNN baselines' Row LSTM and Diagonal BiLSTM layers.

Conventions used throughout (shapes in names):

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

from typing import Any

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


def mask_of(kernel_shape: tuple[int, int, int, int], mask_type: str | None,
            num_colors: int = 1, current: tuple[int, int] | None = None,
            in_halves: int = 1, out_halves: int = 1) -> np.ndarray | None:
  """The [kh, kw, in, out] causal/colour mask of a kernel of this shape (see
  `kernel_mask`; ``current`` defaults to the bottom-right tap), or None for
  ``mask_type=None``."""
  if mask_type is None:
    return None
  kh, kw, num_in, num_out = kernel_shape
  current = current if current is not None else (kh - 1, kw - 1)
  return kernel_mask((kh, kw), current,
                     channel_groups(num_in, num_colors, in_halves),
                     channel_groups(num_out, num_colors, out_halves),
                     mask_type)


def apply_mask(kernel_KhxKwxIxO: Array, mask_type: str | None,
               num_colors: int = 1, current: tuple[int, int] | None = None,
               in_halves: int = 1, out_halves: int = 1) -> Array:
  """The kernel with its causal/colour mask applied (see `mask_of`).

  The mask is a numpy constant, so under jit it folds into the kernel.
  """
  mask = mask_of(kernel_KhxKwxIxO.shape, mask_type, num_colors, current,
                 in_halves, out_halves)
  return kernel_KhxKwxIxO if mask is None else kernel_KhxKwxIxO * mask


# How `convolve` computes a convolution. All compute the same function (up
# to float rounding; tests/test_models.py) and differ only in speed, which
# depends on the machine: 'conv' is XLA's convolution, 'im2col' one matmul
# over the patches of the open taps stacked along the channels, 'taps' one
# matmul per open tap, summed. train.Trainer picks one by measuring
# (`config.conv_impl`, gated_pixelcnn.tuning).
CONV_IMPLS = ('conv', 'im2col', 'taps')


def convolve(x_BxHxWxI: Array, kernel_KhxKwxIxO: Array, padding: Padding,
             impl: str = 'conv', open_taps: np.ndarray | None = None
             ) -> Array:
  """Stride-1 NHWC convolution (cross-correlation, as XLA's) of ``x`` with
  ``kernel`` after zero ``padding``, computed as ``impl`` says.

  ``open_taps`` [kh, kw] bool marks the taps that may be non-zero (None: all);
  'im2col' and 'taps' skip the closed ones, 'conv' multiplies them by zero.
  """
  if impl == 'conv':
    return jax.lax.conv_general_dilated(
        x_BxHxWxI, kernel_KhxKwxIxO, window_strides=(1, 1), padding=padding,
        dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
  if impl not in CONV_IMPLS:
    raise ValueError(f'conv impl must be one of {CONV_IMPLS}, got {impl!r}')
  kh, kw, num_in, num_out = kernel_KhxKwxIxO.shape
  x = jnp.pad(x_BxHxWxI, ((0, 0), *padding, (0, 0)))
  H, W = x.shape[1] - kh + 1, x.shape[2] - kw + 1
  taps = [(a, b) for a in range(kh) for b in range(kw)
          if open_taps is None or open_taps[a, b]]
  if not taps:
    return jnp.zeros((*x.shape[:1], H, W, num_out), x.dtype)
  patches = [x[:, a:a + H, b:b + W] for a, b in taps]
  if impl == 'taps':   # summed in float32, rounded once as the others
    return sum(jnp.einsum('bhwi,io->bhwo', patch, kernel_KhxKwxIxO[a, b],
                          preferred_element_type=jnp.float32)
               for patch, (a, b) in zip(patches, taps)).astype(x.dtype)
  columns = jnp.concatenate(patches, axis=-1)      # [B, H, W, taps * I]
  weights = jnp.concatenate([kernel_KhxKwxIxO[a, b] for a, b in taps])
  return jnp.einsum('bhwk,ko->bhwo', columns, weights)


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
  conv_impl: str = 'conv'  # how to compute it (`convolve`): speed only

  @nn.compact
  def __call__(self, x_BxHxWxI: Array) -> Array:
    kh, kw = self.kernel_size
    shape = (kh, kw, x_BxHxWxI.shape[-1], self.features)
    kernel = self.param('kernel', nn.initializers.lecun_normal(), shape,
                        jnp.float32)
    mask = mask_of(shape, self.mask_type, self.num_colors, self.current,
                   self.in_halves, self.out_halves)
    if mask is not None:
      kernel = kernel * mask
    x = x_BxHxWxI.astype(self.dtype)
    kernel = kernel.astype(self.dtype)
    if self.kernel_size == (1, 1) and self.padding == ((0, 0), (0, 0)):
      y = jnp.einsum('bhwi,io->bhwo', x, kernel[0, 0])
    else:
      y = convolve(x, kernel, self.padding, self.conv_impl,
                   None if mask is None else mask.any(axis=(2, 3)))
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


def link_rows_below(link_BxHm1xWxC: Array) -> Array:
  """The link of vertical rows 0..H-2 on rows 1..H-1, zeros on row 0: row i
  of the horizontal stack receives vertical row i - 1."""
  return jnp.pad(link_BxHm1xWxC, ((0, 0), (1, 0), (0, 0), (0, 0)))


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
  < i. The link is taken from the vertical pre-activation and moved down one
  row before it is added, so no information flows from row i of the vertical
  stack into row i of the horizontal stack. There is no h->v path.

  The vertical stack holds rows 0..H-2 only (``v`` is [B, H-1, W, I]): its
  last row would feed nothing but the link of a row below the image, in every
  layer, so it is never computed (1/H of the vertical stack's work saved).
  """
  features: int
  kernel_size: int
  num_colors: int = 1
  first: bool = False      # mask A on the current pixel, no residual
  last: bool = False       # vertical output and residual path are unused
  dtype: Dtype = jnp.float32
  conv_impl: str = 'conv'  # how the stacks' convolutions compute (`convolve`)

  @nn.compact
  def __call__(self, v_BxHm1xWxI: Array, h_BxHxWxI: Array,
               cond_BxD: Array | None = None,
               cond_BxHxWxS: Array | None = None
               ) -> tuple[Array | None, Array | None, Array]:
    """Returns (vertical out, horizontal out, skip); outputs unused when last.

    ``v`` has one row less than ``h`` (see the class doc).
    """
    p, k, C = self.features, self.kernel_size, self.num_colors
    mask = 'A' if self.first else 'B'
    H = h_BxHxWxI.shape[1]
    if v_BxHm1xWxI.shape[1] != H - 1:
      raise ValueError(f'the vertical stack has {H - 1} rows for {H} image '
                       f'rows, got {v_BxHm1xWxI.shape[1]}')

    v_pre = MaskedConv(2 * p, (k // 2 + 1, k), vertical_padding(k),
                       dtype=self.dtype, conv_impl=self.conv_impl,
                       name='vertical_conv')(v_BxHm1xWxI)
    h_pre = MaskedConv(2 * p, (1, k // 2 + 1), horizontal_padding(k),
                       mask_type=mask, num_colors=C, out_halves=2,
                       dtype=self.dtype, conv_impl=self.conv_impl,
                       name='horizontal_conv')(h_BxHxWxI)
    # Link from the vertical pre-activation, moved so row i gets row i - 1.
    link = MaskedConv(2 * p, use_bias=False, dtype=self.dtype,
                      name='v_to_h')(v_pre)
    h_pre = h_pre + link_rows_below(link)

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
      v_pre = v_pre + cond[:, :H - 1, :, :2 * p]
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


# ------------------------------------------------ PixelRNN's LSTM layers
#
# The baselines of van den Oord, Kalchbrenner, Kavukcuoglu (ICML 2016); the
# models around them are models.RowLSTM and models.DiagonalBiLSTM. The LSTM
# cell: o, f, i = sigmoid, g = tanh; c = f c' + i g, h = o tanh(c), the
# forget gate's bias starting at 1. Its four gates share one colour-group
# layout (``out_halves=4``), so the elementwise cell keeps each group's h and
# c in its group; the state-to-state paths read only earlier pixels and need
# no mask.


def _lstm(gates_Bx4H: Array, c_BxH: Array) -> tuple[Array, Array]:
  """One LSTM cell update from the gate pre-activations [o | f | i | g]."""
  o, f, i, g = jnp.split(gates_Bx4H, 4, axis=-1)
  c = jax.nn.sigmoid(f) * c_BxH + jax.nn.sigmoid(i) * jnp.tanh(g)
  return jax.nn.sigmoid(o) * jnp.tanh(c), c


def _gate_bias(num_hidden: int):
  """Zeros, with the forget gate's quarter at 1 (remember by default)."""
  def init(key, shape, dtype=jnp.float32):
    del key
    return jnp.zeros(shape, dtype).at[num_hidden:2 * num_hidden].set(1.0)
  return init


def skew(x_BxHxWxF: Array) -> Array:
  """[B, H, W, F] -> [B, H, W + H - 1, F] with out[:, i, i + j] = x[:, i, j]
  (zeros elsewhere): every diagonal of x becomes a column."""
  B, H, W, F = x_BxHxWxF.shape
  x = jnp.pad(x_BxHxWxF, ((0, 0), (0, 0), (0, H), (0, 0)))
  x = x.reshape(B, H * (W + H), F)[:, :H * (W + H - 1)]
  return x.reshape(B, H, W + H - 1, F)


def unskew(x_BxHxSxF: Array, width: int) -> Array:
  """The inverse of `skew`: [B, H, W + H - 1, F] -> [B, H, W, F]."""
  B, H, S, F = x_BxHxSxF.shape
  x = x_BxHxSxF.reshape(B, H * S, F)
  x = jnp.pad(x, ((0, 0), (0, H), (0, 0)))
  return x.reshape(B, H, S + 1, F)[:, :, :width]


class RowLSTMLayer(nn.Module):
  """Row LSTM: [B, H, W, 2h] -> h maps [B, H, W, h].

  The input-to-state map is one masked 1 x k convolution over each row (the
  current pixel, mask B, and the k//2 pixels to its left) for the whole
  image at once; a ``lax.scan`` over rows adds the state-to-state 1 x k
  convolution of the previous row's h. h at (i, j) therefore sees a
  triangle above (k//2 more columns either side per row up) and k//2
  pixels to the left in its row (plus what the input maps carry).
  """
  hidden: int
  kernel_size: int = 3
  num_colors: int = 1
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x_BxHxWxF: Array) -> Array:
    k, h, C = self.kernel_size, self.hidden, self.num_colors
    # Input-to-state for every row at once: the k x 1 masked convolution of
    # the paper with its closed taps (right of the current pixel) cut off:
    # 1 x (k//2+1), k//2 zero columns on the left, the current pixel last.
    i2s = MaskedConv(
        4 * h, (1, k // 2 + 1), horizontal_padding(k), mask_type='B',
        current=(0, k // 2), num_colors=C, out_halves=4, use_bias=False,
        dtype=self.dtype, name='input_to_state')(x_BxHxWxF)
    s2s_kernel = self.param('state_to_state', nn.initializers.lecun_normal(),
                            (1, k, h, 4 * h), jnp.float32).astype(self.dtype)
    bias = self.param('bias', _gate_bias(h), (4 * h,), jnp.float32)

    def row(carry, i2s_BxWx4H):
      h_prev, c_prev = carry
      # The 1 x k convolution of the row above as k matmuls of shifted
      # copies (XLA:CPU runs convolutions inside a scan far slower).
      W = h_prev.shape[1]
      padded = jnp.pad(h_prev.astype(self.dtype),
                       ((0, 0), (k // 2, k // 2), (0, 0)))
      s2s = sum(jnp.einsum('bwi,io->bwo', padded[:, t:t + W],
                           s2s_kernel[0, t]) for t in range(k))
      gates = (i2s_BxWx4H + s2s).astype(jnp.float32) + bias[None, None, :]
      h_new, c_new = _lstm(gates, c_prev)
      return (h_new, c_new), h_new

    B, H, W, _ = x_BxHxWxF.shape
    zeros = jnp.zeros((B, W, h), jnp.float32)
    _, h_HxBxWxH = jax.lax.scan(row, (zeros, zeros),
                                jnp.moveaxis(i2s, 1, 0))
    return jnp.moveaxis(h_HxBxWxH, 0, 1).astype(self.dtype)


class _DiagonalLSTM(nn.Module):
  """One direction of the Diagonal BiLSTM: [B, H, W, 2h] -> [B, H, W, h].

  The input-to-state map is a masked 1x1 convolution (mask B). The map is
  skewed (row i shifted right by i) so that a ``lax.scan`` over its columns
  computes a whole diagonal per step; the state-to-state is a 2 x 1
  convolution of the previous column's h at rows i-1 and i, i.e. the pixels
  above and to the left of (i, j).
  """
  hidden: int
  num_colors: int = 1
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x_BxHxWxF: Array, image_BxHxWxC: Array | None = None
               ) -> Array:
    h = self.hidden
    i2s = MaskedConv(4 * h, mask_type='B', num_colors=self.num_colors,
                     out_halves=4, use_bias=False, dtype=self.dtype,
                     name='input_to_state')(x_BxHxWxF)
    if image_BxHxWxC is not None:  # unmasked: only for a pass used a row down
      i2s = i2s + MaskedConv(4 * h, use_bias=False, dtype=self.dtype,
                             name='image_to_state')(image_BxHxWxC)
    # 2 x 1 state-to-state over the skewed map: row i-1 (the pixel above)
    # and row i (the pixel to the left) of the previous column.
    s2s_kernel = self.param('state_to_state', nn.initializers.lecun_normal(),
                            (2, h, 4 * h), jnp.float32).astype(self.dtype)
    bias = self.param('bias', _gate_bias(h), (4 * h,), jnp.float32)

    B, H, W, _ = x_BxHxWxF.shape
    rows = jnp.arange(H)

    def column(carry, inputs):
      h_prev, c_prev = carry
      t, i2s_BxHx4H = inputs
      above = jnp.pad(h_prev, ((0, 0), (1, 0), (0, 0)))[:, :-1]
      s2s = (jnp.einsum('bhi,io->bho', above.astype(self.dtype),
                        s2s_kernel[0]) +
             jnp.einsum('bhi,io->bho', h_prev.astype(self.dtype),
                        s2s_kernel[1]))
      gates = (i2s_BxHx4H + s2s).astype(jnp.float32) + bias[None, None, :]
      h_new, c_new = _lstm(gates, c_prev)
      # Cells the skew adds (before a row starts or after it ends) stay
      # zero, as zero padding: row i holds pixel t - i at column t.
      valid = ((t - rows >= 0) & (t - rows < W))[None, :, None]
      h_new, c_new = jnp.where(valid, h_new, 0.0), jnp.where(valid, c_new, 0.0)
      return (h_new, c_new), h_new

    skewed = skew(i2s)                                 # [B, H, W+H-1, 4h]
    zeros = jnp.zeros((B, H, h), jnp.float32)
    _, h_SxBxHxH = jax.lax.scan(
        column, (zeros, zeros),
        (jnp.arange(W + H - 1), jnp.moveaxis(skewed, 2, 0)))
    return unskew(jnp.moveaxis(h_SxBxHxH, 0, 2), W).astype(self.dtype)


class DiagonalBiLSTMLayer(nn.Module):
  """Diagonal BiLSTM: [B, H, W, 2h] (and the scaled image) -> [B, H, W, h].

  `_DiagonalLSTM` sees everything above and to the left of a pixel; a second
  one on the mirrored image sees everything above and to the right,
  including the current row, so its output is shifted down one row before
  the two are added.

  As the paper describes it (``backward_image=False``) one sub-pixel is
  still missed: the maps at (r, c) hold only the earlier channels of pixel
  (r, c) (mask A in the first layer), so no map in row r holds the last
  sub-pixel of the row, (r, W-1, C-1), and the right-to-left pass cannot
  carry it; row r + 1 sees it only through the first layer's window, within
  k0//2 columns of the right edge. The right-to-left pass may read all of
  row r, its output being used one row down, so with ``backward_image=True``
  (the default) it also reads the image itself (unmasked 1x1) and the layer
  sees every earlier sub-pixel, at any distance (tests/test_pixelrnn.py
  shows both).
  """
  hidden: int
  num_colors: int = 1
  backward_image: bool = True
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x_BxHxWxF: Array, image_BxHxWxC: Array) -> Array:
    kwargs = dict(hidden=self.hidden, num_colors=self.num_colors,
                  dtype=self.dtype)
    left = _DiagonalLSTM(**kwargs, name='left')(x_BxHxWxF)
    image = image_BxHxWxC[:, :, ::-1] if self.backward_image else None
    right = _DiagonalLSTM(**kwargs, name='right')(x_BxHxWxF[:, :, ::-1],
                                                  image)
    # The mirrored pass saw the current row to the right of each pixel:
    # shifted down one row it holds only rows above.
    return left + shift_down(right[:, :, ::-1])
