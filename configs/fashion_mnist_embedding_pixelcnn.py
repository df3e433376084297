"""A Gated PixelCNN conditioned on embeddings (the paper's portrait model).

h is the frozen output of a trained embedding network for the training image
(train it first with configs/fashion_mnist_embedding.py, then pass its folder
as --config.conditioning.workdir). --mode=embed_sample draws new images from
the embedding of unseen test images; --mode=interpolate decodes the line
between two test images' embeddings.
"""

from configs import default


def get_config():
  config = default.rmsprop(default.get_config())
  config.model = default.decoder_config(
      'conditional_pixelcnn', conditioning='global', spatial_features=16,
      spatial_hidden=64)
  config.conditioning.source = 'embedding'
  config.sample.num_samples = 10   # test images, one per class
  config.sample.num_completions = 4
  return config
