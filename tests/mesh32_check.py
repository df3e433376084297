"""Subprocess of tests/test_distributed.py: the paper's ImageNet 64x64 config,
shrunk, on a mesh of 32 fake CPU devices vs one device.

Runs in its own process because the device count is fixed when JAX starts
(the test process has 8). Prints one JSON line with the results.

  python -m tests.mesh32_check
"""

import json
import os
import sys

os.environ['JAX_PLATFORMS'] = 'cpu'

import jax  # pylint: disable=g-import-not-at-top

jax.config.update('jax_num_cpu_devices', 32)

import numpy as np  # pylint: disable=g-import-not-at-top

from configs import imagenet64  # pylint: disable=g-import-not-at-top
from gated_pixelcnn import parallel  # pylint: disable=g-import-not-at-top
from gated_pixelcnn import train  # pylint: disable=g-import-not-at-top

NUM_STEPS = 2


def shrunk_config():
  """configs/imagenet64.py (batch 128, RMSProp, 64x64x3 data) with a 2-layer,
  12-wide model on the images subsampled 4x (16x16)."""
  config = imagenet64.get_config()
  config.model.num_layers = 2
  config.model.features = 12
  config.model.head_features = 24
  config.subsample = 4
  config.microbatches = 1
  config.warmup_steps = 0
  return config


def run(config, devices, batches):
  trainer = train.Trainer(config, mesh=parallel.make_mesh(devices))
  state = trainer.init(jax.random.PRNGKey(0))
  init = [np.asarray(x) for x in jax.tree_util.tree_leaves(state.params)]
  losses, norms = [], []
  for local in batches:
    batch = trainer.global_batch(local)
    shards = {len(s.data) for s in batch['image'].addressable_shards}
    state, metrics = trainer.train_step(state, batch)
    losses.append(float(metrics['bits_per_dim']))
    norms.append(float(metrics['grad_norm']))
  leaves = [np.asarray(x) for x in jax.tree_util.tree_leaves(state.params)]
  updates = [a - b for a, b in zip(leaves, init)]
  return {'mesh': trainer.mesh.size, 'image_shape': trainer.spec.image_shape,
          'rows_per_device': sorted(shards), 'losses': losses,
          'grad_norms': norms}, leaves, updates


def main():
  config = shrunk_config()
  rng = np.random.default_rng(0)
  batches = [{'image': rng.integers(0, 256, (config.batch_size, 64, 64, 3),
                                    dtype=np.uint8)}
             for _ in range(NUM_STEPS)]
  many, params_many, updates_many = run(config, jax.devices(), batches)
  one, params_one, updates_one = run(config, jax.devices()[:1], batches)

  def max_rel_diff(xs, ys):
    return max(float(np.max(np.abs(a - b)) / (np.max(np.abs(b)) + 1e-30))
               for a, b in zip(xs, ys))

  print(json.dumps({'devices': jax.device_count(), 'many': many, 'one': one,
                    'max_param_rel_diff': max_rel_diff(params_many, params_one),
                    'max_update_rel_diff': max_rel_diff(updates_many,
                                                        updates_one),
                    'num_param_arrays': len(params_one)}))
  return 0


if __name__ == '__main__':
  sys.exit(main())
