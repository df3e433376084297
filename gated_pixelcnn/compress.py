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

_OUTPUT = flags.DEFINE_string('o', None, 'the new folder to write into')
_DECOMPRESS = flags.DEFINE_bool('d', False, 'decompress .gpx files to PNGs')
_WORKDIR = flags.DEFINE_string(
    'workdir', None, 'a training run to code with (with --config); default: '
    'the pretrained Fashion-MNIST model')
_STEP = flags.DEFINE_integer('step', None, 'checkpoint step of --workdir '
                             '(default: the newest)')
_FILE_BATCH = flags.DEFINE_integer(
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


def _codec(config) -> compression.Codec:
  workdir = _WORKDIR.value or str(DEFAULT_MODEL)
  return compression.Codec.from_workdir(config, workdir, step=_STEP.value)


def _config():
  config = flags.FLAGS.config
  if (config is None) != (_WORKDIR.value is None):
    raise compression.CompressionError(
        'give --config and --workdir together (a run of your own), or '
        'neither (the pretrained model).')
  if config is None:
    if not (DEFAULT_MODEL / pretrained.RECORD).exists():
      raise compression.CompressionError(
          f'no pretrained model at {DEFAULT_MODEL}: give --config and '
          '--workdir of a trained run.')
    config = pretrained.config_of(DEFAULT_MODEL)
  if _FILE_BATCH.value is not None:
    b = _FILE_BATCH.value
    if b < 1 or b & (b - 1) or b > container.MAX_FILE_BATCH:
      raise compression.CompressionError(
          f'--file_batch must be a power of two in 1..'
          f'{container.MAX_FILE_BATCH}, got {b}.')
    config.compress.file_batch = b
  # -o: new (or an empty folder), not a link, not under a file; checked
  # before any coding.
  config.compress.output = _OUTPUT.value
  return config


def compress(args: list[str]) -> None:
  config = _config()
  out = image_files.output(config, folder=True, what='-o')
  paths = _inputs(args, None)
  codec = _codec(config)
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


def decompress(args: list[str]) -> None:
  config = _config()
  out = image_files.output(config, folder=True, what='-o')
  paths = _inputs(args, container.SUFFIX)
  blobs = [p.read_bytes() for p in paths]
  for p, data in zip(paths, blobs):
    if not container.is_compact(data):
      container.read_header(data, str(p))   # a clear error if not a .gpx
      raise compression.CompressionError(
          f'{p} is a format-1 .gpx file (one or many images, with its '
          'checkpoint step): decompress it with python -m '
          'gated_pixelcnn.main --mode=decompress.')
  codec = _codec(config)
  start = time.time()
  decoded = codec.decompress_files(blobs, [str(p) for p in paths],
                                   progress=len(blobs) > 1)
  image_files.write_folder(out, {f'{p.stem}.png': image_files.png(image)
                                 for p, (image, _) in zip(paths, decoded)})
  logging.info('Decompressed %d files into %s (%.1f images/s); every image '
               'matched its tag.', len(paths), out,
               len(paths) / (time.time() - start))


def main(argv):
  if _OUTPUT.value is None:
    raise app.UsageError('give -o FOLDER: the new folder to write into.')
  try:
    (decompress if _DECOMPRESS.value else compress)(argv[1:])
  except errors.UserError as e:
    sys.exit(f'error: {e}')


if __name__ == '__main__':
  app.run(main)
