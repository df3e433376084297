"""Offline TFDS builders: the stock datasets, prepared from local files.

Each builder here is a TFDS builder of the same name, version and features as
the stock one, whose `_split_generators` reads files from the TFDS
``manual_dir`` instead of downloading. After `prepare`, the ordinary
``tfds.builder(name, data_dir=...)`` / ``tfds.data_source`` find the data, with
no download and no checksum (Debian recompressed the Fashion-MNIST files, so
the stock checksums would fail anyway).

* ``fashion_mnist`` and ``mnist``: the four IDX files (gzipped or not),
  e.g. Debian's ``dataset-fashion-mnist`` in /usr/share/datasets/fashion-mnist.
* ``cifar10``: ``cifar-10-binary.tar.gz`` or its extracted
  ``cifar-10-batches-bin/`` folder.
* ``downsampled_imagenet/32x32`` and ``/64x64``: ``train_32x32.tar`` and
  ``valid_32x32.tar`` (or the 64x64 pair) of PNG files; the official download
  address is dead, so a manual copy is the only route.

Data is written in the array_record format, which gives the random access the
input pipeline relies on for exact, stateless resumption.
"""

from __future__ import annotations

import gzip
import os
import pathlib
import zlib

from absl import logging
import numpy as np
import tensorflow_datasets as tfds
from tensorflow_datasets.datasets.downsampled_imagenet import downsampled_imagenet_dataset_builder as dsi
from tensorflow_datasets.image_classification import cifar
from tensorflow_datasets.image_classification import mnist

from gated_pixelcnn import errors

FILE_FORMAT = 'array_record'
DEBIAN_FASHION_MNIST = '/usr/share/datasets/fashion-mnist'


class DatasetError(errors.UserError, ValueError):
  """A dataset is missing, corrupt or unusable; the message says how to fix it."""


def _open_maybe_gzip(path: pathlib.Path):
  with open(path, 'rb') as f:
    gzipped = f.read(2) == b'\x1f\x8b'
  return gzip.open(path, 'rb') if gzipped else open(path, 'rb')


def read_idx(path: os.PathLike, expected_ndim: int) -> np.ndarray:
  """Reads an IDX file (gzipped or not) of unsigned bytes, checking its header."""
  path = pathlib.Path(path)
  try:
    with _open_maybe_gzip(path) as f:
      data = f.read()
  except (OSError, EOFError, zlib.error) as e:
    raise DatasetError(f'cannot read IDX file {path} ({type(e).__name__}: '
                       f'{e}): the file is damaged; copy or download it '
                       'again.') from e
  if len(data) < 4 or data[:2] != b'\0\0' or data[2] != 0x08:
    raise DatasetError(f'{path} is not an IDX file of unsigned bytes (bad '
                       f'magic number {data[:4]!r}).')
  ndim = data[3]
  if ndim != expected_ndim:
    raise DatasetError(f'{path} has {ndim} dimensions, expected '
                       f'{expected_ndim}.')
  header = 4 + 4 * ndim
  shape = tuple(int.from_bytes(data[4 + 4 * d: 8 + 4 * d], 'big')
                for d in range(ndim))
  if len(data) != header + int(np.prod(shape)):
    raise DatasetError(f'{path} is truncated or corrupt: header says shape '
                       f'{shape}, file has {len(data) - header} data bytes.')
  return np.frombuffer(data, np.uint8, offset=header).reshape(shape)


def find_file(folder: pathlib.Path, stem: str) -> pathlib.Path:
  """``stem``.gz or ``stem`` in ``folder``."""
  for name in (stem + '.gz', stem):
    if (folder / name).exists():
      return folder / name
  raise DatasetError(f'{stem}(.gz) not found in {folder}.')


class _LocalIdxMixin:
  """`_split_generators` for the MNIST family from IDX files in manual_dir."""

  def _split_generators(self, dl_manager):
    folder = pathlib.Path(dl_manager.manual_dir)
    splits = {}
    for split, prefix in (('train', 'train'), ('test', 't10k')):
      images = read_idx(find_file(folder, f'{prefix}-images-idx3-ubyte'), 3)
      labels = read_idx(find_file(folder, f'{prefix}-labels-idx1-ubyte'), 1)
      if len(images) != len(labels):
        raise DatasetError(f'{folder}: {len(images)} {split} images but '
                           f'{len(labels)} labels.')
      splits[split] = self._local_examples(images, labels)
    return splits

  def _local_examples(self, images, labels):
    for index, (image, label) in enumerate(zip(images, labels)):
      yield index, {'image': image[..., None], 'label': int(label)}


class LocalFashionMNIST(_LocalIdxMixin, mnist.FashionMNIST,
                        skip_registration=True):
  """Stock `fashion_mnist`, prepared from local IDX files."""
  name = 'fashion_mnist'
  MANUAL_DOWNLOAD_INSTRUCTIONS = (
      'Debian/Ubuntu: `apt-get install dataset-fashion-mnist` puts the files '
      f'in {DEBIAN_FASHION_MNIST}. Elsewhere: put train-images-idx3-ubyte.gz, '
      'train-labels-idx1-ubyte.gz, t10k-images-idx3-ubyte.gz and '
      't10k-labels-idx1-ubyte.gz in one folder.')


class LocalMNIST(_LocalIdxMixin, mnist.MNIST, skip_registration=True):
  """Stock `mnist`, prepared from local IDX files."""
  name = 'mnist'
  MANUAL_DOWNLOAD_INSTRUCTIONS = (
      'Put train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, '
      't10k-images-idx3-ubyte.gz and t10k-labels-idx1-ubyte.gz in one folder.')


class LocalCifar10(cifar.Cifar10, skip_registration=True):
  """Stock `cifar10`, prepared from the local binary-version archive."""
  name = 'cifar10'
  MANUAL_DOWNLOAD_INSTRUCTIONS = (
      'Put cifar-10-binary.tar.gz (the "binary version" from the CIFAR '
      'homepage), or its extracted cifar-10-batches-bin/ folder, in one '
      'folder.')

  def _split_generators(self, dl_manager):
    folder = pathlib.Path(dl_manager.manual_dir)
    info = self._cifar_info
    root = folder / info.prefix
    if not root.is_dir():
      archive = folder / 'cifar-10-binary.tar.gz'
      if not archive.exists():
        raise DatasetError(f'neither {root} nor {archive} exists.')
      root = pathlib.Path(dl_manager.extract(archive)) / info.prefix
    names = (root / info.label_files[0]).read_text().split('\n')
    self.info.features['label'].names = [n for n in names if n]
    for name in info.train_files + info.test_files:
      path = root / name
      if not path.exists() or path.stat().st_size % (1 + 32 * 32 * 3):
        raise DatasetError(f'{path} is missing or not a CIFAR-10 batch file.')
    return {
        'train': self._generate_examples(
            'train_', [str(root / f) for f in info.train_files]),
        'test': self._generate_examples(
            'test_', [str(root / f) for f in info.test_files]),
    }


class ManualDownsampledImagenet(dsi.Builder, skip_registration=True):
  """Stock `downsampled_imagenet`, prepared from the tar files in manual_dir."""
  name = 'downsampled_imagenet'
  MANUAL_DOWNLOAD_INSTRUCTIONS = (
      'Put train_32x32.tar and valid_32x32.tar (or train_64x64.tar and '
      'valid_64x64.tar) of the downsampled ImageNet in one folder.')

  def _split_generators(self, dl_manager):
    folder = pathlib.Path(dl_manager.manual_dir)
    size = self.builder_config.name
    splits = {}
    for split, prefix in (('train', 'train'), ('validation', 'valid')):
      path = folder / f'{prefix}_{size}.tar'
      if not path.exists():
        raise DatasetError(f'{path} not found.')
      splits[split] = self._generate_examples(dl_manager.iter_archive(path))
    return splits


BUILDERS = {
    'fashion_mnist': LocalFashionMNIST,
    'mnist': LocalMNIST,
    'cifar10': LocalCifar10,
    'downsampled_imagenet': ManualDownsampledImagenet,
}


def local_builder(dataset: str, data_dir: str | None) -> tfds.core.DatasetBuilder:
  """The local-files builder of ``dataset`` (e.g. 'downsampled_imagenet/32x32')."""
  name, _, config = dataset.partition('/')
  if name not in BUILDERS:
    raise DatasetError(f'no local-files builder for {dataset!r}; known: '
                       f'{sorted(BUILDERS)}.')
  kwargs = {'config': config} if config else {}
  return BUILDERS[name](data_dir=data_dir, file_format=FILE_FORMAT, **kwargs)


def prepare(dataset: str, manual_dir: str, data_dir: str | None = None
            ) -> tfds.core.DatasetBuilder:
  """Writes ``dataset`` into ``data_dir`` from the files in ``manual_dir``."""
  if not os.path.isdir(manual_dir):
    raise DatasetError(f'{manual_dir} is not a folder. {_instructions(dataset)}')
  builder = local_builder(dataset, data_dir)
  logging.info('Preparing %s in %s from %s.', dataset, builder.data_dir,
               manual_dir)
  builder.download_and_prepare(
      download_config=tfds.download.DownloadConfig(
          manual_dir=manual_dir,
          download_mode=tfds.download.GenerateMode.REUSE_DATASET_IF_EXISTS))
  return builder


def _instructions(dataset: str) -> str:
  cls = BUILDERS.get(dataset.partition('/')[0])
  return cls.MANUAL_DOWNLOAD_INSTRUCTIONS if cls else ''
