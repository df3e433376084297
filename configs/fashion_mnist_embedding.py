"""The embedding network for embedding conditioning, on Fashion-MNIST.

A convolutional network to unit-norm 32-d embeddings trained with a
triplet loss (all triplets of the batch) on the training labels (the paper's face network,
at this scale). Its workdir is what configs/fashion_mnist_embedding_pixelcnn.py
conditions on (--config.conditioning.workdir). --mode=eval reports the test
split's triplet loss.
"""

import ml_collections

from configs import default


def get_config():
  config = default.get_config()
  model = ml_collections.ConfigDict()
  model.name = 'embedding_net'
  model.num_channels = 1
  model.features = 32
  model.embedding_dim = 32
  config.model = model
  config.batch_size = 128         # about 13 images per class
  config.eval_batch_size = 256
  config.num_train_steps = 1_500
  config.optimizer = 'adam'
  config.learning_rate = 1e-3
  config.eval_every_steps = 500
  # The triplets are mined in the whole batch: never split it (0 means 1).
  config.microbatches = 1
  config.sample.during_training = False
  return config
