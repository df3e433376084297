"""Image grids for PNG files and TensorBoard."""

from __future__ import annotations

import io

from etils import epath
import numpy as np
from PIL import Image


def make_grid(images_RxKxHxWxC: np.ndarray, pad: int = 2,
              pad_value: int = 255) -> np.ndarray:
  """Tiles R rows of K images into one uint8 [H', W', C] image."""
  images = np.asarray(images_RxKxHxWxC, np.uint8)
  R, K, H, W, C = images.shape
  grid = np.full((R * (H + pad) + pad, K * (W + pad) + pad, C), pad_value,
                 np.uint8)
  for r in range(R):
    for k in range(K):
      y, x = pad + r * (H + pad), pad + k * (W + pad)
      grid[y:y + H, x:x + W] = images[r, k]
  return grid


def save_png(path: str, grid_HxWxC: np.ndarray, scale: int = 2) -> str:
  """Writes a grid as PNG (nearest-neighbour upscaled by ``scale``)."""
  grid = np.asarray(grid_HxWxC, np.uint8)
  if scale > 1:
    grid = grid.repeat(scale, axis=0).repeat(scale, axis=1)
  image = Image.fromarray(grid[..., 0] if grid.shape[-1] == 1 else grid)
  buffer = io.BytesIO()
  image.save(buffer, format='PNG')
  out = epath.Path(path)
  out.parent.mkdir(parents=True, exist_ok=True)
  tmp = out.parent / (out.name + '.tmp')
  tmp.write_bytes(buffer.getvalue())
  tmp.replace(out)
  return path
