"""The PixelRNN paper's PixelCNN baseline on Fashion-MNIST, sized for a
2-core CPU: a 7x7 mask-A convolution, 8 residual blocks of 2h = 96 maps with
3x3 mask-B convolutions, the 256-way softmax head. It has the blind spot the
Gated PixelCNN removes (tests/test_causality.py). Sampling is naive.
"""

from configs import default


def get_config():
  config = default.rmsprop(default.get_config())
  model = config.model
  model.name = 'pixelcnn'
  model.num_layers = 8
  model.features = 96
  model.kernel_size = 3
  model.first_kernel_size = 7
  config.sample.method = 'naive'
  return config
