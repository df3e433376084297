"""Small generated source files in the formats the local builders read."""

import gzip
import io
import pathlib
import tarfile

import numpy as np
from PIL import Image


def images_with_structure(n, shape, seed=0):
  """Images a model can learn something from: smooth ramps plus noise."""
  rng = np.random.default_rng(seed)
  H, W, C = shape
  ramp = np.linspace(0, 200, W)[None, :, None] * np.ones((H, 1, C))
  noise = rng.integers(0, 40, (n, H, W, C))
  return (ramp[None] + noise).clip(0, 255).astype(np.uint8)


def write_idx(path, array, gzipped=True):
  array = np.asarray(array, np.uint8)
  header = bytes([0, 0, 0x08, array.ndim]) + b''.join(
      int(d).to_bytes(4, 'big') for d in array.shape)
  data = header + array.tobytes()
  path = pathlib.Path(path)
  if gzipped:
    path.write_bytes(gzip.compress(data))
  else:
    path.write_bytes(data)


def mnist_folder(folder, num_train=64, num_test=37, seed=0):
  """The four IDX files of an MNIST-format dataset with 28x28 images."""
  folder = pathlib.Path(folder)
  folder.mkdir(parents=True, exist_ok=True)
  rng = np.random.default_rng(seed)
  for prefix, n in (('train', num_train), ('t10k', num_test)):
    images = images_with_structure(n, (28, 28, 1), seed)[..., 0]
    write_idx(folder / f'{prefix}-images-idx3-ubyte.gz', images)
    write_idx(folder / f'{prefix}-labels-idx1-ubyte.gz',
              rng.integers(0, 10, n))
  return folder


def cifar10_archive(folder, per_batch=4, seed=0):
  """cifar-10-binary.tar.gz with 5 train batches and 1 test batch."""
  folder = pathlib.Path(folder)
  folder.mkdir(parents=True, exist_ok=True)
  rng = np.random.default_rng(seed)
  names = [f'data_batch_{i}.bin' for i in range(1, 6)] + ['test_batch.bin']
  with tarfile.open(folder / 'cifar-10-binary.tar.gz', 'w:gz') as tar:
    def add(name, data):
      info = tarfile.TarInfo(f'cifar-10-batches-bin/{name}')
      info.size = len(data)
      tar.addfile(info, io.BytesIO(data))
    labels = '\n'.join(['airplane', 'automobile', 'bird', 'cat', 'deer',
                        'dog', 'frog', 'horse', 'ship', 'truck']) + '\n'
    add('batches.meta.txt', labels.encode())
    for name in names:
      records = []
      for _ in range(per_batch):
        records.append(bytes([rng.integers(0, 10)]) +
                       rng.integers(0, 256, 3072, dtype=np.uint8).tobytes())
      add(name, b''.join(records))
  return folder


def downsampled_imagenet_folder(folder, size=32, num_train=6, num_valid=3):
  """train_{size}x{size}.tar and valid_... of PNG files."""
  folder = pathlib.Path(folder)
  folder.mkdir(parents=True, exist_ok=True)
  for prefix, n in (('train', num_train), ('valid', num_valid)):
    with tarfile.open(folder / f'{prefix}_{size}x{size}.tar', 'w') as tar:
      for i, image in enumerate(images_with_structure(n, (size, size, 3))):
        buf = io.BytesIO()
        Image.fromarray(image).save(buf, format='PNG')
        info = tarfile.TarInfo(f'{prefix}_{size}x{size}/{i:05d}.png')
        info.size = buf.tell()
        buf.seek(0)
        tar.addfile(info, buf)
  return folder
