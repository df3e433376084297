"""The unconditional Gated PixelCNN of `gated_pixelcnn.models` in PyTorch.

A reference for `python -m bench.train --compare-torch`: the same layers,
widths, kernels, masks, padding and output head, written the way a careful PyTorch
user would (masked weights, explicit asymmetric padding, channels-last
memory layout), trained with ``torch.optim.RMSprop``. `from_flax` copies the
weights of a Flax model so that both compute the same loss for the same
weights (checked by `check_same_loss` and tests/test_torch_reference.py).

Needs the ``bench`` extra: ``pip install -e ".[bench]"`` (PyTorch CPU).
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from gated_pixelcnn import layers

NUM_VALUES = 256


def _mask(kernel_shape, mask_type, num_colors, current=None, in_halves=1,
          out_halves=1) -> torch.Tensor:
  """The mask of `gated_pixelcnn.layers.apply_mask` in torch's [O, I, kh, kw]."""
  kh, kw, num_in, num_out = kernel_shape
  if mask_type is None:
    return torch.ones(num_out, num_in, kh, kw)
  mask = layers.kernel_mask(
      (kh, kw), current if current is not None else (kh - 1, kw - 1),
      layers.channel_groups(num_in, num_colors, in_halves),
      layers.channel_groups(num_out, num_colors, out_halves), mask_type)
  return torch.from_numpy(np.ascontiguousarray(mask.transpose(3, 2, 0, 1)))


class MaskedConv(torch.nn.Module):
  """Conv with (top, bottom, left, right) zero padding and a fixed mask."""

  def __init__(self, in_features, out_features, kernel_size=(1, 1),
               padding=(0, 0, 0, 0), mask_type=None, num_colors=1,
               in_halves=1, out_halves=1, bias=True):
    super().__init__()
    kh, kw = kernel_size
    self.conv = torch.nn.Conv2d(in_features, out_features, kernel_size,
                                bias=bias)
    self.padding = padding
    self.register_buffer('mask', _mask(
        (kh, kw, in_features, out_features), mask_type, num_colors,
        in_halves=in_halves, out_halves=out_halves))
    self.masked = mask_type is not None and not bool(self.mask.all())

  def forward(self, x):
    top, bottom, left, right = self.padding
    if any(self.padding):
      x = F.pad(x, (left, right, top, bottom))
    weight = self.conv.weight * self.mask if self.masked else self.conv.weight
    return F.conv2d(x, weight, self.conv.bias)


def _gate(x):
  f, g = x.chunk(2, dim=1)
  return torch.tanh(f) * torch.sigmoid(g)


class GatedBlock(torch.nn.Module):
  """`gated_pixelcnn.layers.GatedBlock` without conditioning."""

  def __init__(self, in_features, p, k, num_colors, first, last):
    super().__init__()
    r = k // 2
    mask = 'A' if first else 'B'
    self.first, self.last = first, last
    self.vertical_conv = MaskedConv(in_features, 2 * p, (r + 1, k),
                                    (r, 0, r, r))
    self.horizontal_conv = MaskedConv(in_features, 2 * p, (1, r + 1),
                                      (0, 0, r, 0), mask, num_colors,
                                      out_halves=2)
    self.v_to_h = MaskedConv(2 * p, 2 * p, bias=False)
    self.skip = MaskedConv(p, p, mask_type='B', num_colors=num_colors)
    if not last:
      self.residual = MaskedConv(p, p, mask_type='B', num_colors=num_colors)

  def forward(self, v, h):
    v_pre = self.vertical_conv(v)
    link = self.v_to_h(v_pre)
    h_pre = self.horizontal_conv(h) + F.pad(link, (0, 0, 1, 0))[:, :, :-1]
    h_gated = _gate(h_pre)
    skip = self.skip(h_gated)
    if self.last:
      return None, None, skip
    h_out = self.residual(h_gated)
    if not self.first:
      h_out = h_out + h
    return _gate(v_pre), h_out, skip


class GatedPixelCNN(torch.nn.Module):
  """Integer images [B, H, W, C] -> logits [B, 256, C, H, W]."""

  def __init__(self, num_layers=8, features=48, kernel_size=5,
               first_kernel_size=7, num_channels=1, head_features=64):
    super().__init__()
    C = num_channels
    self.num_channels = C
    blocks = []
    for i in range(num_layers):
      blocks.append(GatedBlock(
          C if i == 0 else features, features,
          first_kernel_size if i == 0 else kernel_size, C, i == 0,
          i == num_layers - 1))
    self.blocks = torch.nn.ModuleList(blocks)
    self.hidden = MaskedConv(features, head_features, mask_type='B',
                             num_colors=C)
    self.logits = MaskedConv(head_features, C * NUM_VALUES, mask_type='B',
                             num_colors=C)

  def forward(self, images_BxHxWxC):
    x = images_BxHxWxC.permute(0, 3, 1, 2).float() / 127.5 - 1.0
    x = x.contiguous(memory_format=torch.channels_last)
    v = h = x
    skips = 0
    for block in self.blocks:
      v, h, skip = block(v, h)
      skips = skips + skip
    x = self.hidden(F.relu(skips))
    x = self.logits(F.relu(x))
    B, _, H, W = x.shape
    return x.view(B, self.num_channels, NUM_VALUES, H, W).transpose(1, 2)


def bits_per_dim(logits_Bx256xCxHxW, images_BxHxWxC):
  """Mean -log2 p(x) / (H*W*C) over the batch, like `likelihood.bits_per_dim`."""
  target = images_BxHxWxC.permute(0, 3, 1, 2).long()
  return F.cross_entropy(logits_Bx256xCxHxW, target) / math.log(2.0)


def from_config(model_config) -> GatedPixelCNN:
  """The torch model for an unconditional `gated_pixelcnn` model config."""
  if model_config.name != 'gated_pixelcnn' or model_config.num_classes:
    raise ValueError('the PyTorch reference covers the unconditional '
                     "'gated_pixelcnn' model only.")
  return GatedPixelCNN(model_config.num_layers, model_config.features,
                       model_config.kernel_size,
                       model_config.first_kernel_size,
                       model_config.num_channels, model_config.head_features)


def from_flax(model: GatedPixelCNN, params) -> None:
  """Copies Flax parameters (a `GatedPixelCNN` params tree) into ``model``."""

  def copy(module: MaskedConv, tree):
    kernel = np.asarray(tree['kernel'], np.float32).transpose(3, 2, 0, 1)
    if tuple(kernel.shape) != tuple(module.conv.weight.shape):
      raise ValueError(f'kernel {kernel.shape} does not fit '
                       f'{tuple(module.conv.weight.shape)}')
    with torch.no_grad():
      module.conv.weight.copy_(torch.from_numpy(np.ascontiguousarray(kernel)))
      if module.conv.bias is not None:
        module.conv.bias.copy_(torch.from_numpy(np.array(tree['bias'], np.float32)))

  for i, block in enumerate(model.blocks):
    tree = params[f'block_{i}']
    for name in ('vertical_conv', 'horizontal_conv', 'v_to_h', 'skip',
                 'residual'):
      if hasattr(block, name):
        copy(getattr(block, name), tree[name])
  copy(model.hidden, params['head']['hidden'])
  copy(model.logits, params['head']['logits'])


def channels_last(model: torch.nn.Module) -> torch.nn.Module:
  return model.to(memory_format=torch.channels_last)
