"""The PixelRNN paper's Row LSTM on Fashion-MNIST, sized for a 2-core CPU.

7x7 mask-A convolution, 4 Row LSTM layers of h = 32 (2h = 64 residual maps,
k = 3), the 256-way softmax head; RMSProp at 1e-3 with a cosine schedule. The
paper's CIFAR-10 model had 12 layers of h = 128. Sampling is naive (the
cached sampler serves the Gated PixelCNN only).
"""

from configs import default


def get_config():
  config = default.rmsprop(default.get_config())
  model = config.model
  model.name = 'row_lstm'
  model.num_layers = 4
  model.features = 64
  model.kernel_size = 3
  model.first_kernel_size = 7
  config.sample.method = 'naive'
  return config
