"""Entry point: flags only; the work happens in train.py (and later modules).

  python -m gated_pixelcnn.main --config=configs/default.py --workdir=DIR
  python -m gated_pixelcnn.main --config=configs/default.py --workdir=DIR \\
      --mode=eval   # or sample, complete, reconstruct, compress, ...
  # any config value: --config.batch_size=64 --config.model.num_layers=12
  # every host of a pod (TPU VM workers, Slurm nodes) runs the same command:
  python -m gated_pixelcnn.main --distributed --config=configs/imagenet64.py \\
      --workdir=gs://BUCKET/runs/imagenet64 --config.data_dir=$HOME/tensorflow_datasets
"""

import logging as std_logging
import os

# TensorFlow serves tf.data/TFDS only: keep it off the accelerators and quiet.
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

from absl import app  # pylint: disable=g-import-not-at-top
from absl import flags
from absl import logging
from etils import epath
import jax
from ml_collections import config_flags
import tensorflow as tf

from gated_pixelcnn import compression
from gated_pixelcnn import distributed
from gated_pixelcnn import inference
from gated_pixelcnn import train

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file(
    'config', None, 'Training configuration (a configs/*.py file).',
    lock_config=True)
flags.DEFINE_string('workdir', None, 'Folder for checkpoints, logs, results.')
flags.DEFINE_enum('mode', 'train', ['train', 'eval', 'sample', 'complete',
                                    'reconstruct', 'embed_sample',
                                    'interpolate', 'compress', 'decompress'],
                  'train: train and evaluate, resuming from the newest '
                  'checkpoint; eval: bits/dim (or the model\'s metric) of the '
                  'newest checkpoint on the test split; sample: a grid of '
                  'samples (sample.*); complete: test images with their lower '
                  'half resampled; reconstruct: auto-encoder figure (image | '
                  'MSE reconstruction | PixelCNN samples given h); '
                  'embed_sample: samples given the embedding of test images; '
                  'interpolate: samples along the line between two test '
                  'images\' h; compress / decompress: lossless coding of '
                  'images with the model (compress.*).')
flags.DEFINE_bool(
    'distributed', False,
    'Multi-process run (one process per host): call '
    'jax.distributed.initialize() first. On Cloud TPU VMs and under Slurm '
    'nothing else is needed; elsewhere also give the three flags below. '
    f'Also enabled by {distributed.ENV_FLAG}=1.')
flags.DEFINE_string('coordinator_address', None,
                    'With --distributed: HOST:PORT of process 0 (default: '
                    'detected, or $JAX_COORDINATOR_ADDRESS).')
flags.DEFINE_integer('num_processes', None,
                     'With --distributed: number of processes (default: '
                     'detected).')
flags.DEFINE_integer('process_id', None,
                     'With --distributed: this process\'s index, 0..N-1 '
                     '(default: detected).')
flags.mark_flags_as_required(['config', 'workdir'])

MODES = {'train': train.train_and_evaluate,
         'eval': inference.evaluate_checkpoint,
         'sample': inference.sample_checkpoint,
         'complete': inference.complete_checkpoint,
         'reconstruct': inference.reconstruct_checkpoint,
         'embed_sample': inference.embed_sample_checkpoint,
         'interpolate': inference.interpolate_checkpoint,
         'compress': compression.compress_checkpoint,
         'decompress': compression.decompress_checkpoint}


class _QuietOrbax(std_logging.Filter):
  """Drops Orbax's per-save INFO chatter; its warnings and errors stay."""

  def filter(self, record):
    return record.levelno >= std_logging.WARNING or (
        '/orbax/' not in record.pathname)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  logging.get_absl_handler().addFilter(_QuietOrbax())
  tf.config.set_visible_devices([], 'GPU')
  if FLAGS.mode == 'train':
    train.handle_sigterm()  # from the start: checkpoint and stop
  # Both before JAX's backends start.
  train.configure_cpu_devices(FLAGS.config)
  if distributed.requested(FLAGS.distributed):
    distributed.initialize(FLAGS.coordinator_address, FLAGS.num_processes,
                           FLAGS.process_id)
  elif FLAGS.coordinator_address or FLAGS.num_processes is not None or (
      FLAGS.process_id is not None):
    raise app.UsageError('--coordinator_address, --num_processes and '
                         '--process_id need --distributed.')
  logging.info('JAX process %d/%d, local devices %s', jax.process_index(),
               jax.process_count(), jax.local_devices())
  if FLAGS.mode not in ('compress', 'decompress'):   # these only read it
    epath.Path(FLAGS.workdir).mkdir(parents=True, exist_ok=True)
  MODES[FLAGS.mode](FLAGS.config, FLAGS.workdir)


if __name__ == '__main__':
  app.run(main)
