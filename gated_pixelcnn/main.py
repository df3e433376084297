"""Entry point: flags only; the work happens in the --mode jobs (modes.py).

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
import sys

# TensorFlow serves tf.data/TFDS only: keep it off the accelerators and quiet.
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

from absl import app  # pylint: disable=g-import-not-at-top
from absl import flags
from absl import logging
import jax
from ml_collections import config_flags

from gated_pixelcnn import distributed
from gated_pixelcnn import errors
from gated_pixelcnn import modes
from gated_pixelcnn import parallel
from gated_pixelcnn import validation
from gated_pixelcnn import workdir as workdir_lib

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

MODES = modes.MODES


# Set to 1 for the full traceback of every error, user errors included.
TRACEBACK_ENV = 'GATED_PIXELCNN_TRACEBACK'


def _tracebacks() -> bool:
  return os.environ.get(TRACEBACK_ENV, '') not in ('', '0')


class _QuietOrbax(std_logging.Filter):
  """Drops Orbax's per-save INFO chatter and, unless tracebacks are asked
  for, the tracebacks of its errors (the error that stops the run is
  reported once, in one line); its warnings and errors stay."""

  def filter(self, record):
    if '/orbax/' not in record.pathname:
      return True
    if record.levelno >= std_logging.ERROR and not _tracebacks():
      record.exc_info, record.exc_text = None, None
    return record.levelno >= std_logging.WARNING


def _quiet_async_noise() -> None:
  """After a failed restore, TensorStore's callbacks meet Orbax's closed
  event loops: hundreds of "Event loop is closed" and "exception was never
  retrieved" tracebacks that say nothing the one-line error does not."""
  std_logging.getLogger('asyncio').addFilter(
      lambda record: 'exception was never retrieved' not in str(record.msg))
  default = sys.unraisablehook

  def hook(unraisable):
    if not (isinstance(unraisable.exc_value, RuntimeError) and
            'Event loop is closed' in str(unraisable.exc_value)):
      default(unraisable)
  sys.unraisablehook = hook


def _config_error(e: Exception) -> errors.ConfigError:
  """What went wrong loading --config and applying its overrides."""
  key = str(e).strip('"\'')
  overrides = [a for a in sys.argv if a.startswith('--config.')]
  if isinstance(e, AttributeError) and any(
      f'.{key}=' in a or a.endswith(f'.{key}') for a in overrides):
    return errors.ConfigError(
        f'bad config: an override names {key!r}, a key the config does not '
        'have; the config file lists its keys (e.g. '
        '--config.model.num_layers=4).')
  lines = [line.strip() for line in str(e).strip().splitlines()]
  detail = ' '.join(lines[1:] or lines)
  return errors.ConfigError(
      f'--config: cannot load the config file ({type(e).__name__}: '
      f'{detail}); give a configs/*.py file (e.g. '
      '--config=configs/default.py).')


def _run(argv) -> None:
  if len(argv) > 1:
    raise errors.ConfigError(f'unexpected arguments {argv[1:]}: flags are '
                             'written --name=value (see --help).')
  logging.get_absl_handler().addFilter(_QuietOrbax())
  if not _tracebacks():
    _quiet_async_noise()
  try:
    config = FLAGS.config
    config.keys()   # a file that failed to load fails on first use
  except Exception as e:  # pylint: disable=broad-except
    raise _config_error(e) from e
  validation.check_ranges(config)   # bad values: one line, in a second
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  tf.config.set_visible_devices([], 'GPU')   # (seconds to import: here)
  if FLAGS.mode == 'train':
    parallel.handle_sigterm()  # from the start: checkpoint and stop
  # Both before JAX's backends start.
  parallel.configure_cpu_devices(config)
  if distributed.requested(FLAGS.distributed):
    distributed.initialize(FLAGS.coordinator_address, FLAGS.num_processes,
                           FLAGS.process_id)
  elif FLAGS.coordinator_address or FLAGS.num_processes is not None or (
      FLAGS.process_id is not None):
    raise errors.ConfigError('--coordinator_address, --num_processes and '
                             '--process_id need --distributed.')
  logging.info('JAX process %d/%d, local devices %s', jax.process_index(),
               jax.process_count(), jax.local_devices())
  MODES[FLAGS.mode](config, workdir_lib.resolve(FLAGS.workdir))


def main(argv):
  try:
    _run(argv)
  except errors.UserError as e:
    if _tracebacks():
      raise
    logging.flush()
    print(f'error: {e}', file=sys.stderr, flush=True)
    sys.exit(2 if isinstance(e, errors.ConfigError) else 1)


def _parse_flags(argv):
  """absl's flag parsing, with a bad flag, config file or override reported
  like any usage error: one line, exit status 2."""
  try:
    return FLAGS(argv)
  except flags.Error as e:
    message = f'{e} (--helpfull lists the flags)'
  except Exception as e:  # pylint: disable=broad-except
    if _tracebacks():
      raise
    message = str(_config_error(e))   # only --config parses with code
  print(f'error: {message}', file=sys.stderr)
  sys.exit(2)


if __name__ == '__main__':
  app.run(main, flags_parser=_parse_flags)
