"""What every image model shares: checks of its inputs and hyperparameters,
the scaling of integer sub-pixels, the output head."""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from gated_pixelcnn import layers

Array = jax.Array
NUM_VALUES = 256  # 8-bit sub-pixels, one 256-way softmax each


class Capabilities:
  """What a model class can do, declared by the class: the code that uses a
  model asks these instead of testing the class."""
  # What training minimises: 'likelihood' (bits/dim), 'mse' or 'triplet'.
  objective = 'likelihood'
  cached_sampling = False          # sampling's method='cached' runs it
  codable = False                  # compression.Codec codes with it
  conditioned_on_images = False    # samples are drawn given h of an image
  has_encoder = False              # h comes from its own `encode`
  needs_conditioning_run = False   # h comes from another trained run
  conditioning_in_block_0 = False  # the sampler checks inputs against it


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


def check_odd(name: str, value: int) -> None:
  if value < 1 or value % 2 == 0:
    raise ValueError(f'{name} must be a positive odd number (the current pixel '
                     f'is the kernel centre), got {value}.')


def check_divisible(name: str, value: int, num_channels: int) -> None:
  if value < 1 or value % num_channels:
    raise ValueError(
        f'{name} = {value} must be a positive multiple of num_channels = '
        f'{num_channels}: colour masking splits the maps into one group per '
        f'channel.')


def check_common(module) -> None:
  if module.num_channels not in (1, 3):
    raise ValueError(f'num_channels must be 1 or 3, got {module.num_channels}.')
  if module.num_layers < 1:
    raise ValueError(f'num_layers must be >= 1, got {module.num_layers}.')
  check_odd('kernel_size', module.kernel_size)
  check_odd('first_kernel_size', module.first_kernel_size)
  check_divisible('features', module.features, module.num_channels)
  check_divisible('head_features', module.head_features, module.num_channels)
  if module.num_classes < 0:
    raise ValueError(f'num_classes must be >= 0, got {module.num_classes}.')
  impl = getattr(module, 'conv_impl', 'conv')
  if impl not in layers.CONV_IMPLS:
    raise ValueError(f'conv_impl must be one of {layers.CONV_IMPLS}, got '
                     f'{impl!r}.')
  if str(module.dtype) not in ('float32', 'bfloat16') and not (
      isinstance(module.dtype, type) and module.dtype in (jnp.float32,
                                                          jnp.bfloat16)):
    raise ValueError(f"dtype must be 'float32' or 'bfloat16', got "
                     f'{module.dtype!r}.')


def check_unconditional(module) -> None:
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
