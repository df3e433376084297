"""Compress image files one by one with a trained model, and back.

  python -m gated_pixelcnn.compress photos/ -o packed/       # one .gpx each
  python -m gated_pixelcnn.compress -d packed/ -o restored/  # PNGs again

Inputs are image files (PNG, or anything Pillow reads losslessly) or
folders of them; any size up to 4096x4096, grayscale for a grayscale model.
Each image becomes ``<stem>.gpx`` in the new folder ``-o``: a one-image file
(`gated_pixelcnn.container`) about 13 bytes larger than the model's code
length. ``-d`` turns .gpx files (or folders of them) back into exact PNGs.

The model is the project's pretrained Fashion-MNIST model unless
``--config`` and ``--workdir`` name a run of your own (``--step``: a
checkpoint other than the newest). A class-conditional model codes each
image with the class that makes its file smallest, and stores it.
Decompress with the model that compressed: a file of another model is
refused before decoding. Output folders are written whole or not at all.
"""

from __future__ import annotations

import sys
import time

from absl import app
from absl import flags
from absl import logging
from etils import epath
from ml_collections import config_flags

from gated_pixelcnn import compression
from gated_pixelcnn import container
from gated_pixelcnn import errors
from gated_pixelcnn import image_files
from gated_pixelcnn import pretrained

DEFAULT_MODEL = pretrained.ROOT / 'pretrained' / 'fashion_mnist'



def _define_flags():
  """The command's flags (defined only when it runs as a program, so that
  importing this module defines none)."""
  flags.DEFINE_string('o', None, 'the new folder to write into')
  flags.DEFINE_bool('d', False, 'decompress .gpx files to PNGs')
  flags.DEFINE_string(
      'workdir', None, 'a training run to code with (with --config); '
      'default: the pretrained Fashion-MNIST model')
  flags.DEFINE_integer('step', None, 'checkpoint step of --workdir '
                       '(default: the newest)')
  flags.DEFINE_integer(
      'file_batch', None, 'compress: files coded together, a power of two '
      'up to 256 (default: the config\'s compress.file_batch, 64)')
  config_flags.DEFINE_config_file('config', None, 'the config of --workdir')


def _inputs(args: list[str], suffix: str | None) -> list[epath.Path]:
  verb = 'decompress' if suffix else 'compress'
  if not args:
    raise compression.CompressionError(
        f'give the files or folders to {verb}, and -o FOLDER.')
  paths = []
  for arg in args:
    path = epath.Path(arg)
    if not path.exists():
      raise compression.CompressionError(f'{arg} does not exist.')
    paths += image_files.list_files(path, suffix) if path.is_dir() else [path]
  stems = {}
  for p in paths:
    if p.stem.startswith('.') or not p.stem:
      raise compression.CompressionError(
          f'{p}: outputs are named after the input, and a name starting '
          'with "." would be hidden; rename it.')
    if p.stem in stems:
      raise compression.CompressionError(
          f'{stems[p.stem]} and {p} would both be written as {p.stem}; '
          f'{verb} them separately.')
    stems[p.stem] = p
  return paths


def _config(config, workdir, output: str, file_batch: int | None):
  """The config to code with, checked: the pretrained model's by default."""
  if (config is None) != (workdir is None):
    raise compression.CompressionError(
        'give --config and --workdir together (a run of your own), or '
        'neither (the pretrained model).')
  if config is None:
    if not (DEFAULT_MODEL / pretrained.RECORD).exists():
      raise compression.CompressionError(
          f'no pretrained model at {DEFAULT_MODEL}: give --config and '
          '--workdir of a trained run.')
    config = pretrained.config_of(DEFAULT_MODEL)
  else:
    config = config.copy_and_resolve_references()
  if file_batch is not None:
    container.check_file_batch(file_batch, '--file_batch')
    config.compress.file_batch = file_batch
  # -o: new (or an empty folder), not a link, not under a file; checked
  # before any coding.
  config.compress.output = output
  return config


def run(inputs: list[str], output: str, *, decompress: bool = False,
        config=None, workdir: str | None = None, step: int | None = None,
        file_batch: int | None = None) -> None:
  """What the command does: ``inputs`` (files or folders) into the new
  folder ``output``; the model of ``config`` and ``workdir`` (both None:
  the pretrained one). Bad input raises errors.UserError, before coding."""
  config = _config(config, workdir, output, file_batch)
  out = image_files.output(config, folder=True, what='-o')
  paths = _inputs(inputs, container.SUFFIX if decompress else None)
  if decompress:
    _decompress(config, workdir, step, paths, out)
  else:
    _compress(config, workdir, step, paths, out)


def _codec(config, workdir, step) -> compression.Codec:
  return compression.Codec.from_workdir(
      config, workdir or str(DEFAULT_MODEL), step=step)


def _compress(config, workdir, step, paths, out) -> None:
  codec = _codec(config, workdir, step)
  C = codec.model.num_channels
  images = [image_files.read_image(p, (None, None, C)) for p in paths]
  start = time.time()
  files = codec.compress_files(images, progress=len(images) > 1)
  image_files.write_folder(out, {f'{p.stem}{container.SUFFIX}': f
                                 for p, f in zip(paths, files)})
  pixels = sum(x.size for x in images)
  size = sum(map(len, files))
  logging.info('Wrote %d files into %s: %d bytes, %.4f bits/dim, %.1f '
               'images/s.', len(files), out, size, 8 * size / pixels,
               len(files) / (time.time() - start))


def _decompress(config, workdir, step, paths, out) -> None:
  blobs = [p.read_bytes() for p in paths]
  for p, data in zip(paths, blobs):
    if not container.is_compact(data):
      container.read_header(data, str(p))   # a clear error if not a .gpx
      raise compression.CompressionError(
          f'{p} is a format-1 .gpx file (one or many images, with its '
          'checkpoint step): decompress it with python -m '
          'gated_pixelcnn.main --mode=decompress.')
  codec = _codec(config, workdir, step)
  start = time.time()
  decoded = codec.decompress_files(blobs, [str(p) for p in paths],
                                   progress=len(blobs) > 1)
  image_files.write_folder(out, {f'{p.stem}.png': image_files.png(image)
                                 for p, (image, _) in zip(paths, decoded)})
  logging.info('Decompressed %d files into %s (%.1f images/s); every image '
               'matched its tag.', len(paths), out,
               len(paths) / (time.time() - start))


def main(argv):
  FLAGS = flags.FLAGS  # pylint: disable=invalid-name
  if FLAGS.o is None:
    raise app.UsageError('give -o FOLDER: the new folder to write into.')
  try:
    run(argv[1:], FLAGS.o, decompress=FLAGS.d, config=FLAGS.config,
        workdir=FLAGS.workdir, step=FLAGS.step, file_batch=FLAGS.file_batch)
  except errors.UserError as e:
    sys.exit(f'error: {e}')


if __name__ == '__main__':
  _define_flags()
  app.run(main)
