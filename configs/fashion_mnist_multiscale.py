"""Multi-scale generation (the PixelRNN paper's model) with Gated PixelCNNs.

  --config=configs/fashion_mnist_multiscale.py:low   14x14 subsampled images
  --config=configs/fashion_mnist_multiscale.py       28x28 given the 14x14

The low-resolution model is an unconditional Gated PixelCNN of the pixels
(2i, 2j). The full-size model is conditioned on that small image through
spatial conditioning s = m(small image) (a deconvolutional network) and
models the other three quarters of the pixels; the given ones are left out
of its NLL, so bits/dim_total = low-resolution nats + conditional nats over
all 784 dims (reported as eval/bits_per_dim_total). --mode=sample runs both
models in sequence. Pass the low-resolution run's folder as
--config.conditioning.workdir.
"""

from configs import default

FACTOR = 2


def get_config(variant: str = 'high'):
  if variant not in ('low', 'high'):
    raise ValueError(f"variant must be 'low' or 'high', got {variant!r}.")
  config = default.rmsprop(default.get_config())
  if variant == 'low':
    config.subsample = FACTOR
    return config
  # s = m(14x14 image): its 16 maps enter every layer through 1x1s.
  config.model = default.decoder_config(
      'conditional_pixelcnn', conditioning='spatial', spatial_features=16,
      spatial_hidden=64)
  config.conditioning.source = 'subsample'
  config.sample.num_samples = 8    # low-resolution samples (rows)
  config.sample.num_completions = 4
  return config
