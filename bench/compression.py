"""Lossless compression of a dataset split: the model's range coder against
PNG, WebP and JPEG-XL (lossless), and encode/decode speed.

  python -m bench.compression --workdir=/path/to/trained/run \\
      [--config=configs/default.py] [--split=test] [--num_images=0] \\
      [--batch_size=256] [--per_image=1000] [--tiles=64] \\
      [--out=docs/compression]

Measures, on the same images (the whole split by default):
* the model's NLL in bits/dim from its parallel forward pass (what eval
  reports);
* bits/dim actually written by `Codec.compress` (one .gpx file for all the
  images, header included), encode and decode images/s (compile excluded),
  and that every decoded image equals the original;
* the same loop with a coder that does nothing (the network and the
  callback round trip, without the range coder's host work);
* --per_image images in one compact file each (`Codec.compress_files`,
  coded compress.file_batch at a time): bits/dim, bytes per file over the
  image's own NLL, encode/decode images/s, one file decoded alone;
* --tiles crops of 64x64 and 17x40 cut from mosaics of the images (a model
  trained on 28x28 codes any size), one file each, next to the image
  codecs;
* PNG (zlib level 9, optimize), WebP lossless (method 6) and, if the
  pillow-jxl-plugin package is installed (`pip install -e .[bench]`),
  JPEG-XL lossless (effort 9): each image encoded alone, file bytes counted,
  decoded back and checked equal.
Prints a table and writes OUT/results.json.
"""

import importlib
import io
import json
import math
import os
import pathlib
import platform
import sys
import time

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
ROOT = pathlib.Path(__file__).resolve().parents[1]
if not __package__:   # run as a file, its folder would shadow installed modules
  sys.exit(f'Run it as a module from the repository root: python -m '
           f'bench.{pathlib.Path(__file__).stem} ...')

from absl import app  # pylint: disable=g-import-not-at-top
from absl import flags
from absl import logging
import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image

from gated_pixelcnn import compression  # pylint: disable=g-import-not-at-top
from gated_pixelcnn import image_files
from gated_pixelcnn import likelihood
from gated_pixelcnn import sampling
from gated_pixelcnn import train

try:
  import pillow_jxl  # pylint: disable=g-import-not-at-top,unused-import
  HAVE_JXL = True
except ImportError:
  HAVE_JXL = False

CODECS = {
    'PNG': ('PNG', {'optimize': True, 'compress_level': 9}),
    'WebP lossless': ('WEBP', {'lossless': True, 'quality': 100,
                               'method': 6}),
    'JPEG-XL lossless': ('JXL', {'lossless': True, 'effort': 9}),
}

_WORKDIR = flags.DEFINE_string(
    'workdir', None, 'a trained run (e.g. of configs/default.py)',
    required=True)
_CONFIG = flags.DEFINE_string('config', str(ROOT / 'configs/default.py'),
                              'the run\'s config file (a configs/*.py file)')
_SPLIT = flags.DEFINE_string('split', 'test', 'the dataset split to code')
_NUM_IMAGES = flags.DEFINE_integer('num_images', 0, '0: all')
_BATCH_SIZE = flags.DEFINE_integer(
    'batch_size', 256, 'images coded together in the one-file run')
_PER_IMAGE = flags.DEFINE_integer(
    'per_image', 1000, 'images coded one file each (0: skip)')
TILE_SHAPES = ((64, 64), (17, 40))
_TILES = flags.DEFINE_integer(
    'tiles', 64, f'crops of each size {TILE_SHAPES} cut from mosaics of the '
    'images, coded one file each (0: skip)')
_OUT = flags.DEFINE_string(
    'out', None, 'folder for results.json (default: print only)')


def _config(path):
  """configs/NAME.py -> its get_config() (the module, imported by name)."""
  rel = pathlib.Path(path).resolve().relative_to(ROOT)
  module = importlib.import_module('.'.join(rel.with_suffix('').parts))
  return module.get_config()


def model_nll(codec, images, batch=256) -> float:
  """Bits/dim of the images under the model's parallel forward pass."""
  apply = jax.jit(codec.model.apply)
  total = 0.0
  for lo in range(0, len(images), batch):
    x = jnp.asarray(images[lo:lo + batch], jnp.int32)
    total += float(-likelihood.log_prob(apply(codec.variables, x), x).sum())
  return total / (images.size * math.log(2.0))


def _same(decoded, image) -> bool:
  """Equal pixels; WebP has no grayscale mode and returns gray as R=G=B."""
  decoded = decoded.reshape(image.shape[:2] + (-1,))
  if image.shape[-1] == 1:
    return all(np.array_equal(decoded[..., k:k + 1], image)
               for k in range(decoded.shape[-1]))
  return np.array_equal(decoded, image)


def image_codec(name, images):
  fmt, options = CODECS[name]
  sizes, start = [], time.perf_counter()
  encoded = []
  for image in images:
    buf = io.BytesIO()
    Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image).save(
        buf, format=fmt, **options)
    encoded.append(buf.getvalue())
    sizes.append(len(buf.getvalue()))
  encode_s = time.perf_counter() - start
  start = time.perf_counter()
  decoded = [np.asarray(Image.open(io.BytesIO(d))) for d in encoded]
  decode_s = time.perf_counter() - start
  exact = all(_same(d, x) for d, x in zip(decoded, images))
  return {'bits_per_dim': 8 * sum(sizes) / images.size,
          'bytes': sum(sizes), 'encode_images_per_s': len(images) / encode_s,
          'decode_images_per_s': len(images) / decode_s, 'exact': exact}


def model_codec(codec, images, per_image: int):
  codec.compress(images[:codec.batch_size])          # compile, warm up
  start = time.perf_counter()
  data = codec.compress(images, progress=True)
  encode_s = time.perf_counter() - start
  start = time.perf_counter()
  decoded, _ = codec.decompress(data, progress=True)
  decode_s = time.perf_counter() - start
  header = compression.read_header(data)
  # The same compiled loop with a coder that does nothing: the network and
  # the callback round trip, without the range coder.
  batch = min(codec.batch_size, len(images))
  start = time.perf_counter()
  sampling.run_coder(codec.model, codec.variables,
                     lambda t, freqs: np.zeros(len(freqs), np.int32),
                     batch_size=batch, image_shape=codec.image_shape)
  loop_s = time.perf_counter() - start
  out = {'one_file': {
      'bits_per_dim': 8 * len(data) / images.size, 'bytes': len(data),
      'header_bytes': header.overhead_bytes,
      'payload_bits_per_dim': 8 * (len(data) - header.overhead_bytes)
                              / images.size,
      'batch_size': codec.batch_size,
      'encode_images_per_s': len(images) / encode_s,
      'decode_images_per_s': len(images) / decode_s,
      'loop_without_coder_images_per_s': batch / loop_s,
      'exact': bool(np.array_equal(decoded, images))}}
  if per_image:
    out['per_image'] = one_image_files(codec, images[:per_image])
  return out


def one_image_files(codec, images) -> dict:
  """Each image in its own compact file (`Codec.compress_files`), coded
  codec.file_batch at a time; decoded all together, and one file alone."""
  codec.compress_files(list(images[:1]))                       # compile
  codec.compress_files(list(images[:codec.batch_for(images.shape[1:])]))
  start = time.perf_counter()
  files = codec.compress_files(list(images), progress=True)
  encode_s = time.perf_counter() - start
  start = time.perf_counter()
  back = codec.decompress_files(files, progress=True)
  decode_s = time.perf_counter() - start
  start = time.perf_counter()
  codec.decompress_files(files[-1:])
  one_s = time.perf_counter() - start
  nll = np.concatenate([   # bytes, per image
      np.asarray(compression._image_nll(  # pylint: disable=protected-access
          codec.model, codec.variables, jnp.asarray(images[lo:lo + 256]),
          None)) / math.log(2.0) / 8 for lo in range(0, len(images), 256)])
  return {
      'num_images': len(images), 'image_shape': list(images.shape[1:]),
      'bits_per_dim': 8 * sum(map(len, files)) / images.size,
      'nll_bits_per_dim': float(8 * nll.sum() / images.size),
      'mean_bytes_over_nll': float(np.mean([len(f) - n
                                            for f, n in zip(files, nll)])),
      'file_batch': codec.file_batch,
      'encode_images_per_s': len(images) / encode_s,
      'decode_images_per_s': len(images) / decode_s,
      'decode_one_file_s': one_s,
      'exact': all(np.array_equal(y, x) for x, (y, _) in zip(images, back))}


def tiles(images, shape, n) -> np.ndarray:
  """n crops of ``shape`` (H, W) from a mosaic of the images (several test
  images per crop), one mosaic row of 8 images after another."""
  H, W = shape
  side = images.shape[1]
  rows = -(-H // side) + 1
  out = []
  for k in range(n):
    block = images[(np.arange(8 * rows) + k * 8 * rows) % len(images)]
    mosaic = np.concatenate([np.concatenate(list(block[r * 8:(r + 1) * 8]),
                                            axis=1) for r in range(rows)])
    y, x = (5 * k) % (mosaic.shape[0] - H + 1), (7 * k) % (
        mosaic.shape[1] - W + 1)
    out.append(mosaic[y:y + H, x:x + W])
  return np.stack(out)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments {argv[1:]}')
  logging.set_verbosity(logging.INFO)   # progress and ETA of the coding

  config = _config(_CONFIG.value)
  config.compress.input = f'tfds:{_SPLIT.value}'
  config.compress.num_images = _NUM_IMAGES.value
  trainer = train.Trainer(config)
  images, _, what = image_files.load_inputs(config, trainer.spec.image_shape)
  codec = compression.Codec.from_workdir(config, _WORKDIR.value,
                                         batch_size=_BATCH_SIZE.value,
                                         trainer=trainer)
  print(f'{what}, model step {codec.step} of {_WORKDIR.value}, '
        f'{platform.processor() or platform.machine()}, '
        f'{os.cpu_count()} cores', flush=True)

  results = {'images': what, 'num_images': len(images),
             'image_shape': list(images.shape[1:]), 'step': codec.step,
             'workdir': _WORKDIR.value, 'config': _CONFIG.value,
             'jax': jax.__version__, 'cores': os.cpu_count(),
             'model_nll_bits_per_dim': model_nll(codec, images)}
  results.update(model_codec(codec, images, _PER_IMAGE.value))
  for name in CODECS:
    if name.startswith('JPEG-XL') and not HAVE_JXL:
      print('JPEG-XL skipped: pip install pillow-jxl-plugin (the bench '
            'extra).')
      continue
    results[name] = image_codec(name, images)
  tile_rows = []
  for shape in TILE_SHAPES if _TILES.value else ():
    crops = tiles(images, shape, _TILES.value)
    size = f'{shape[0]}x{shape[1]}'
    results[f'tiles {size}'] = r = {'one_image_files': one_image_files(
        codec, crops)}
    tile_rows.append((f'{size} tiles: NLL', r['one_image_files'][
        'nll_bits_per_dim'], None, None, None))
    tile_rows.append((f'{size} tiles: gated_pixelcnn one file each',
                      *[r['one_image_files'][k] for k in (
                          'bits_per_dim', 'encode_images_per_s',
                          'decode_images_per_s', 'exact')]))
    for name in CODECS:
      if name in results:
        r[name] = image_codec(name, crops)
        tile_rows.append((f'{size} tiles: {name}', *[r[name][k] for k in (
            'bits_per_dim', 'encode_images_per_s', 'decode_images_per_s',
            'exact')]))

  one = results['one_file']
  rows = [('model NLL (eval, parallel forward)',
           results['model_nll_bits_per_dim'], None, None, None),
          (f'gated_pixelcnn, one file (batch {one["batch_size"]})',
           one['bits_per_dim'], one['encode_images_per_s'],
           one['decode_images_per_s'], one['exact'])]
  if 'per_image' in results:
    p = results['per_image']
    rows.append((f'model NLL of those {p["num_images"]} images',
                 p['nll_bits_per_dim'], None, None, None))
    rows.append((f'gated_pixelcnn, one file per image ({p["num_images"]}, '
                 f'coded {p["file_batch"]} at a time)',
                 p['bits_per_dim'], p['encode_images_per_s'],
                 p['decode_images_per_s'], p['exact']))
  for name in CODECS:
    if name in results:
      r = results[name]
      rows.append((f'{name} (each image alone)', r['bits_per_dim'],
                   r['encode_images_per_s'], r['decode_images_per_s'],
                   r['exact']))
  print('| codec | bits/dim | encode images/s | decode images/s | exact |')
  print('|---|---|---|---|---|')
  for name, bpd, enc, dec, exact in rows + tile_rows:
    fmt = lambda v: '' if v is None else f'{v:,.1f}'  # pylint: disable=unnecessary-lambda-assignment
    print(f'| {name} | {bpd:.4f} | {fmt(enc)} | {fmt(dec)} | '
          f'{"" if exact is None else ("yes" if exact else "NO")} |')
  overhead = one['bits_per_dim'] / results['model_nll_bits_per_dim'] - 1
  print(f'written / NLL - 1 = {100 * overhead:.3f}% (header '
        f'{one["header_bytes"]} bytes); the coding loop with a coder that '
        f'does nothing: {one["loop_without_coder_images_per_s"]:.1f} '
        'images/s')
  if 'per_image' in results:
    p = results['per_image']
    print(f'one file per image: {p["mean_bytes_over_nll"]:.2f} bytes per '
          f'file over the image\'s NLL; one file alone decodes in '
          f'{p["decode_one_file_s"]:.2f} s')
  if _OUT.value:
    out = pathlib.Path(_OUT.value)
    out.mkdir(parents=True, exist_ok=True)
    (out / 'results.json').write_text(json.dumps(results, indent=2) + '\n')
    print(f'wrote {out / "results.json"}')


if __name__ == '__main__':
  app.run(main)
