"""Test-wide settings: CPU only, strict rank promotion, repo root importable."""

import os
import pathlib
import sys

os.environ.setdefault('JAX_PLATFORMS', 'cpu')
os.environ.setdefault('CUDA_VISIBLE_DEVICES', '')

import jax  # pylint: disable=g-import-not-at-top

jax.config.update('jax_numpy_rank_promotion', 'raise')
# Fake CPU devices, 8 by default: meshes of 1 to 8 devices in one process.
# GATED_PIXELCNN_TEST_DEVICES=1 (or 2) runs the suite as on a host with
# fewer; the tests that need more devices are then skipped.
NUM_DEVICES = int(os.environ.get('GATED_PIXELCNN_TEST_DEVICES', '8'))
jax.config.update('jax_num_cpu_devices', NUM_DEVICES)

ROOT = pathlib.Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
  sys.path.insert(0, str(ROOT))  # for `import configs.*`


import pytest  # pylint: disable=g-import-not-at-top,g-bad-import-order


def requires_devices(n: int):
  """Skips a test that needs a mesh of ``n`` devices when there are fewer."""
  return pytest.mark.skipif(
      NUM_DEVICES < n, reason=f'needs {n} fake CPU devices, the suite runs '
      f'with {NUM_DEVICES} (GATED_PIXELCNN_TEST_DEVICES)')

from tests import fake_data  # pylint: disable=g-import-not-at-top


@pytest.fixture(scope='session')
def fake_mnist_dir(tmp_path_factory):
  """IDX files of a small MNIST-format dataset: 64 train, 37 test images."""
  return fake_data.mnist_folder(tmp_path_factory.mktemp('fake_mnist'))


@pytest.fixture(scope='session')
def fake_tfds_dir(tmp_path_factory):
  return tmp_path_factory.mktemp('tfds')


@pytest.fixture(scope='session')
def fashion_mnist_tfds_dir(tmp_path_factory):
  """The real Fashion-MNIST, prepared from the Debian package once for the
  whole run (pytest-xdist workers share it through a lock); skips without
  the package."""
  import fcntl  # pylint: disable=g-import-not-at-top
  from gated_pixelcnn import datasets  # pylint: disable=g-import-not-at-top
  if not os.path.isdir(datasets.DEBIAN_FASHION_MNIST):
    pytest.skip('needs Debian package dataset-fashion-mnist (scripts/test.sh '
                'installs it)')
  shared = tmp_path_factory.getbasetemp().parent   # common to all workers
  folder, done = shared / 'fashion_mnist_tfds', shared / 'fashion_mnist.done'
  with open(shared / 'fashion_mnist.lock', 'w') as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)
    if not done.exists():
      datasets.prepare('fashion_mnist', datasets.DEBIAN_FASHION_MNIST,
                       str(folder))
      done.touch()
  return folder


@pytest.fixture
def fake_config(fake_mnist_dir, fake_tfds_dir):
  """configs/test.py on the fake dataset (prepared on first use)."""
  from configs import test as test_config  # pylint: disable=g-import-not-at-top
  config = test_config.get_config()
  config.manual_dir = str(fake_mnist_dir)
  config.data_dir = str(fake_tfds_dir)
  return config
