"""The PixelRNN paper's Diagonal BiLSTM on Fashion-MNIST, sized for a 2-core
CPU.

7x7 mask-A convolution, 4 Diagonal BiLSTM layers of h = 32 (2h = 64
residual maps), the 256-way softmax head; RMSProp at 1e-3 with a cosine
schedule. --config.model.backward_image=False gives the layer exactly as
the paper describes it (a one-sub-pixel gap, see gated_pixelcnn.layers).
Sampling is naive.
"""

from configs import default


def get_config():
  config = default.rmsprop(default.get_config())
  model = config.model
  model.name = 'diagonal_bilstm'
  model.num_layers = 4
  model.features = 64
  model.first_kernel_size = 7
  model.backward_image = True
  config.sample.method = 'naive'
  return config
