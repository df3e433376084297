"""Default: an unconditional Gated PixelCNN on Fashion-MNIST (28x28x1).

Sized to train usefully on a 2-core CPU in about an hour; the paper setups
are in imagenet64.py, imagenet32.py and cifar10.py.
"""

import ml_collections


def get_model_config() -> ml_collections.ConfigDict:
  """Architecture of the default model (`gated_pixelcnn.models`)."""
  model = ml_collections.ConfigDict()
  # 'gated_pixelcnn' or 'pixelcnn' (the PixelRNN paper's baseline).
  model.name = 'gated_pixelcnn'
  model.num_layers = 8
  # Hidden units p per stack; a multiple of num_channels (colour groups).
  model.features = 48
  model.kernel_size = 5
  # The first layer plays mask A's role and, as in PixelCNN, sees a 7x7 window.
  model.first_kernel_size = 7
  model.num_channels = 1
  # > 0 makes the model class-conditional on the dataset labels.
  model.num_classes = 0
  # Width of the ReLU-1x1 output head before the 256-way logits.
  model.head_features = 256
  # Compute dtype: 'float32', or 'bfloat16' on TPU/GPU.
  model.dtype = 'float32'
  return model


def get_config() -> ml_collections.ConfigDict:
  """Fashion-MNIST, read offline from Debian's dataset-fashion-mnist."""
  config = ml_collections.ConfigDict()
  config.dataset = 'fashion_mnist'
  config.model = get_model_config()

  # Global batch size (split over all devices).
  config.batch_size = 32
  config.num_train_steps = 20_000
  config.optimizer = 'rmsprop'
  config.learning_rate = 1e-3
  config.log_every_steps = 100
  config.eval_every_steps = 2_000
  config.checkpoint_every_steps = 1_000
  config.seed = 0

  config.sample = ml_collections.ConfigDict()
  config.sample.num_samples = 16
  # 'cached' (fast) or 'naive' (full recompute per sub-pixel, the reference).
  config.sample.method = 'cached'
  config.sample.temperature = 1.0
  return config
