"""The paper's CIFAR-10 setup: the ImageNet model on CIFAR-10 (32x32x3).

Paper: 3.03 bits/dim test (2.90 train).
"""

from configs import imagenet64


def get_config():
  config = imagenet64.get_config()
  config.dataset = 'cifar10'
  return config
