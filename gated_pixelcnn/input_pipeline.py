"""Input pipeline: TFDS random-access sources, deterministic stateless batches.

Each process reads its own part of a split (`tfds.split_for_jax_process`)
through a TFDS data source (array_record random access). The training batch
at step ``s`` is a pure function of (seed, process part, s): epoch ``e`` of a
process's part is a permutation drawn from ``(seed, e)``, and the stream of
examples is cut into local batches in order. The data position is therefore
the step itself, and a resumed run sees exactly the batches an uninterrupted
run would. Global batches are assembled from the local ones with
`jax.make_array_from_process_local_data` in train.py.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import math
import os
from typing import Iterator

from absl import logging
import jax
from jax.experimental import multihost_utils
import numpy as np
import tensorflow_datasets as tfds

from gated_pixelcnn import datasets

Batch = dict[str, np.ndarray]


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
  """What the rest of the code needs to know about a dataset."""
  train_split: str
  eval_split: str
  image_shape: tuple[int, int, int]
  num_classes: int          # 0: no labels
  # Where the local-files builder looks by default (None: no default).
  default_manual_dir: str | None = None
  how_to_get: str = ''


SPECS = {
    'fashion_mnist': DatasetSpec(
        'train', 'test', (28, 28, 1), 10, datasets.DEBIAN_FASHION_MNIST,
        'sudo apt-get install dataset-fashion-mnist'),
    'mnist': DatasetSpec(
        'train', 'test', (28, 28, 1), 10, None,
        'python -m gated_pixelcnn.prepare_data --dataset=mnist '
        '--manual_dir=DIR_WITH_IDX_FILES'),
    'cifar10': DatasetSpec(
        'train', 'test', (32, 32, 3), 10, None,
        'python -m gated_pixelcnn.prepare_data --dataset=cifar10 '
        '--manual_dir=DIR_WITH_cifar-10-binary.tar.gz'),
    'downsampled_imagenet/32x32': DatasetSpec(
        'train', 'validation', (32, 32, 3), 0, None,
        'python -m gated_pixelcnn.prepare_data '
        '--dataset=downsampled_imagenet/32x32 '
        '--manual_dir=DIR_WITH_train_32x32.tar_AND_valid_32x32.tar'),
    'downsampled_imagenet/64x64': DatasetSpec(
        'train', 'validation', (64, 64, 3), 0, None,
        'python -m gated_pixelcnn.prepare_data '
        '--dataset=downsampled_imagenet/64x64 '
        '--manual_dir=DIR_WITH_train_64x64.tar_AND_valid_64x64.tar'),
}


def get_spec(dataset: str) -> DatasetSpec:
  if dataset not in SPECS:
    raise datasets.DatasetError(
        f'unknown dataset {dataset!r}; choose one of {sorted(SPECS)}.')
  return SPECS[dataset]


def get_builder(config) -> tfds.core.DatasetBuilder:
  """The prepared TFDS builder of ``config.dataset``; prepares it if it can.

  Never downloads unless ``config.download`` is set. If the dataset is not in
  ``config.data_dir`` and its local files are where the local builder looks
  (``config.manual_dir``, or Debian's folder for Fashion-MNIST), it is
  prepared from them; otherwise the error names the command that fixes it.
  """
  spec = get_spec(config.dataset)
  data_dir = config.get('data_dir') or None
  builder = datasets.local_builder(config.dataset, data_dir)
  if builder.is_prepared():
    return builder
  if config.get('download', False):
    builder = tfds.builder(config.dataset, data_dir=data_dir)
    builder.download_and_prepare(file_format=datasets.FILE_FORMAT)
    return builder
  manual_dir = config.get('manual_dir') or spec.default_manual_dir
  if manual_dir and os.path.isdir(manual_dir):
    # One process writes the (shared) data_dir; the others wait for it.
    if jax.process_index() == 0:
      datasets.prepare(config.dataset, manual_dir, data_dir)
    multihost_utils.sync_global_devices(f'prepared {config.dataset}')
    return datasets.local_builder(config.dataset, data_dir)
  raise datasets.DatasetError(
      f'dataset {config.dataset!r} is not prepared in {builder.data_dir} and '
      f'no local files were found (manual_dir={manual_dir!r}). Fix: '
      f'{spec.how_to_get}; or set --config.manual_dir=DIR to a folder with '
      f'the files; or --config.download=True where there is internet.')


def open_split(builder: tfds.core.DatasetBuilder, split: str):
  """This process's part of ``split`` as a random-access data source."""
  try:
    return builder.as_data_source(split=tfds.split_for_jax_process(split))
  except Exception as e:  # TFDS raises several types for the same problem.
    raise datasets.DatasetError(
        f'cannot open {builder.name} {split} in {builder.data_dir} for random '
        f'access ({e}). The input pipeline needs the array_record format: '
        f'prepare the dataset again in an empty --config.data_dir.') from e


def _to_batch(examples: list[dict], with_labels: bool) -> Batch:
  batch = {'image': np.stack([ex['image'] for ex in examples])}
  if with_labels:
    batch['label'] = np.asarray([ex['label'] for ex in examples], np.int32)
  return batch


class TrainBatches:
  """Local training batches as a pure function of the step (see module doc)."""

  def __init__(self, source, local_batch_size: int, seed: int,
               with_labels: bool):
    if len(source) < local_batch_size:
      raise datasets.DatasetError(
          f'this process has {len(source)} training examples, fewer than its '
          f'batch of {local_batch_size}.')
    self._source = source
    self._batch = local_batch_size
    self._seed = seed
    self._with_labels = with_labels
    self._epoch, self._perm = -1, None

  def _permutation(self, epoch: int) -> np.ndarray:
    if epoch != self._epoch:
      rng = np.random.default_rng([self._seed, epoch])
      self._epoch, self._perm = epoch, rng.permutation(len(self._source))
    return self._perm

  def indices(self, step: int) -> np.ndarray:
    """Indices into this process's part for the local batch of ``step``."""
    n = len(self._source)
    out = []
    for k in range(step * self._batch, (step + 1) * self._batch):
      out.append(self._permutation(k // n)[k % n])
    return np.asarray(out)

  def batch(self, step: int) -> Batch:
    examples = self._source.__getitems__(self.indices(step).tolist())
    return _to_batch(examples, self._with_labels)

  def iterate(self, start_step: int, prefetch: int = 2) -> Iterator[Batch]:
    """Batches of start_step, start_step + 1, ..., read ahead in a thread."""
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
      futures = [pool.submit(self.batch, start_step + i)
                 for i in range(prefetch)]
      step = start_step + prefetch
      while True:
        yield futures.pop(0).result()
        futures.append(pool.submit(self.batch, step))
        step += 1


def num_eval_batches(num_examples: int, local_batch_size: int) -> int:
  """Eval steps every process runs: enough for the largest process part."""
  largest_part = math.ceil(num_examples / jax.process_count())
  return max(1, math.ceil(largest_part / local_batch_size))


def eval_batches(source, local_batch_size: int, num_batches: int,
                 with_labels: bool, image_shape: tuple[int, int, int]
                 ) -> Iterator[Batch]:
  """The whole part in order, the last batches padded; 'mask' marks real ones."""
  n = len(source)
  for k in range(num_batches):
    idx = np.arange(k * local_batch_size, (k + 1) * local_batch_size)
    mask = idx < n
    if n:
      batch = _to_batch(source.__getitems__(np.minimum(idx, n - 1).tolist()),
                        with_labels)
    else:  # a process whose part is empty still joins every step
      batch = {'image': np.zeros((local_batch_size, *image_shape), np.uint8)}
      if with_labels:
        batch['label'] = np.zeros((local_batch_size,), np.int32)
    batch['mask'] = mask
    yield batch
