"""A tiny configuration for tests: a 2-layer, 8-wide model, a few steps."""

from configs import default


def get_config():
  config = default.get_config()
  model = config.model
  model.num_layers = 2
  model.features = 8
  model.kernel_size = 3
  model.first_kernel_size = 3
  model.head_features = 16
  config.batch_size = 8
  config.num_train_steps = 4
  config.lr_schedule = 'constant'
  config.warmup_steps = 0
  config.log_every_steps = 1
  config.eval_every_steps = 2
  config.checkpoint_every_steps = 2
  config.sample.num_samples = 2
  config.sample.during_training = False
  # Tiny models: timing the convolutions would cost more than it saves.
  config.conv_impl = 'conv'
  return config
