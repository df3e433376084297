"""Image models by name: the Gated PixelCNN and PixelCNN (gated.py), the Row
LSTM and Diagonal BiLSTM baselines (pixelrnn.py), conditional PixelCNNs and
the networks that make their conditioning (conditional.py).

Every autoregressive model maps integer images ``[B, H, W, C]`` in 0..255 to
float32 logits ``[B, H, W, C, 256]``; the logits at (i, j, c) depend only
on sub-pixels before (i, j, c) in raster-then-channel order
(tests/test_causality.py proves it bit for bit). Conditioning inputs (labels,
a vector h, a low-resolution image, an encoder's input) may depend on
anything; the image path may not.

Each model class declares what it can do (model_parts.Capabilities): its
training ``objective`` ('likelihood', 'mse' or 'triplet'), whether the
cached sampler and the codec run it, and what conditions it.
"""

from __future__ import annotations

import dataclasses

import flax.linen as nn

from gated_pixelcnn.conditional import ConditionalPixelCNN
from gated_pixelcnn.conditional import EmbeddingNet
from gated_pixelcnn.conditional import MSEAutoEncoder
from gated_pixelcnn.conditional import PixelCNNAutoEncoder
from gated_pixelcnn.gated import GatedPixelCNN
from gated_pixelcnn.gated import PixelCNN
from gated_pixelcnn.pixelrnn import DiagonalBiLSTM
from gated_pixelcnn.pixelrnn import RowLSTM

MODELS = {'gated_pixelcnn': GatedPixelCNN, 'pixelcnn': PixelCNN,
          'row_lstm': RowLSTM, 'diagonal_bilstm': DiagonalBiLSTM,
          'conditional_pixelcnn': ConditionalPixelCNN,
          'pixelcnn_autoencoder': PixelCNNAutoEncoder,
          'mse_autoencoder': MSEAutoEncoder,
          'embedding_net': EmbeddingNet}


def create_model(model_config, conv_impl: str | None = None) -> nn.Module:
  """Builds the flax Module named by ``model_config.name`` from its fields.

  ``conv_impl``: how the convolutions compute (layers.CONV_IMPLS; the
  resolved ``config.conv_impl``), for the models that take it; speed only.
  """
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
  if conv_impl is not None and 'conv_impl' in known:
    cfg['conv_impl'] = conv_impl
  return cls(**cfg)
