"""The paper's ImageNet 64x64 setup (van den Oord et al. 2016, Table 2).

20 gated layers of 384 hidden units with 5x5 filters, RMSProp, 200K
synchronous updates with a total batch of 128 (32 GPUs in the paper).
Paper: 3.57 bits/dim test (3.48 train).
"""

from configs import default


def get_config():
  config = default.get_config()
  config.dataset = 'downsampled_imagenet/64x64'
  model = config.model
  model.num_layers = 20
  model.features = 384
  # The paper: "filter size of 5x5" in every layer, the first included.
  model.kernel_size = 5
  model.first_kernel_size = 5
  model.num_channels = 3
  # Not given in the paper; a multiple of 3 so the head keeps colour groups.
  model.head_features = 768
  config.batch_size = 128
  config.num_train_steps = 200_000
  config.optimizer = 'rmsprop'
  config.learning_rate = 1e-4
  config.log_every_steps = 500
  config.eval_every_steps = 10_000
  config.checkpoint_every_steps = 2_000
  return config
