"""Helpers shared by the tests that train, restore and run main.py."""

import glob
import os
import pathlib
import sys

import jax
import numpy as np
import tensorflow as tf

from gated_pixelcnn import checkpointing
from gated_pixelcnn import train

ROOT = pathlib.Path(__file__).resolve().parents[1]


def subprocess_env(**extra) -> dict[str, str]:
  """The environment for a child process: CPU only, and none of the
  variables that would change its device count from what main.py picks."""
  env = {**os.environ, 'JAX_PLATFORMS': 'cpu', 'CUDA_VISIBLE_DEVICES': '',
         **extra}
  for name in ('XLA_FLAGS', 'GATED_PIXELCNN_TEST_DEVICES'):
    env.pop(name, None)
  return env


def main_command(workdir, config, *overrides) -> list[str]:
  """`python -m gated_pixelcnn.main` on configs/test.py with the data of
  ``config``."""
  return [sys.executable, '-m', 'gated_pixelcnn.main',
          '--config=configs/test.py', f'--workdir={workdir}',
          f'--config.manual_dir={config.manual_dir}',
          f'--config.data_dir={config.data_dir}', *overrides]


def restore(config, workdir):
  """(state, meta) of the newest checkpoint in ``workdir``."""
  trainer = train.Trainer(config)
  manager = checkpointing.create_manager(workdir, config.max_to_keep)
  try:
    return checkpointing.restore_latest(manager, workdir,
                                        trainer.abstract_state)
  finally:
    manager.close()


def corrupt(checkpoint_step_dir) -> None:
  """Replaces every data file of a checkpoint's state by garbage."""
  for path in pathlib.Path(checkpoint_step_dir).rglob('*'):
    if path.is_file() and 'state' in path.parts:
      path.write_bytes(b'garbage')


def tags(workdir) -> set[str]:
  """The TensorBoard tags written to ``workdir``."""
  found = set()
  for path in glob.glob(os.path.join(workdir, 'events.out.tfevents.*')):
    for event in tf.compat.v1.train.summary_iterator(path):
      found.update(v.tag for v in event.summary.value)
  return found


def leaves(tree) -> list[np.ndarray]:
  return [np.asarray(x) for x in jax.tree_util.tree_leaves(tree)]
