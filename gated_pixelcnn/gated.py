"""The paper's PixelCNNs: the Gated PixelCNN (van den Oord et al. 2016) and
the PixelCNN baseline of the PixelRNN paper."""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from gated_pixelcnn import layers
from gated_pixelcnn import model_parts

Array = jax.Array


class GatedPixelCNN(model_parts.Capabilities, nn.Module):
  """Gated PixelCNN (van den Oord et al. 2016) with optional conditioning."""
  cached_sampling = True
  codable = True   # when unconditional: a decoder would need no labels
  # block_0 holds global_cond / spatial_cond iff built with that input.
  conditioning_in_block_0 = True
  num_layers: int = 6
  features: int = 48
  kernel_size: int = 5
  first_kernel_size: int = 7
  num_channels: int = 1
  num_classes: int = 0     # > 0: class-conditional on `labels`
  head_features: int = 256
  dtype: Any = 'float32'   # compute dtype; params and logits stay float32
  # How the convolutions compute (layers.CONV_IMPLS): speed only, the same
  # function and parameters; train.Trainer sets it from config.conv_impl.
  conv_impl: str = 'conv'

  def __post_init__(self):
    model_parts.check_common(self)
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
    model_parts.check_images(images, self.num_channels)
    model_parts.check_conditioning(images.shape, self.num_classes, labels,
                                   cond_vector, cond_maps)
    h_BxD = model_parts.global_condition(labels, self.num_classes, cond_vector)

    dtype = jnp.dtype(self.dtype)
    h = model_parts.scale_images(images)
    v = h[:, :-1]   # the vertical stack skips the last row (layers.GatedBlock)
    skips = []
    for i in range(self.num_layers):
      v, h, skip = layers.GatedBlock(
          self.features,
          self.first_kernel_size if i == 0 else self.kernel_size,
          num_colors=self.num_channels, first=i == 0,
          last=i == self.num_layers - 1, dtype=dtype,
          conv_impl=self.conv_impl, name=f'block_{i}')(v, h, h_BxD, cond_maps)
      skips.append(skip)
    return model_parts.OutputHead(self.head_features, self.num_channels, dtype,
                      name='head')(sum(skips))


class PixelCNN(model_parts.Capabilities, nn.Module):
  """The PixelCNN baseline of the PixelRNN paper (has a blind spot)."""
  num_layers: int = 6      # residual blocks after the mask-A layer
  features: int = 64       # 2h in the paper's notation
  kernel_size: int = 3
  first_kernel_size: int = 7
  num_channels: int = 1
  num_classes: int = 0     # the baseline is unconditional; must stay 0
  head_features: int = 256
  dtype: Any = 'float32'
  conv_impl: str = 'conv'  # as GatedPixelCNN's

  def __post_init__(self):
    model_parts.check_common(self)
    model_parts.check_unconditional(self)
    model_parts.check_divisible('features // 2', self.features // 2,
                                self.num_channels)
    super().__post_init__()

  @nn.compact
  def __call__(self, images: Array, labels: Array | None = None) -> Array:
    """Logits [B, H, W, C, 256] of integer images [B, H, W, C]."""
    model_parts.check_images(images, self.num_channels)
    model_parts.check_labels(labels, 0, images.shape[0])
    C, dtype = self.num_channels, jnp.dtype(self.dtype)

    def centred(features, k, mask_type, name):
      # 'SAME' padding; the centre tap is the current pixel, later taps closed.
      return layers.MaskedConv(
          features, (k, k), ((k // 2, k // 2), (k // 2, k // 2)),
          mask_type=mask_type, current=(k // 2, k // 2), num_colors=C,
          dtype=dtype, conv_impl=self.conv_impl, name=name)

    x = centred(self.features, self.first_kernel_size, 'A', 'input_conv')(
        model_parts.scale_images(images))
    for i in range(self.num_layers):
      y = nn.relu(x)
      y = centred(self.features // 2, 1, 'B', f'block_{i}_in')(y)
      y = centred(self.features // 2, self.kernel_size, 'B',
                  f'block_{i}_conv')(nn.relu(y))
      y = centred(self.features, 1, 'B', f'block_{i}_out')(nn.relu(y))
      x = x + y
    return model_parts.OutputHead(self.head_features, C, dtype, name='head')(x)
