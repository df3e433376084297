"""Conditional PixelCNNs and the networks that make their conditioning: p(x | h)
for a vector or spatial h, the PixelCNN auto-encoder, its MSE baseline and
the embedding network."""

from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from gated_pixelcnn import model_parts
from gated_pixelcnn.gated import GatedPixelCNN

Array = jax.Array


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
    x = model_parts.scale_images(images)
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
      'num_channels', 'head_features', 'dtype', 'conv_impl')}


class ConditionalPixelCNN(model_parts.Capabilities, nn.Module):
  """p(x | h): a Gated PixelCNN conditioned on an input h.

  ``conditioning='global'``: h is a vector [B, D] added (through a dense map)
  to every layer of both stacks. ``'spatial'``: s = m(h) (`Deconv`), maps of
  the image size added through unmasked 1x1 convolutions; h may then also be
  a low-resolution image (integers, scaled like the input) as in multi-scale
  generation. `sampling` runs the decoder with the conditioning inputs of
  `conditioning_inputs`.
  """
  cached_sampling = True          # through its decoder
  conditioned_on_images = True
  needs_conditioning_run = True   # h: an embedding or a low-res image
  num_classes = 0  # conditioned on h, not on labels
  num_layers: int = 8
  features: int = 48
  kernel_size: int = 5
  first_kernel_size: int = 7
  num_channels: int = 1
  head_features: int = 256
  dtype: Any = 'float32'
  conv_impl: str = 'conv'        # as GatedPixelCNN's
  conditioning: str = 'global'   # or 'spatial'
  spatial_features: int = 16     # maps s = m(h)
  spatial_hidden: int = 64       # width of m

  def __post_init__(self):
    if self.conditioning not in ('global', 'spatial'):
      raise ValueError(f"conditioning must be 'global' or 'spatial', got "
                       f'{self.conditioning!r}.')
    if self.spatial_features < 1 or self.spatial_hidden < 1:
      raise ValueError('spatial_features and spatial_hidden must be >= 1.')
    model_parts.check_common(self)
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
      h = model_parts.scale_images(h)  # a low-resolution image
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
    model_parts.check_images(images, self.num_channels)
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
  has_encoder = True
  needs_conditioning_run = False
  bottleneck: int = 10
  encoder_features: int = 32

  def setup(self):
    super().setup()
    self.encoder = Encoder(self.encoder_features, self.bottleneck)

  def encode(self, images: Array) -> Array:
    model_parts.check_images(images, self.num_channels)
    return self.encoder(images)

  def __call__(self, images: Array, encoder_images: Array | None = None
               ) -> Array:
    model_parts.check_images(images, self.num_channels)
    h = self.encode(images if encoder_images is None else encoder_images)
    _, H, W, _ = images.shape
    return self.decoder(images, **self.conditioning_inputs(h, H, W))


class MSEAutoEncoder(model_parts.Capabilities, nn.Module):
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
    model_parts.check_images(images, self.num_channels)
    h = Encoder(self.encoder_features, self.bottleneck, name='encoder')(images)
    _, H, W, C = images.shape
    x = Deconv(C, self.spatial_hidden, name='decoder')(h, H, W)
    return (x + 1.0) * 127.5


class EmbeddingNet(model_parts.Capabilities, nn.Module):
  """Images -> unit-norm embeddings [B, D], trained with a triplet loss."""
  objective = 'triplet'
  num_classes = 0
  num_channels: int = 1
  features: int = 32
  embedding_dim: int = 32

  @nn.compact
  def __call__(self, images: Array) -> Array:
    model_parts.check_images(images, self.num_channels)
    e = Encoder(self.features, self.embedding_dim, name='encoder')(images)
    return e / jnp.sqrt(jnp.sum(e * e, axis=-1, keepdims=True) + 1e-12)
