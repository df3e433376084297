"""Input pipeline: TFDS random-access sources, deterministic stateless batches.

Training reads the whole train split through a TFDS data source (array_record
random access). The global batch at step ``s`` is a pure function of
(seed, s): epoch ``e`` is a permutation of the split drawn from ``(seed, e)``
and the stream of examples is cut into global batches in order; process
``p`` of ``P`` reads only rows ``[p B/P, (p+1) B/P)`` of each. So the data
position is the step itself (a resumed run sees exactly the batches an
uninterrupted run would), and the batches do not depend on how many
processes share them: a run resumed on a different number of hosts, or one
process with 8 devices vs two with 4 each, trains on the same data. The
global arrays are assembled from the local rows with
`jax.make_array_from_process_local_data` in train.py. Evaluation sums over
a split, so there each process reads its own part
(`tfds.split_for_jax_process`).
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import functools
import math
import os
from typing import Iterator

import jax
from jax.experimental import multihost_utils
import numpy as np
import tensorflow_datasets as tfds

from gated_pixelcnn import datasets
from gated_pixelcnn import errors

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
  if data_dir and os.path.exists(data_dir) and not os.path.isdir(data_dir):
    raise datasets.DatasetError(
        f'data_dir {data_dir} is a file, not a folder; set '
        '--config.data_dir to a folder for prepared datasets.')
  builder = datasets.local_builder(config.dataset, data_dir)
  if _prepared_on_every_process(builder, config.dataset):
    return builder
  manual_dir = config.get('manual_dir') or spec.default_manual_dir
  if config.get('download', False):
    builder = tfds.builder(config.dataset, data_dir=data_dir)
    prepare = functools.partial(builder.download_and_prepare,
                                file_format=datasets.FILE_FORMAT)
  elif manual_dir and os.path.isdir(manual_dir):
    prepare = functools.partial(datasets.prepare, config.dataset, manual_dir,
                                data_dir)
  else:
    prepare = None
  if prepare is not None:
    # One process writes the data_dir; the others wait, then must see it.
    if jax.process_index() == 0:
      prepare()
    multihost_utils.sync_global_devices(f'prepared {config.dataset}')
    builder = (tfds.builder(config.dataset, data_dir=data_dir)
               if config.get('download', False) else
               datasets.local_builder(config.dataset, data_dir))
    if jax.process_count() > 1:
      _prepared_on_every_process(builder, config.dataset, after=True)
    return builder
  raise datasets.DatasetError(
      f'dataset {config.dataset!r} is not prepared in {builder.data_dir} and '
      f'no local files were found (manual_dir={manual_dir!r}). Fix: '
      f'{spec.how_to_get}; or set --config.manual_dir=DIR to a folder with '
      f'the files; or --config.download=True where there is internet.')


def _prepared_on_every_process(builder, dataset: str,
                               after: bool = False) -> bool:
  """Whether every process finds ``dataset`` prepared in its data_dir.

  False if none does; a clear error if only some do (each host reads its
  own data_dir: a folder on a disk of its own, or a shared one), or, with
  ``after`` (process 0 has just prepared it), if any does not.
  """
  prepared = builder.is_prepared()
  if jax.process_count() == 1:
    return prepared
  everywhere = np.asarray(multihost_utils.process_allgather(
      np.asarray(prepared))).reshape(-1)
  if everywhere.all():
    return True
  if everywhere.any() or after:
    missing = [int(i) for i in np.flatnonzero(~everywhere)]
    why = ('process 0 prepared it, but they do not see it: data_dir is not '
           'a folder all hosts share' if after else
           'the hosts do not share one data_dir, and not every copy is '
           'complete')
    raise datasets.DatasetError(
        f'dataset {dataset!r} is not prepared in {builder.data_dir} on '
        f'processes {missing} of {jax.process_count()} ({why}). Every host '
        f'needs the prepared data: a data_dir on a filesystem all hosts '
        f'share, or a copy on each host\'s disk (launch/tpu.sh data).')
  return False


def open_split(builder: tfds.core.DatasetBuilder, split: str,
               per_process: bool = True):
  """``split`` as a random-access data source: this process's part of it
  (``tfds.split_for_jax_process``), or all of it (``per_process=False``)."""
  remote = '://' in str(builder.data_dir)
  try:
    source = builder.as_data_source(
        split=tfds.split_for_jax_process(split) if per_process else split)
    if remote and len(source):
      source[0]  # pylint: disable=pointless-statement
    return source
  except Exception as e:  # TFDS raises several types for the same problem.
    if remote:
      raise datasets.DatasetError(
          f'cannot read {builder.name} {split} from {builder.data_dir} ({e}). '
          f'Training reads array_record files by random access, which the '
          f'open-source array_record reader cannot do on gs:// (or other '
          f'remote) paths: copy the prepared folder to a local disk of every '
          f'host (e.g. `gcloud storage rsync -r {builder.data_dir} '
          f'~/tensorflow_datasets`, or `launch/tpu.sh data`) and pass '
          f'--config.data_dir=$HOME/tensorflow_datasets. The workdir may '
          f'stay on gs://.') from e
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
  """This process's rows of each global training batch, as a pure function
  of the step (see the module doc).

  Args:
    source: the whole train split (``open_split(..., per_process=False)``).
    batch_size: the global batch size.
    seed: draws the permutation of every epoch.
    with_labels: also return ``label``.
    process_index, process_count: which rows of each batch this process
      reads (default: this JAX process).
  """

  def __init__(self, source, batch_size: int, seed: int, with_labels: bool,
               process_index: int | None = None,
               process_count: int | None = None):
    count = jax.process_count() if process_count is None else process_count
    index = jax.process_index() if process_index is None else process_index
    if batch_size % count:
      raise errors.ConfigError(
          f'batch_size = {batch_size} is not divisible by the '
                       f'{count} processes.')
    if len(source) < batch_size:
      raise datasets.DatasetError(
          f'the training split has {len(source)} examples, fewer than the '
          f'batch of {batch_size}.')
    self._source = source
    self._batch = batch_size
    self._local = batch_size // count
    self._offset = index * self._local
    self._seed = seed
    self._with_labels = with_labels
    self._epoch, self._perm = -1, None

  def _permutation(self, epoch: int) -> np.ndarray:
    if epoch != self._epoch:
      rng = np.random.default_rng([self._seed, epoch])
      self._epoch, self._perm = epoch, rng.permutation(len(self._source))
    return self._perm

  def indices(self, step: int) -> np.ndarray:
    """Indices into the split of this process's rows of the global batch of
    ``step`` (positions step * B + offset ... of the epoch stream)."""
    n = len(self._source)
    first = step * self._batch + self._offset
    return np.asarray([self._permutation(k // n)[k % n]
                       for k in range(first, first + self._local)])

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
