"""Offline TFDS builders and the deterministic input pipeline."""

import os

import ml_collections
import numpy as np
import pytest
import tensorflow_datasets as tfds

from gated_pixelcnn import datasets
from gated_pixelcnn import input_pipeline
from tests import fake_data


def test_offline_fashion_mnist_has_stock_splits_and_features(
    fashion_mnist_tfds_dir, tmp_path):
  # Prepared by the fixture; preparing again reuses it.
  builder = datasets.prepare('fashion_mnist', datasets.DEBIAN_FASHION_MNIST,
                             str(fashion_mnist_tfds_dir))
  assert builder.info.splits['train'].num_examples == 60_000
  assert builder.info.splits['test'].num_examples == 10_000
  stock = tfds.builder('fashion_mnist', data_dir=str(tmp_path / 'stock'))
  assert builder.info.features.to_json() == stock.info.features.to_json()
  assert builder.info.version == stock.info.version
  # The ordinary TFDS entry points find the prepared data, offline.
  source = tfds.data_source('fashion_mnist', split='test',
                            data_dir=str(fashion_mnist_tfds_dir),
                            download=False)
  example = source[0]
  assert example['image'].shape == (28, 28, 1)
  assert example['image'].dtype == np.uint8
  assert 0 <= example['label'] < 10
  labels = [source[i]['label'] for i in range(0, 10_000, 97)]
  assert len(set(labels)) == 10


@pytest.mark.skipif(not os.path.isdir(datasets.DEBIAN_FASHION_MNIST),
                    reason='needs Debian package dataset-fashion-mnist')
def test_fashion_mnist_is_prepared_from_debians_folder_by_default(
    tmp_path, monkeypatch):
  """With no manual_dir, training prepares Fashion-MNIST on first use from
  the Debian package's folder (the other tests share one prepared copy)."""
  calls = []
  monkeypatch.setattr(datasets, 'prepare', lambda *args: calls.append(args))
  config = ml_collections.ConfigDict(dict(
      dataset='fashion_mnist', manual_dir=None,
      data_dir=str(tmp_path / 'tfds'), download=False))
  input_pipeline.get_builder(config)
  assert calls == [('fashion_mnist', datasets.DEBIAN_FASHION_MNIST,
                    str(tmp_path / 'tfds'))]


def test_mnist_idx_files_round_trip(fake_mnist_dir, tmp_path):
  builder = datasets.prepare('mnist', str(fake_mnist_dir), str(tmp_path))
  source = builder.as_data_source(split='test')
  assert len(source) == 37
  images = datasets.read_idx(fake_mnist_dir / 't10k-images-idx3-ubyte.gz', 3)
  labels = datasets.read_idx(fake_mnist_dir / 't10k-labels-idx1-ubyte.gz', 1)
  # TFDS stores examples in its own (shuffled) order: compare as multisets.
  stored = sorted((source[i]['image'][..., 0].tobytes(), source[i]['label'])
                  for i in range(len(source)))
  assert stored == sorted((im.tobytes(), lb) for im, lb in zip(images, labels))


def test_cifar10_from_local_archive(tmp_path):
  folder = fake_data.cifar10_archive(tmp_path / 'src', per_batch=3)
  builder = datasets.prepare('cifar10', str(folder), str(tmp_path / 'tfds'))
  assert builder.info.splits['train'].num_examples == 15
  assert builder.info.splits['test'].num_examples == 3
  example = builder.as_data_source(split='train')[0]
  assert example['image'].shape == (32, 32, 3)


def test_downsampled_imagenet_from_manual_dir(tmp_path):
  folder = fake_data.downsampled_imagenet_folder(tmp_path / 'src', 32, 5, 2)
  builder = datasets.prepare('downsampled_imagenet/32x32', str(folder),
                             str(tmp_path / 'tfds'))
  assert builder.info.splits['train'].num_examples == 5
  assert builder.info.splits['validation'].num_examples == 2
  image = builder.as_data_source(split='validation')[0]['image']
  assert image.shape == (32, 32, 3)


def test_corrupt_idx_file_is_reported_by_path(tmp_path):
  fake_data.mnist_folder(tmp_path / 'src')
  bad = tmp_path / 'src' / 'train-images-idx3-ubyte.gz'
  bad.write_bytes(bad.read_bytes()[:100])
  with pytest.raises(Exception, match='train-images-idx3-ubyte'):
    datasets.prepare('mnist', str(tmp_path / 'src'), str(tmp_path / 'tfds'))


def test_missing_dataset_names_the_fix(fake_config, tmp_path):
  fake_config.data_dir = str(tmp_path / 'empty')
  fake_config.manual_dir = str(tmp_path / 'nowhere')
  with pytest.raises(datasets.DatasetError, match='apt-get install '
                     'dataset-fashion-mnist'):
    input_pipeline.get_builder(fake_config)
  fake_config.dataset = 'cifar10'
  with pytest.raises(datasets.DatasetError,
                     match='prepare_data --dataset=cifar10'):
    input_pipeline.get_builder(fake_config)


def test_unknown_dataset(fake_config):
  fake_config.dataset = 'imagenet2012'
  with pytest.raises(ValueError, match="unknown dataset 'imagenet2012'"):
    input_pipeline.get_builder(fake_config)


def _train_source(config):
  builder = input_pipeline.get_builder(config)
  return input_pipeline.open_split(builder, 'train', per_process=False)


def test_train_batches_are_a_pure_function_of_the_step(fake_config):
  source = _train_source(fake_config)
  a = input_pipeline.TrainBatches(source, 8, seed=3, with_labels=True)
  b = input_pipeline.TrainBatches(source, 8, seed=3, with_labels=True)
  uninterrupted = [a.batch(s) for s in range(20)]
  # A "resumed" reader started at step 11 sees the same batches from there.
  resumed = b.iterate(11)
  for s in range(11, 20):
    got = next(resumed)
    assert np.array_equal(got['image'], uninterrupted[s]['image'])
    assert np.array_equal(got['label'], uninterrupted[s]['label'])
  # Each epoch (64 examples = 8 steps) visits every example exactly once.
  epoch = np.concatenate([a.indices(s) for s in range(8)])
  assert sorted(epoch) == list(range(64))
  assert not np.array_equal(epoch, np.concatenate(
      [a.indices(s) for s in range(8, 16)]))
  other_seed = input_pipeline.TrainBatches(source, 8, seed=4,
                                           with_labels=True)
  assert not np.array_equal(other_seed.indices(0), a.indices(0))


def test_process_rows_make_up_the_same_global_batch(fake_config):
  """P processes each read rows [p B/P, (p+1) B/P) of the one global batch,
  so the data does not depend on the number of processes."""
  source = _train_source(fake_config)
  one = input_pipeline.TrainBatches(source, 8, seed=3, with_labels=True,
                                    process_index=0, process_count=1)
  for count in (2, 4):
    parts = [input_pipeline.TrainBatches(source, 8, seed=3, with_labels=True,
                                         process_index=p, process_count=count)
             for p in range(count)]
    for step in (0, 7, 8, 13):  # 64 examples: epoch 1 starts at step 8
      rows = [part.batch(step) for part in parts]
      assert all(len(r['image']) == 8 // count for r in rows)
      whole = one.batch(step)
      for key in ('image', 'label'):
        assert np.array_equal(np.concatenate([r[key] for r in rows]),
                              whole[key])
  with pytest.raises(ValueError, match='not divisible by the 3 processes'):
    input_pipeline.TrainBatches(source, 8, seed=3, with_labels=True,
                                process_index=0, process_count=3)


def test_process_parts_are_disjoint_and_cover_the_split(fake_config):
  builder = input_pipeline.get_builder(fake_config)
  seen = []
  for index in range(3):
    split = tfds.split_for_jax_process('test', process_index=index,
                                       process_count=3)
    source = builder.as_data_source(split=split)
    seen += [source[i]['image'].tobytes() for i in range(len(source))]
  everything = builder.as_data_source(split='test')
  assert sorted(seen) == sorted(everything[i]['image'].tobytes()
                                for i in range(len(everything)))


def test_eval_batches_pad_and_mask(fake_config):
  builder = input_pipeline.get_builder(fake_config)
  source = input_pipeline.open_split(builder, 'test')
  num = input_pipeline.num_eval_batches(37, 16)
  batches = list(input_pipeline.eval_batches(source, 16, num, False,
                                             (28, 28, 1)))
  assert num == 3 and len(batches) == 3
  assert [int(b['mask'].sum()) for b in batches] == [16, 16, 5]
  assert all(b['image'].shape == (16, 28, 28, 1) for b in batches)


def test_remote_data_dir_that_cannot_be_read_names_the_fix():
  """array_record has no open-source GCS reader: a gs:// data_dir fails at
  the first read; the error says to copy the data to a local disk."""

  class Unreadable:
    def __len__(self):
      return 10

    def __getitem__(self, i):
      raise RuntimeError('open() failed: No such file or directory')

  class Builder:
    name = 'downsampled_imagenet'
    data_dir = 'gs://bucket/tfds/downsampled_imagenet/64x64/2.0.0'

    def as_data_source(self, split):
      del split
      return Unreadable()

  with pytest.raises(datasets.DatasetError,
                     match=r'(?s)random access.*gs://.*local disk.*data_dir'):
    input_pipeline.open_split(Builder(), 'train', per_process=False)
