"""Class-conditional Gated PixelCNN on Fashion-MNIST.

The one-hot label is the global vector h, added through a learned map to
every layer of both stacks (the paper's class-conditional ImageNet model).
--mode=sample writes one row per class.
"""

from configs import default


def get_config():
  config = default.rmsprop(default.get_config())
  config.model.num_classes = 10
  config.sample.num_samples = 60   # 10 classes x 6
  return config
