"""Per-device memory of the paper's ImageNet 64x64 train step, replicated
vs FSDP (config.shard_params), from shapes and XLA's compiled program.

  python -m bench.memory                       # 32 devices, float32 + bf16
  python -m bench.memory --devices=8 --config=configs/imagenet32.py

Nothing is allocated or run: the state's bytes per device come from its
shardings, and XLA:CPU's memory analysis of the compiled SPMD step (on
--devices fake CPU devices, one micro-batch as on TPU/GPU) gives the
temporaries (activations kept for the backward pass, gradients, ...). A TPU
or GPU compiler fuses differently, so its temporaries differ; the state
bytes are exact for any backend.
"""

from __future__ import annotations

import os
import pathlib
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
if not __package__:   # run as a file, its folder would shadow installed modules
  sys.exit(f'Run it as a module from the repository root: python -m '
           f'bench.{pathlib.Path(__file__).stem} ...')
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
os.environ['JAX_PLATFORMS'] = 'cpu'

from absl import app  # pylint: disable=g-import-not-at-top
from absl import flags  # pylint: disable=g-import-not-at-top

GIB = 2.0**30

_CONFIG = flags.DEFINE_string('config', str(ROOT / 'configs/imagenet64.py'),
                              'the config file (a configs/*.py file)')
_DEVICES = flags.DEFINE_integer(
    'devices', 32, 'fake CPU devices the step is compiled for (the batch '
    'and, with FSDP, the state are split over them)')
_DTYPES = flags.DEFINE_string(
    'dtypes', 'float32,bfloat16', 'comma-separated compute dtypes '
    '(config.model.dtype) to measure')


def state_bytes_per_device(abstract_state) -> tuple[float, float]:
  """(bytes on each device, bytes of one full copy) of the train state."""
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  per_device = full = 0
  for x in jax.tree_util.tree_leaves(abstract_state):
    nbytes = int(np.prod(x.shape)) * x.dtype.itemsize
    shard = x.sharding.shard_shape(x.shape)
    per_device += int(np.prod(shard)) * x.dtype.itemsize
    full += nbytes
  return per_device, full


def measure(config_path: str, devices: int, dtype: str, shard: bool) -> dict:
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from ml_collections import config_flags  # pylint: disable=g-import-not-at-top
  from gated_pixelcnn import parallel  # pylint: disable=g-import-not-at-top
  from gated_pixelcnn import train  # pylint: disable=g-import-not-at-top

  config = config_flags.config_flags._LoadConfigModule(  # pylint: disable=protected-access
      'bench_config', config_path).get_config()
  config.model.dtype = dtype
  config.shard_params = shard
  config.microbatches = 1
  trainer = train.Trainer(config,
                          mesh=parallel.make_mesh(jax.devices()[:devices]))
  H, W, C = trainer.spec.image_shape
  batch = {'image': jax.ShapeDtypeStruct((config.batch_size, H, W, C),
                                         jnp.uint8,
                                         sharding=trainer.batch_sharding)}
  start = time.perf_counter()
  compiled = trainer.train_step.lower(trainer.abstract_state, batch).compile()
  seconds = time.perf_counter() - start
  stats = compiled.memory_analysis()
  state, full = state_bytes_per_device(trainer.abstract_state)
  return {'state': state, 'full': full, 'temp': stats.temp_size_in_bytes,
          'compile_s': seconds,
          'per_device_batch': config.batch_size // devices,
          'image_shape': (H, W, C)}


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments {argv[1:]}')
  import jax  # pylint: disable=g-import-not-at-top
  jax.config.update('jax_num_cpu_devices', _DEVICES.value)
  print(f'{_CONFIG.value}, {_DEVICES.value} devices (fake CPU), jax '
        f'{jax.__version__}')
  print('| compute dtype | params | state per device GiB (params + RMSProp) '
        '| XLA:CPU temporaries per device GiB | state + temporaries GiB '
        '| compile s |')
  print('|---|---|---|---|---|---|')
  for dtype in _DTYPES.value.split(','):
    for shard in (False, True):
      r = measure(_CONFIG.value, _DEVICES.value, dtype, shard)
      how = f'split over {_DEVICES.value} (FSDP)' if shard else 'replicated'
      print(f'| {dtype} | {how} | {r["state"] / GIB:.3f} (of '
            f'{r["full"] / GIB:.3f}) | {r["temp"] / GIB:.2f} | '
            f'{(r["state"] + r["temp"]) / GIB:.2f} | {r["compile_s"]:.0f} |')
  print(f'batch per device {r["per_device_batch"]} of {r["image_shape"]}')


if __name__ == '__main__':
  app.run(main)
