"""The PixelRNN baselines (van den Oord et al. 2016, ICML): Row LSTM and
Diagonal BiLSTM in the paper's frame (mask-A input convolution, residual LSTM
layers, the shared output head)."""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from gated_pixelcnn import layers
from gated_pixelcnn import model_parts

Array = jax.Array


class _PixelRNN(model_parts.Capabilities, nn.Module):
  """The PixelRNN paper's frame around its LSTM layers (RowLSTM,
  DiagonalBiLSTM): a 7x7 mask-A convolution to 2h maps, ``num_layers`` LSTM
  layers each with a residual connection (its h maps through a mask-B 1x1
  convolution back to 2h, added to its input), and the same output head as
  the other models."""
  num_layers: int = 4
  features: int = 64       # 2h: the residual maps; the LSTM state has h
  kernel_size: int = 3     # Row LSTM's k (unused by the Diagonal BiLSTM)
  first_kernel_size: int = 7
  num_channels: int = 1
  num_classes: int = 0     # the baselines are unconditional; must stay 0
  head_features: int = 256
  dtype: Any = 'float32'

  def __post_init__(self):
    model_parts.check_common(self)
    model_parts.check_unconditional(self)
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
    model_parts.check_images(images, self.num_channels)
    model_parts.check_labels(labels, 0, images.shape[0])
    C, dtype = self.num_channels, jnp.dtype(self.dtype)
    k0 = self.first_kernel_size
    image = model_parts.scale_images(images)
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
    return model_parts.OutputHead(self.head_features, C, dtype, name='head')(x)


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
