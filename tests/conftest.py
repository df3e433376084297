"""Test-wide settings: CPU only, strict rank promotion, repo root importable."""

import os
import pathlib
import sys

os.environ.setdefault('JAX_PLATFORMS', 'cpu')
os.environ.setdefault('CUDA_VISIBLE_DEVICES', '')

import jax  # pylint: disable=g-import-not-at-top

jax.config.update('jax_numpy_rank_promotion', 'raise')
# Eight fake CPU devices: meshes of 1 to 8 devices in one process.
jax.config.update('jax_num_cpu_devices', 8)

ROOT = pathlib.Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
  sys.path.insert(0, str(ROOT))  # for `import configs.*`


import pytest  # pylint: disable=g-import-not-at-top,g-bad-import-order

from tests import fake_data  # pylint: disable=g-import-not-at-top


@pytest.fixture(scope='session')
def fake_mnist_dir(tmp_path_factory):
  """IDX files of a small MNIST-format dataset: 64 train, 37 test images."""
  return fake_data.mnist_folder(tmp_path_factory.mktemp('fake_mnist'))


@pytest.fixture(scope='session')
def fake_tfds_dir(tmp_path_factory):
  return tmp_path_factory.mktemp('tfds')


@pytest.fixture
def fake_config(fake_mnist_dir, fake_tfds_dir):
  """configs/test.py on the fake dataset (prepared on first use)."""
  from configs import test as test_config  # pylint: disable=g-import-not-at-top
  config = test_config.get_config()
  config.manual_dir = str(fake_mnist_dir)
  config.data_dir = str(fake_tfds_dir)
  return config
