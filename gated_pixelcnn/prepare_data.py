"""Prepares a dataset for TFDS from local files, offline.

  python -m gated_pixelcnn.prepare_data --dataset=fashion_mnist
  python -m gated_pixelcnn.prepare_data --dataset=cifar10 --manual_dir=DIR
  python -m gated_pixelcnn.prepare_data \\
      --dataset=downsampled_imagenet/64x64 --manual_dir=DIR --data_dir=gs://...

Training prepares the dataset by itself when its files are where it looks
(Debian's Fashion-MNIST, or --config.manual_dir); this command does it ahead
of time, e.g. once per pod before launching every worker.
"""

import os

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

from absl import app  # pylint: disable=g-import-not-at-top
from absl import flags
import tensorflow as tf

from gated_pixelcnn import datasets
from gated_pixelcnn import input_pipeline

flags.DEFINE_enum('dataset', 'fashion_mnist', sorted(input_pipeline.SPECS),
                  'Dataset to prepare.')
flags.DEFINE_string('manual_dir', None,
                    'Folder with the source files (default for fashion_mnist: '
                    f'{datasets.DEBIAN_FASHION_MNIST}).')
flags.DEFINE_string('data_dir', None,
                    'TFDS data_dir (default: ~/tensorflow_datasets).')
FLAGS = flags.FLAGS


def main(argv):
  del argv
  tf.config.set_visible_devices([], 'GPU')
  spec = input_pipeline.get_spec(FLAGS.dataset)
  manual_dir = FLAGS.manual_dir or spec.default_manual_dir
  if not manual_dir:
    raise app.UsageError(f'--manual_dir is required for {FLAGS.dataset}.')
  builder = datasets.prepare(FLAGS.dataset, manual_dir, FLAGS.data_dir)
  for split, info in builder.info.splits.items():
    print(f'{FLAGS.dataset} {split}: {info.num_examples} examples in '
          f'{builder.data_dir}')


if __name__ == '__main__':
  app.run(main)
