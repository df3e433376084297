"""PixelCNN auto-encoder on Fashion-MNIST, and its MSE baseline.

  --config=configs/fashion_mnist_autoencoder.py        the PixelCNN auto-encoder
  --config=configs/fashion_mnist_autoencoder.py:mse    the MSE baseline

A convolutional encoder maps x to a bottleneck h of model.bottleneck dims (10
or 100 in the paper); a Gated PixelCNN decodes p(x | h), conditioned globally
(model.conditioning = 'global') or spatially through m(h) ('spatial'); both
trained end to end on the NLL. The baseline has the same encoder and a
deconvolutional decoder (m with C outputs) trained on the mean squared error.
--mode=reconstruct (with --config.sample.mse_workdir=BASELINE_DIR) writes the
paper's figure: image | MSE reconstruction | PixelCNN samples given h.
"""

import ml_collections

from configs import default


def get_config(variant: str = 'pixelcnn'):
  if variant not in ('pixelcnn', 'mse'):
    raise ValueError(f"variant must be 'pixelcnn' or 'mse', got {variant!r}.")
  config = default.rmsprop(default.get_config())
  if variant == 'pixelcnn':
    # 'global': h added in every layer; 'spatial': s = m(h) through 1x1s.
    model = default.decoder_config('pixelcnn_autoencoder',
                                   conditioning='global', spatial_features=16)
  else:
    model = ml_collections.ConfigDict({'name': 'mse_autoencoder',
                                       'num_channels': 1})
    config.sample.during_training = False
  model.bottleneck = 10
  model.encoder_features = 32
  model.spatial_hidden = 64       # width of m(h) / the MSE decoder
  config.model = model
  config.sample.num_samples = 10  # test images, one per class
  config.sample.num_completions = 4
  return config
