"""Image models: the Gated PixelCNN, the PixelCNN, Row LSTM and Diagonal
BiLSTM baselines, conditional PixelCNNs and the networks that make their
conditioning vectors.

Every autoregressive model maps integer images ``[B, H, W, C]`` in 0..255 to
float32 logits ``[B, H, W, C, 256]``; the logits at (i, j, c) depend only on
sub-pixels before (i, j, c) in raster-then-channel order (tests/test_causality.py
proves it bit for bit). Conditioning inputs (labels, a vector h, a low-resolution
image, an encoder's input) may depend on anything; the image path may not.

Each model class names its training ``objective``: 'likelihood' (bits/dim),
'mse' (the auto-encoder baseline) or 'triplet' (the embedding network).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from gated_pixelcnn import layers

Array = jax.Array
NUM_VALUES = 256  # 8-bit sub-pixels, one 256-way softmax each


def _is_concrete(x) -> bool:
  return not isinstance(x, jax.core.Tracer)


def check_images(images: Array, num_channels: int) -> None:
  """Raises a ValueError if ``images`` is not integer [B, H, W, C] in 0..255."""
  shape = getattr(images, 'shape', None)
  if shape is None or len(shape) != 4:
    raise ValueError(
        f'images must have rank 4 [batch, height, width, channels], got shape '
        f'{shape}.')
  if shape[-1] != num_channels:
    raise ValueError(
        f'images have {shape[-1]} channels but the model was built for '
        f'{num_channels} (model.num_channels).')
  if not jnp.issubdtype(images.dtype, jnp.integer):
    raise ValueError(
        f'images must be integers in 0..255 (e.g. uint8 or int32), got dtype '
        f'{images.dtype}; do not rescale them before the model.')
  if _is_concrete(images) and images.size:
    values = np.asarray(images)  # on the host: no op joins an outer trace
    lo, hi = int(values.min()), int(values.max())
    if lo < 0 or hi >= NUM_VALUES:
      raise ValueError(
          f'image values must lie in 0..{NUM_VALUES - 1}, got range '
          f'[{lo}, {hi}].')


def check_labels(labels: Array | None, num_classes: int, batch: int) -> None:
  """Raises a ValueError unless labels fit a model with ``num_classes``."""
  if num_classes == 0:
    if labels is not None:
      raise ValueError('labels were given but the model is unconditional '
                       '(model.num_classes = 0).')
    return
  if labels is None:
    raise ValueError(f'the model is class-conditional (model.num_classes = '
                     f'{num_classes}); pass labels=int[batch].')
  if labels.shape != (batch,) or not jnp.issubdtype(labels.dtype, jnp.integer):
    raise ValueError(f'labels must be integers of shape ({batch},), got '
                     f'{labels.dtype}{list(labels.shape)}.')
  if _is_concrete(labels) and labels.size:
    values = np.asarray(labels)
    lo, hi = int(values.min()), int(values.max())
    if lo < 0 or hi >= num_classes:
      raise ValueError(f'labels must lie in 0..{num_classes - 1}, got range '
                       f'[{lo}, {hi}].')


def check_conditioning(image_shape, num_classes: int, labels, cond_vector,
                       cond_maps) -> None:
  """Raises a ValueError unless the conditioning inputs fit the images."""
  B, H, W, _ = image_shape
  check_labels(labels, num_classes, B)
  if cond_maps is not None and tuple(cond_maps.shape[:3]) != (B, H, W):
    raise ValueError(f'cond_maps must have shape ({B}, {H}, {W}, S) to match '
                     f'the images, got {cond_maps.shape}.')
  if cond_vector is not None and (cond_vector.ndim != 2 or
                                  cond_vector.shape[0] != B):
    raise ValueError(f'cond_vector must have shape ({B}, D), got '
                     f'{cond_vector.shape}.')


def global_condition(labels, num_classes: int, cond_vector) -> Array | None:
  """The global vector h: one-hot labels, then cond_vector, or None."""
  if labels is None:
    return cond_vector
  one_hot = jax.nn.one_hot(labels, num_classes, dtype=jnp.float32)
  if cond_vector is None:
    return one_hot
  return jnp.concatenate([one_hot, cond_vector.astype(jnp.float32)], axis=-1)


def _check_odd(name: str, value: int) -> None:
  if value < 1 or value % 2 == 0:
    raise ValueError(f'{name} must be a positive odd number (the current pixel '
                     f'is the kernel centre), got {value}.')


def _check_divisible(name: str, value: int, num_channels: int) -> None:
  if value < 1 or value % num_channels:
    raise ValueError(
        f'{name} = {value} must be a positive multiple of num_channels = '
        f'{num_channels}: colour masking splits the maps into one group per '
        f'channel.')


def _check_common(module) -> None:
  if module.num_channels not in (1, 3):
    raise ValueError(f'num_channels must be 1 or 3, got {module.num_channels}.')
  if module.num_layers < 1:
    raise ValueError(f'num_layers must be >= 1, got {module.num_layers}.')
  _check_odd('kernel_size', module.kernel_size)
  _check_odd('first_kernel_size', module.first_kernel_size)
  _check_divisible('features', module.features, module.num_channels)
  _check_divisible('head_features', module.head_features, module.num_channels)
  if module.num_classes < 0:
    raise ValueError(f'num_classes must be >= 0, got {module.num_classes}.')
  if str(module.dtype) not in ('float32', 'bfloat16') and not (
      isinstance(module.dtype, type) and module.dtype in (jnp.float32,
                                                          jnp.bfloat16)):
    raise ValueError(f"dtype must be 'float32' or 'bfloat16', got "
                     f'{module.dtype!r}.')


def _check_unconditional(module) -> None:
  if module.num_classes:
    raise ValueError(f'the {type(module).__name__} baseline is '
                     f'unconditional; set model.num_classes = 0.')


def scale_images(images: Array) -> Array:
  """Integer sub-pixels 0..255 to the network's float input in [-1, 1]."""
  return images.astype(jnp.float32) / 127.5 - 1.0


class OutputHead(nn.Module):
  """ReLU, masked 1x1, ReLU, masked 1x1 -> float32 [B, H, W, C, 256] logits."""
  head_features: int
  num_channels: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x_BxHxWxP: Array) -> Array:
    C = self.num_channels
    x = nn.relu(x_BxHxWxP)
    x = layers.MaskedConv(self.head_features, mask_type='B', num_colors=C,
                          dtype=self.dtype, name='hidden')(x)
    x = nn.relu(x)
    # Logits in float32 whatever the compute dtype: they feed a softmax.
    logits = layers.MaskedConv(C * NUM_VALUES, mask_type='B', num_colors=C,
                               dtype=jnp.float32, name='logits')(x)
    return logits.reshape(*logits.shape[:-1], C, NUM_VALUES)


class GatedPixelCNN(nn.Module):
  """Gated PixelCNN (van den Oord et al. 2016) with optional conditioning."""
  objective = 'likelihood'
  num_layers: int = 6
  features: int = 48
  kernel_size: int = 5
  first_kernel_size: int = 7
  num_channels: int = 1
  num_classes: int = 0     # > 0: class-conditional on `labels`
  head_features: int = 256
  dtype: Any = 'float32'   # compute dtype; params and logits stay float32

  def __post_init__(self):
    _check_common(self)
    super().__post_init__()

  @nn.compact
  def __call__(self, images: Array, labels: Array | None = None,
               cond_vector: Array | None = None,
               cond_maps: Array | None = None) -> Array:
    """Logits [B, H, W, C, 256] of integer images [B, H, W, C].

    Args:
      images: integer [B, H, W, C] in 0..255.
      labels: int [B] class labels, required iff ``num_classes > 0``.
      cond_vector: optional float [B, D], the global conditioning vector h.
      cond_maps: optional float [B, H, W, S], spatial conditioning maps s.
    """
    check_images(images, self.num_channels)
    check_conditioning(images.shape, self.num_classes, labels, cond_vector,
                       cond_maps)
    h_BxD = global_condition(labels, self.num_classes, cond_vector)

    dtype = jnp.dtype(self.dtype)
    v = h = scale_images(images)
    skips = []
    for i in range(self.num_layers):
      v, h, skip = layers.GatedBlock(
          self.features,
          self.first_kernel_size if i == 0 else self.kernel_size,
          num_colors=self.num_channels, first=i == 0,
          last=i == self.num_layers - 1, dtype=dtype,
          name=f'block_{i}')(v, h, h_BxD, cond_maps)
      skips.append(skip)
    return OutputHead(self.head_features, self.num_channels, dtype,
                      name='head')(sum(skips))


class PixelCNN(nn.Module):
  """The PixelCNN baseline of the PixelRNN paper (has a blind spot)."""
  objective = 'likelihood'
  num_layers: int = 6      # residual blocks after the mask-A layer
  features: int = 64       # 2h in the paper's notation
  kernel_size: int = 3
  first_kernel_size: int = 7
  num_channels: int = 1
  num_classes: int = 0     # the baseline is unconditional; must stay 0
  head_features: int = 256
  dtype: Any = 'float32'

  def __post_init__(self):
    _check_common(self)
    _check_unconditional(self)
    _check_divisible('features // 2', self.features // 2, self.num_channels)
    super().__post_init__()

  @nn.compact
  def __call__(self, images: Array, labels: Array | None = None) -> Array:
    """Logits [B, H, W, C, 256] of integer images [B, H, W, C]."""
    check_images(images, self.num_channels)
    check_labels(labels, 0, images.shape[0])
    C, dtype = self.num_channels, jnp.dtype(self.dtype)

    def centred(features, k, mask_type, name):
      # 'SAME' padding; the centre tap is the current pixel, later taps closed.
      return layers.MaskedConv(
          features, (k, k), ((k // 2, k // 2), (k // 2, k // 2)),
          mask_type=mask_type, current=(k // 2, k // 2), num_colors=C,
          dtype=dtype, name=name)

    x = centred(self.features, self.first_kernel_size, 'A', 'input_conv')(
        scale_images(images))
    for i in range(self.num_layers):
      y = nn.relu(x)
      y = centred(self.features // 2, 1, 'B', f'block_{i}_in')(y)
      y = centred(self.features // 2, self.kernel_size, 'B',
                  f'block_{i}_conv')(nn.relu(y))
      y = centred(self.features, 1, 'B', f'block_{i}_out')(nn.relu(y))
      x = x + y
    return OutputHead(self.head_features, C, dtype, name='head')(x)


# ------------------------------------------------------ PixelRNN baselines


class _PixelRNN(nn.Module):
  """The PixelRNN paper's frame around its LSTM layers (RowLSTM,
  DiagonalBiLSTM): a 7x7 mask-A convolution to 2h maps, ``num_layers`` LSTM
  layers each with a residual connection (its h maps through a mask-B 1x1
  convolution back to 2h, added to its input), and the same output head as
  the other models."""
  objective = 'likelihood'
  num_layers: int = 4
  features: int = 64       # 2h: the residual maps; the LSTM state has h
  kernel_size: int = 3     # Row LSTM's k (unused by the Diagonal BiLSTM)
  first_kernel_size: int = 7
  num_channels: int = 1
  num_classes: int = 0     # the baselines are unconditional; must stay 0
  head_features: int = 256
  dtype: Any = 'float32'

  def __post_init__(self):
    _check_common(self)
    _check_unconditional(self)
    if self.features % 2:  # even and a multiple of C: h splits into C too
      raise ValueError(f'features = {self.features} (2h) must be even.')
    super().__post_init__()

  def _lstm_layer(self) -> tuple[type[nn.Module], dict[str, Any]]:
    """The layer class and its arguments (built in __call__)."""
    raise NotImplementedError

  def _lstm_inputs(self, x: Array, image: Array) -> tuple[Array, ...]:
    del image
    return (x,)

  @nn.compact
  def __call__(self, images: Array, labels: Array | None = None) -> Array:
    """Logits [B, H, W, C, 256] of integer images [B, H, W, C]."""
    check_images(images, self.num_channels)
    check_labels(labels, 0, images.shape[0])
    C, dtype = self.num_channels, jnp.dtype(self.dtype)
    k0 = self.first_kernel_size
    image = scale_images(images)
    x = layers.MaskedConv(
        self.features, (k0, k0), ((k0 // 2, k0 // 2), (k0 // 2, k0 // 2)),
        mask_type='A', current=(k0 // 2, k0 // 2), num_colors=C, dtype=dtype,
        name='input_conv')(image)
    layer_cls, kwargs = self._lstm_layer()
    for i in range(self.num_layers):
      h = layer_cls(hidden=self.features // 2, num_colors=C, dtype=dtype,
                    **kwargs, name=f'lstm_{i}')(*self._lstm_inputs(x, image))
      x = x + layers.MaskedConv(self.features, mask_type='B', num_colors=C,
                                dtype=dtype, name=f'residual_{i}')(h)
    return OutputHead(self.head_features, C, dtype, name='head')(x)


class RowLSTM(_PixelRNN):
  """PixelRNN with Row LSTM layers (layers.RowLSTMLayer): row by row, the
  state-to-state a 1 x k convolution of the row above (k = kernel_size), so
  each layer sees a triangle above the pixel; k//2 pixels to the left in
  the current row through the masked input-to-state convolution."""

  def _lstm_layer(self):
    return layers.RowLSTMLayer, {'kernel_size': self.kernel_size}


class DiagonalBiLSTM(_PixelRNN):
  """PixelRNN with Diagonal BiLSTM layers (layers.DiagonalBiLSTMLayer):
  diagonal by diagonal in both directions; one layer sees every earlier
  pixel (no blind spot). ``backward_image=False``: the layer exactly as the
  paper describes it, which misses the last sub-pixel of the row above (see
  layers.DiagonalBiLSTMLayer)."""
  backward_image: bool = True

  def _lstm_layer(self):
    return layers.DiagonalBiLSTMLayer, {'backward_image': self.backward_image}

  def _lstm_inputs(self, x: Array, image: Array) -> tuple[Array, ...]:
    return (x, image)


# ------------------------------------------------------ conditioning networks


class Encoder(nn.Module):
  """x -> h: 3x3 convs that halve the resolution, then a dense bottleneck.

  The convolutional encoder of the PixelCNN auto-encoder, of its MSE baseline
  and of the embedding network (28x28 -> 14x14 -> 7x7 -> ``outputs``).
  """
  features: int = 32
  outputs: int = 10
  num_downsamples: int = 2

  @nn.compact
  def __call__(self, images: Array) -> Array:
    x = scale_images(images)
    for i in range(self.num_downsamples):
      x = nn.relu(nn.Conv(self.features * 2**i, (3, 3), strides=(2, 2),
                          name=f'down_{i}')(x))
    x = nn.relu(nn.Conv(self.features * 2**self.num_downsamples, (3, 3),
                        name='conv_out')(x))
    return nn.Dense(self.outputs, name='bottleneck')(
        x.reshape(x.shape[0], -1))


class Deconv(nn.Module):
  """m(h): a deconvolutional network from h to ``features`` maps of [H, W].

  ``h`` is a vector [B, D] (mapped by a dense layer to a map of a quarter of
  the size) or a low-resolution map [B, h, w, D]; transposed 3x3 convolutions
  of stride 2 double the map until it covers H x W, the excess is cropped.
  """
  features: int
  hidden: int = 64

  @nn.compact
  def __call__(self, h: Array, height: int, width: int) -> Array:
    if h.ndim == 2:
      h0, w0 = math.ceil(height / 4), math.ceil(width / 4)
      x = nn.relu(nn.Dense(h0 * w0 * self.hidden, name='dense')(h))
      x = x.reshape(h.shape[0], h0, w0, self.hidden)
    elif h.ndim == 4:
      x = nn.relu(nn.Conv(self.hidden, (3, 3), name='conv_in')(h))
    else:
      raise ValueError(f'm(h) takes a vector [B, D] or a map [B, h, w, D], '
                       f'got shape {h.shape}.')
    i = 0
    while x.shape[1] < height or x.shape[2] < width:
      x = nn.relu(nn.ConvTranspose(self.hidden, (3, 3), strides=(2, 2),
                                   name=f'up_{i}')(x))
      i += 1
    x = x[:, :height, :width]
    return nn.Conv(self.features, (3, 3), name='conv_out')(x)


def _decoder_fields(module) -> dict[str, Any]:
  return {f: getattr(module, f) for f in (
      'num_layers', 'features', 'kernel_size', 'first_kernel_size',
      'num_channels', 'head_features', 'dtype')}


class ConditionalPixelCNN(nn.Module):
  """p(x | h): a Gated PixelCNN conditioned on an input h.

  ``conditioning='global'``: h is a vector [B, D] added (through a dense map)
  to every layer of both stacks. ``'spatial'``: s = m(h) (`Deconv`), maps of
  the image size added through unmasked 1x1 convolutions; h may then also be
  a low-resolution image (integers, scaled like the input) as in multi-scale
  generation. `sampling` runs the decoder with the conditioning inputs of
  `conditioning_inputs`.
  """
  objective = 'likelihood'
  num_classes = 0  # conditioned on h, not on labels
  num_layers: int = 8
  features: int = 48
  kernel_size: int = 5
  first_kernel_size: int = 7
  num_channels: int = 1
  head_features: int = 256
  dtype: Any = 'float32'
  conditioning: str = 'global'   # or 'spatial'
  spatial_features: int = 16     # maps s = m(h)
  spatial_hidden: int = 64       # width of m

  def __post_init__(self):
    if self.conditioning not in ('global', 'spatial'):
      raise ValueError(f"conditioning must be 'global' or 'spatial', got "
                       f'{self.conditioning!r}.')
    if self.spatial_features < 1 or self.spatial_hidden < 1:
      raise ValueError('spatial_features and spatial_hidden must be >= 1.')
    _check_common(self)
    super().__post_init__()

  def decoder_module(self) -> GatedPixelCNN:
    """The (unbound) Gated PixelCNN whose params are params['decoder']."""
    return GatedPixelCNN(**_decoder_fields(self), num_classes=0,
                         parent=None)

  def setup(self):
    self.decoder = GatedPixelCNN(**_decoder_fields(self), num_classes=0)
    if self.conditioning == 'spatial':
      self.m = Deconv(self.spatial_features, self.spatial_hidden)

  def conditioning_inputs(self, h: Array, height: int, width: int
                          ) -> dict[str, Array]:
    """The decoder's keyword inputs for h: cond_vector or cond_maps."""
    if jnp.issubdtype(h.dtype, jnp.integer):
      h = scale_images(h)  # a low-resolution image
    if not self.is_initializing():
      self._check_h(h)
    if self.conditioning == 'global':
      if h.ndim != 2:
        raise ValueError(f"conditioning='global' needs a vector h [B, D], got "
                         f"shape {h.shape}; use conditioning='spatial' for "
                         'maps.')
      return {'cond_vector': h.astype(jnp.float32)}
    return {'cond_maps': self.m(h.astype(jnp.float32), height, width)}

  def _check_h(self, h: Array) -> None:
    """h must have the size (and vector/map kind) the params were made for."""
    params = self.variables['params']
    if self.conditioning == 'global':
      kind, size = 'vector', params['decoder']['block_0']['global_cond'][
          'kernel'].shape[0]
    elif 'dense' in params['m']:
      kind, size = 'vector', params['m']['dense']['kernel'].shape[0]
    else:
      kind, size = 'map', params['m']['conv_in']['kernel'].shape[2]
    got = 'vector' if h.ndim == 2 else 'map'
    if got != kind or h.shape[-1] != size:
      raise ValueError(
          f'h has shape {h.shape[1:]} but these parameters were made for a '
          f'{size}-{"dim" if kind == "vector" else "channel"} {kind} h; '
          'condition on the same kind of input as in training (e.g. the '
          'embedding network the model was trained with).')

  def __call__(self, images: Array, cond: Array | None = None) -> Array:
    """Logits [B, H, W, C, 256] of images given h = ``cond`` [B, ...]."""
    check_images(images, self.num_channels)
    if cond is None:
      raise ValueError('the model is conditional: pass cond=h (a [B, D] '
                       'vector or a [B, h, w, D] map).')
    if cond.shape[0] != images.shape[0]:
      raise ValueError(f'cond has {cond.shape[0]} rows for '
                       f'{images.shape[0]} images.')
    _, H, W, _ = images.shape
    return self.decoder(images, **self.conditioning_inputs(cond, H, W))


class PixelCNNAutoEncoder(ConditionalPixelCNN):
  """The PixelCNN auto-encoder: h = encoder(x), then p(x | h), trained end to
  end on the NLL. ``encoder_images`` (default: the images) is what the
  encoder reads; the image path of the decoder stays causal."""
  bottleneck: int = 10
  encoder_features: int = 32

  def setup(self):
    super().setup()
    self.encoder = Encoder(self.encoder_features, self.bottleneck)

  def encode(self, images: Array) -> Array:
    check_images(images, self.num_channels)
    return self.encoder(images)

  def __call__(self, images: Array, encoder_images: Array | None = None
               ) -> Array:
    check_images(images, self.num_channels)
    h = self.encode(images if encoder_images is None else encoder_images)
    _, H, W, _ = images.shape
    return self.decoder(images, **self.conditioning_inputs(h, H, W))


class MSEAutoEncoder(nn.Module):
  """The baseline: the same encoder, a deconvolutional decoder, MSE loss.

  Returns the reconstruction as float [B, H, W, C] in pixel units (0..255).
  """
  objective = 'mse'
  num_classes = 0
  num_channels: int = 1
  bottleneck: int = 10
  encoder_features: int = 32
  spatial_hidden: int = 64

  @nn.compact
  def __call__(self, images: Array) -> Array:
    check_images(images, self.num_channels)
    h = Encoder(self.encoder_features, self.bottleneck, name='encoder')(images)
    _, H, W, C = images.shape
    x = Deconv(C, self.spatial_hidden, name='decoder')(h, H, W)
    return (x + 1.0) * 127.5


class EmbeddingNet(nn.Module):
  """Images -> unit-norm embeddings [B, D], trained with a triplet loss."""
  objective = 'triplet'
  num_classes = 0
  num_channels: int = 1
  features: int = 32
  embedding_dim: int = 32

  @nn.compact
  def __call__(self, images: Array) -> Array:
    check_images(images, self.num_channels)
    e = Encoder(self.features, self.embedding_dim, name='encoder')(images)
    return e / jnp.sqrt(jnp.sum(e * e, axis=-1, keepdims=True) + 1e-12)


MODELS = {'gated_pixelcnn': GatedPixelCNN, 'pixelcnn': PixelCNN,
          'row_lstm': RowLSTM, 'diagonal_bilstm': DiagonalBiLSTM,
          'conditional_pixelcnn': ConditionalPixelCNN,
          'pixelcnn_autoencoder': PixelCNNAutoEncoder,
          'mse_autoencoder': MSEAutoEncoder,
          'embedding_net': EmbeddingNet}


def create_model(model_config) -> nn.Module:
  """Builds the flax Module named by ``model_config.name`` from its fields."""
  cfg = dict(model_config)
  name = cfg.pop('name', None)
  if name not in MODELS:
    raise ValueError(f'unknown model.name {name!r}; choose one of '
                     f'{sorted(MODELS)}.')
  cls = MODELS[name]
  known = {f.name for f in dataclasses.fields(cls)} - {'parent', 'name'}
  unknown = sorted(set(cfg) - known)
  if unknown:
    raise ValueError(f'model {name!r} does not take config key(s) {unknown}; '
                     f'it takes {sorted(known)}.')
  return cls(**cfg)
