"""Lossless image compression with a trained model: --mode=compress/decompress.

A model with an exact likelihood is a compressor: an entropy coder driven by
the model's conditionals p(x_t | x_<t) writes an image in about -log2 p(x)
bits. Here the coder is `constriction`'s range coder and the conditionals come
from the cached sampler's loop (`sampling.run_coder`), sub-pixel by
sub-pixel, quantised to integers inside the compiled loop.

Why the decoder gets the encoder's probabilities bit for bit: the encoder and
the decoder run the *same compiled program* (same model, parameters, batch
shape and image shape) from the same all-zero canvas; at sub-pixel t the
program hands the coder integer frequencies computed from the canvas, and the
coder returns the value to write (the encoder the image's value, the decoder
the value it decodes with those frequencies, which is the same value). By
induction over t the canvases, hence the frequencies, are identical (on GPUs
the loop is compiled without XLA's timing-based autotuning, so that this
holds across runs too). What this cannot cover is a different machine
computing the same program's floats differently (another platform or XLA
version): every chunk's pixels carry a digest, checked after decoding, so
such a file fails with a clear error instead of giving a wrong image.

The file format is in `gated_pixelcnn.container`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import io
import json
import math
import os
import shutil
import struct
import tempfile
import time
import warnings

from absl import logging
import constriction
from etils import epath
import jax
import ml_collections
import numpy as np
from PIL import Image
from PIL import UnidentifiedImageError

from gated_pixelcnn import container
from gated_pixelcnn import generate
from gated_pixelcnn import inference
from gated_pixelcnn import input_pipeline
from gated_pixelcnn import sampling
from gated_pixelcnn import train

CompressionError = container.CompressionError
read_header = container.read_header
SUFFIX = container.SUFFIX
# The range coder's model: the quantised frequencies of each sub-pixel, as
# float64 (exact for integers), renormalised by constriction deterministically.
_FAMILY = constriction.stream.model.Categorical(perfect=False)


# ------------------------------------------------------------ the model side


def params_digest(params) -> bytes:
  """sha256 of every parameter array (path, dtype, shape, bytes)."""
  h = hashlib.sha256()
  leaves = jax.tree_util.tree_flatten_with_path(params)[0]
  for path, x in sorted(leaves, key=lambda kv: jax.tree_util.keystr(kv[0])):
    x = np.ascontiguousarray(np.asarray(x))
    h.update(f'{jax.tree_util.keystr(path)}|{x.dtype}|{x.shape}|'.encode())
    h.update(x.tobytes())
  return h.digest()


def model_fingerprint(model, step: int, params) -> bytes:
  """16 bytes naming the exact model: its configuration (the module's
  fields), checkpoint step and parameters."""
  fields = {f.name: getattr(model, f.name) for f in dataclasses.fields(model)
            if f.name not in ('parent', 'name')}
  h = hashlib.sha256(b'gated_pixelcnn compression model\n')
  h.update(f'{type(model).__name__}\n'.encode())
  h.update(json.dumps(fields, sort_keys=True, default=str).encode())
  h.update(struct.pack('<Q', step))
  h.update(params_digest(params))
  return h.digest()[:16]


def _platform() -> str:
  name = jax.devices()[0].platform
  return name if name in container.PLATFORMS else 'other'


def check_codable(model, config=None) -> None:
  """Only unconditional Gated PixelCNNs: the cached loop needs a Gated
  PixelCNN, and a conditional model would need its labels or h sent too."""
  name = config.model.name if config is not None else type(model).__name__
  if not model.codable:
    raise CompressionError(
        f'compression needs an unconditional Gated PixelCNN (model.name = '
        f"'gated_pixelcnn'); {name!r} has no cached sampler loop to code "
        'with, or is conditioned on an input the decoder would not have.')
  if model.num_classes:
    raise CompressionError(
        'compression needs an unconditional model: this one is '
        f'class-conditional (model.num_classes = {model.num_classes}), so '
        'the decoder would need every image\'s label. Train and use an '
        'unconditional model (configs/default.py).')


class Codec:
  """Compresses and decompresses images of one shape with one model.

    codec = Codec.from_workdir(config, workdir)           # newest checkpoint
    data = codec.compress(images_uint8_NxHxWxC)           # bytes
    images, names = codec.decompress(data)                # exact

  ``batch_size`` images are coded together (one range-coder stream per
  batch); a file decodes with the batch size it was written with. Each new
  batch size compiles the coding loop once.
  """

  def __init__(self, model, params, *, image_shape: tuple[int, int, int],
               step: int, batch_size: int = 256):
    check_codable(model)
    if not 1 <= batch_size <= container.MAX_BATCH:
      raise CompressionError(f'batch_size must be in 1..{container.MAX_BATCH}'
                             f', got {batch_size}.')
    image_shape = tuple(int(d) for d in image_shape)
    container.check_fields(step, image_shape)
    if image_shape[2] != model.num_channels:
      raise CompressionError(f'image_shape {image_shape} has {image_shape[2]} '
                             f'channels; the model has {model.num_channels}.')
    self.model = model
    self.variables = {'params': params}
    self.image_shape = image_shape
    self.step = int(step)
    self.batch_size = batch_size
    self.fingerprint = model_fingerprint(model, self.step, params)

  @classmethod
  def from_workdir(cls, config: ml_collections.ConfigDict, workdir: str,
                   step: int | None = None, batch_size: int | None = None,
                   trainer: train.Trainer | None = None) -> Codec:
    """The model of ``config`` at checkpoint ``step`` (None: the newest) in
    ``workdir``, read-only; images of the training data's shape."""
    if trainer is None:
      trainer = train.Trainer(config)
    check_codable(trainer.model, config)
    _, state = inference.restore(config, workdir, read_only=True, step=step,
                                 trainer=trainer)
    return cls(trainer.model,
               generate.host_params(trainer.eval_params(state)),
               image_shape=trainer.spec.image_shape, step=int(state.step),
               batch_size=(config.compress.batch_size if batch_size is None
                           else batch_size))

  # -------------------------------------------------------------- encode

  def check_images(self, images) -> np.ndarray:
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[1:] != self.image_shape:
      raise CompressionError(
          f'images must be [N, {", ".join(map(str, self.image_shape))}] '
          f'(the model\'s image shape), got shape {images.shape}.')
    container.check_fields(self.step, self.image_shape, len(images))
    if images.dtype != np.uint8:
      if not np.issubdtype(images.dtype, np.integer):
        raise CompressionError(f'images must be integers 0..255, got dtype '
                               f'{images.dtype}.')
      if images.min() < 0 or images.max() > 255:
        raise CompressionError(
            f'images must be 8-bit values 0..255, got values '
            f'{images.min()}..{images.max()}.')
      images = images.astype(np.uint8)
    return images

  def compress(self, images, names: list[str] | None = None,
               progress: bool = False) -> bytes:
    """A compressed file holding ``images`` (uint8 [N, H, W, C]) and their
    optional ``names`` (file stems, restored by decompress)."""
    images = self.check_images(images)
    names = container.check_names(names, len(images))
    n = len(images)
    batch = min(self.batch_size, n)
    chunks, start = [], time.time()
    for lo in range(0, n, batch):
      part = images[lo:lo + batch]
      chunks.append((self._encode_chunk(part, batch),
                     container.pixel_digest(part)))
      if progress:
        _log_progress('Compressed', lo + len(part), n, start,
                      32 * sum(len(w) for w, _ in chunks), self.image_shape,
                      'payload')
    return self._pack(n, batch, names, chunks)

  def compress_each(self, images, names: list[str] | None = None,
                    progress: bool = False) -> list[bytes]:
    """One self-contained file per image (each coded alone, batch 1)."""
    images = self.check_images(images)
    names = container.check_names(names, len(images))
    start, out = time.time(), []
    for k in range(len(images)):
      out.append(self.compress(images[k:k + 1],
                               None if names is None else names[k:k + 1]))
      if progress and ((k + 1) % 64 == 0 or k + 1 == len(images)):
        _log_progress('Compressed', k + 1, len(images), start,
                      8 * sum(len(d) for d in out), self.image_shape,
                      'files')
    return out

  def _pack(self, n, batch, names, chunks) -> bytes:
    return container.pack(
        fingerprint=self.fingerprint, step=self.step, platform=_platform(),
        precision=sampling.PRECISION_BITS, image_shape=self.image_shape,
        num_images=n, batch=batch, names=names, chunks=chunks)

  def _run(self, coder, batch) -> np.ndarray:
    return sampling.run_coder(self.model, self.variables, coder,
                              batch_size=batch, image_shape=self.image_shape)

  def _encode_chunk(self, images: np.ndarray, batch: int) -> np.ndarray:
    """Range-coder words for up to ``batch`` images, coded as one batch
    (padded with zero images, which are not coded)."""
    n = len(images)
    padded = np.zeros((batch, math.prod(self.image_shape)), np.int32)
    padded[:n] = images.reshape(n, -1)   # column t = sub-pixel t
    encoder = constriction.stream.queue.RangeEncoder()
    position = [0]

    def coder(t, freqs_Bx256):
      _check_order(t, position)
      values = padded[:, t]
      encoder.encode(values[:n], _FAMILY, freqs_Bx256[:n].astype(np.float64))
      return values

    canvas = self._run(coder, batch)
    if position[0] != padded.shape[1] or not np.array_equal(
        canvas[:n].reshape(n, -1), padded[:n]):
      raise RuntimeError('the coding loop did not write the images it coded.')
    return encoder.get_compressed()

  # -------------------------------------------------------------- decode

  def check_header(self, header: container.Header,
                   what: str = 'the file') -> None:
    """Clear errors for a file this codec cannot decode."""
    if header.fingerprint != self.fingerprint:
      same_step = header.step == self.step
      raise CompressionError(
          f'{what} was compressed with another model: step {header.step}, '
          f'fingerprint {header.fingerprint.hex()}; this model is step '
          f'{self.step}, fingerprint {self.fingerprint.hex()}'
          + (' (same step, different config or parameters)' if same_step
             else '') + '. Decompress it with the --config and --workdir '
          'that compressed it (the checkpoint of that step must still be '
          'there: raise max_to_keep, or copy it aside, to keep it).')
    if header.image_shape != self.image_shape:
      raise CompressionError(
          f'{what} holds {header.image_shape} images; this model codes '
          f'{self.image_shape}.')
    if header.precision != sampling.PRECISION_BITS:
      raise CompressionError(
          f'{what} uses {header.precision}-bit probabilities; this version '
          f'of gated_pixelcnn codes with {sampling.PRECISION_BITS}.')

  def decompress(self, data: bytes, progress: bool = False,
                 what: str = 'the file'
                 ) -> tuple[np.ndarray, list[str] | None]:
    """The exact images (uint8 [N, H, W, C]) and names of a compressed file.

    Raises CompressionError, before decoding, for a file that is not one,
    is truncated or corrupted, or was made by another model; and after
    decoding if the pixels differ from those compressed: never a wrong
    image.
    """
    header = read_header(data, what)
    self.check_header(header, what)
    if header.platform != _platform():
      logging.warning('%s was compressed on %s, decoding on %s: the decoded '
                      'pixels are checked against the stored digest.', what,
                      header.platform, _platform())
    out = []   # filled chunk by chunk: a file cannot make it allocate more
    offset, start = header.payload_offset, time.time()
    for k, (num_words, digest) in enumerate(header.chunks):
      lo, n = header.chunk_images(k)
      words = np.frombuffer(data, '<u4', num_words, offset).astype(np.uint32)
      offset += 4 * num_words
      images = self._decode_chunk(words, n, header, what)
      if container.pixel_digest(images) != digest:
        raise CompressionError(_undecodable(
            what, header, f'decoding gave pixels that differ from those '
            f'compressed (images {lo}..{lo + n - 1})'))
      out.append(images)
      if progress:
        _log_progress('Decompressed', lo + n, header.num_images, start,
                      8 * (offset - header.payload_offset), self.image_shape,
                      'payload')
    return np.concatenate(out), header.names

  def _decode_chunk(self, words, n, header: container.Header,
                    what) -> np.ndarray:
    decoder = constriction.stream.queue.RangeDecoder(words)
    position = [0]

    def coder(t, freqs_Bx256):
      _check_order(t, position)
      values = np.zeros(header.batch, np.int32)
      try:
        values[:n] = decoder.decode(_FAMILY,
                                    freqs_Bx256[:n].astype(np.float64))
      except Exception as e:  # constriction: AssertionError on bad data
        raise CompressionError(_undecodable(
            what, header, f'the range decoder failed ({type(e).__name__}: '
            f'{e})')) from e
      return values

    return self._run(coder, header.batch)[:n]


def _undecodable(what: str, header: container.Header, detail: str) -> str:
  """Why a file whose header checks out does not decode: either cause gives
  either symptom (a decoder fed other probabilities may fail, or may decode
  other pixels), so the message names both."""
  return (f'cannot decompress {what}: {detail}. Either the file was altered, '
          f'or this machine ({_platform()}, JAX {jax.__version__}) computes '
          'the model\'s probabilities differently from the one that '
          f'compressed it (a {header.platform} machine): then decompress on '
          'the kind of machine and software that compressed it. Nothing was '
          'written.')


def _check_order(t: int, position: list[int]) -> None:
  if t != position[0]:
    raise RuntimeError(f'sub-pixel {t} coded out of order (expected '
                       f'{position[0]}).')
  position[0] += 1


def _log_progress(verb, done, total, start, bits, image_shape, what):
  elapsed = time.time() - start
  rate = done / max(elapsed, 1e-9)
  logging.info('%s %d/%d images: %.4f bits/dim (%s), %.1f images/s, '
               'ETA %.0f s.', verb, done, total,
               bits / (done * math.prod(image_shape)), what, rate,
               (total - done) / max(rate, 1e-9))


# ------------------------------------------------------- files and the modes


def read_image(path, image_shape) -> np.ndarray:
  """An 8-bit image file as uint8 [H, W, C]; clear errors otherwise. The
  size and mode come from the header, checked before any pixel is decoded:
  a small file that claims a huge image is refused, not decompressed."""
  H, W, C = image_shape
  expected = {1: 'L', 3: 'RGB'}.get(C)
  try:
    with warnings.catch_warnings():
      # The size is checked below, before decoding: no warning needed.
      warnings.simplefilter('ignore', Image.DecompressionBombWarning)
      with Image.open(path) as im:
        mode, size = im.mode, im.size
        frames = getattr(im, 'n_frames', 1)
        if (size[1], size[0]) == (H, W) and mode == expected and (
            frames == 1):
          im.load()
          array = np.asarray(im)
  except Image.DecompressionBombError as e:
    raise CompressionError(f'{path} claims a huge image ({e}); compress '
                           f'takes {W}x{H} images.') from e
  except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
    raise CompressionError(f'{path} is not an image file Pillow can read '
                           f'({e}).') from e
  if frames > 1:
    raise CompressionError(f'{path} holds {frames} frames; compress takes '
                           'single images.')
  if mode != expected:
    raise CompressionError(
        f'{path} is a {mode!r} image; this model codes 8-bit '
        f'{"grayscale" if C == 1 else "RGB"} images (Pillow mode '
        f'{expected!r}, {C} channel{"s" if C > 1 else ""}). Converting would '
        'change its pixels, so it is not done silently.')
  if (size[1], size[0]) != (H, W):
    raise CompressionError(
        f'{path} is {size[0]}x{size[1]} (width x height); this model codes '
        f'{W}x{H} images.')
  return array.reshape(H, W, C)


def _files(folder: epath.Path, suffix: str | None = None) -> list[epath.Path]:
  """The non-hidden files of a folder (ending in ``suffix``), sorted."""
  files = sorted(p for p in folder.iterdir()
                 if not p.name.startswith('.') and p.is_file()
                 and (suffix is None or p.name.endswith(suffix)))
  if not files:
    raise CompressionError(f'{folder} has no {suffix + " " if suffix else ""}'
                           'files.')
  return files


def load_inputs(config, image_shape
                ) -> tuple[np.ndarray, list[str] | None, str]:
  """compress.input: an image file, a folder of them, or tfds:SPLIT.

  Returns images, names (file stems; None for a TFDS split) and a
  description. Every image is read and checked before any coding starts.
  """
  spec = config.compress.input
  limit = config.compress.num_images
  if not spec:
    raise CompressionError(
        'set --config.compress.input: an image file, a folder of images, or '
        'tfds:SPLIT (e.g. tfds:test) of the config\'s dataset.')
  if limit < 0:
    raise CompressionError(f'compress.num_images must be >= 0 (0: all), got '
                           f'{limit}.')
  if spec.startswith('tfds:'):
    split = spec[len('tfds:'):]
    builder = input_pipeline.get_builder(config)
    if split not in builder.info.splits:
      raise CompressionError(
          f'{config.dataset} has no split {split!r}; it has '
          f'{sorted(builder.info.splits)}.')
    source = input_pipeline.open_split(builder, split, per_process=False)
    n = len(source) if not limit else min(limit, len(source))
    if not n:
      raise CompressionError(f'{config.dataset} {split} has no images.')
    f = config.get('subsample', 1)
    images = np.stack([ex['image'] for ex in source.__getitems__(
        list(range(n)))])[:, ::f, ::f]
    return images, None, f'{config.dataset} {split} ({n} images)'
  path = epath.Path(spec)
  if not path.exists():
    raise CompressionError(f'compress.input {spec} does not exist.')
  files = _files(path) if path.is_dir() else [path]
  if limit:
    files = files[:limit]
  for p in files:   # names are stored as UTF-8
    try:
      p.name.encode('utf-8')
    except UnicodeEncodeError as e:
      raise CompressionError(
          f'{os.fsencode(p)!r}: the file name is not valid UTF-8, so it '
          'cannot be stored; rename the file.') from e
  images = np.stack([read_image(p, image_shape) for p in files])
  return images, [p.stem for p in files], f'{spec} ({len(files)} images)'


def _check_one_process() -> None:
  if jax.process_count() > 1:
    raise CompressionError(
        'compress and decompress run in one process: start them without '
        '--distributed (one host codes a file in sequence).')


def _output(config, folder: bool) -> epath.Path:
  """compress.output: set, and new (a folder may exist if empty)."""
  if not config.compress.output:
    raise CompressionError('set --config.compress.output: the file (or, for '
                           'decompress and compress.per_image, the folder) '
                           'to write.')
  path = epath.Path(config.compress.output)
  parent = path.parent
  while not parent.exists() and parent != parent.parent:
    parent = parent.parent
  if not parent.is_dir():
    raise CompressionError(f'compress.output {path} lies under {parent}, '
                           'which is a file, not a folder; give another '
                           'path.')
  if os.path.islink(path):
    raise CompressionError(f'compress.output {path} is a symbolic link; give '
                           'a new path.')
  if path.exists() and not (folder and path.is_dir()
                            and not any(path.iterdir())):
    raise CompressionError(
        f'compress.output {path} already exists; choose a new '
        f'{"folder" if folder else "file"} (it is never overwritten).')
  return path


def _umask() -> int:
  mask = os.umask(0)
  os.umask(mask)
  return mask


_UMASK = _umask()   # read once: os.umask can only be read by setting it


def _readable(path) -> None:
  """Permissions of a new file or folder under the umask (mkstemp gives
  0600)."""
  os.chmod(path, (0o777 if os.path.isdir(path) else 0o666) & ~_UMASK)


def _write_folder(dst: epath.Path, files: dict[str, bytes]) -> None:
  """Writes every file into a temporary sibling, then renames it into place
  (which fails if ``dst`` has become non-empty): an interrupted or failed
  run leaves no partial output."""
  dst.parent.mkdir(parents=True, exist_ok=True)
  tmp = tempfile.mkdtemp(prefix=f'.{dst.name}.partial-', dir=dst.parent)
  try:
    for name, data in files.items():
      if os.path.basename(name) != name or name.startswith('.'):
        raise CompressionError(f'refusing to write {name!r}: not a plain '
                               'file name.')
      path = os.path.join(tmp, name)
      with open(path, 'xb') as f:
        f.write(data)
      _readable(path)
    _readable(tmp)
    try:
      os.rename(tmp, dst)   # onto an empty folder, or fails
    except OSError as e:
      raise CompressionError(f'cannot move the output into {dst} ({e}); '
                             'nothing was overwritten.') from e
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise


def _write_file(dst: epath.Path, data: bytes) -> None:
  """Writes a temporary sibling, then links it to ``dst`` (which fails if
  ``dst`` has appeared meanwhile: nothing is overwritten)."""
  dst.parent.mkdir(parents=True, exist_ok=True)
  fd, tmp = tempfile.mkstemp(prefix=f'.{dst.name}.partial-', dir=dst.parent)
  try:
    with os.fdopen(fd, 'wb') as f:
      f.write(data)
    _readable(tmp)
    try:
      os.link(tmp, dst)
    except FileExistsError:
      raise
    except OSError:   # no hard links here (FAT, some network mounts)
      with open(dst, 'xb') as f:   # ours from here on: removed if unfinished
        try:
          f.write(data)
        except BaseException:
          os.remove(dst)
          raise
  except FileExistsError as e:
    raise CompressionError(f'{dst} appeared while compressing; it was not '
                           'overwritten.') from e
  finally:
    with contextlib.suppress(FileNotFoundError):
      os.remove(tmp)


def compress_checkpoint(config: ml_collections.ConfigDict,
                        workdir: str) -> str:
  """--mode=compress: compress.input -> compress.output (a .gpx file, or with
  compress.per_image a folder of one .gpx per image)."""
  _check_one_process()
  per_image = config.compress.per_image
  out = _output(config, folder=per_image)
  trainer = train.Trainer(config)
  codec = Codec.from_workdir(config, workdir, config.compress.step,
                             trainer=trainer)
  images, names, what = load_inputs(config, trainer.spec.image_shape)
  if per_image and names is None:
    names = [f'{k:05d}' for k in range(len(images))]
  logging.info('Compressing %s with the model of step %d (fingerprint %s).',
               what, codec.step, codec.fingerprint.hex())
  start = time.time()
  if per_image:
    files = codec.compress_each(images, names, progress=True)
    _write_folder(out, {f'{s}{SUFFIX}': d for s, d in zip(names, files)})
    size = sum(len(d) for d in files)
  else:
    data = codec.compress(images, names, progress=True)
    _write_file(out, data)
    size = len(data)
  logging.info('Wrote %s: %d images, %d bytes, %.4f bits/dim (header '
               'included), %.1f images/s.', out, len(images), size,
               8 * size / images.size, len(images) / (time.time() - start))
  return str(out)


def decompress_checkpoint(config: ml_collections.ConfigDict,
                          workdir: str) -> str:
  """--mode=decompress: compress.input (a .gpx file or a folder of them) ->
  PNG files in the new folder compress.output. Uses the checkpoint step the
  files name (compress.step is ignored)."""
  _check_one_process()
  spec = config.compress.input
  if not spec:
    raise CompressionError('set --config.compress.input: a .gpx file or a '
                           'folder of them.')
  src = epath.Path(spec)
  if not src.exists():
    raise CompressionError(f'compress.input {spec} does not exist.')
  out = _output(config, folder=True)
  paths = _files(src, SUFFIX) if src.is_dir() else [src]
  blobs = {p: p.read_bytes() for p in paths}
  headers = {p: read_header(d, str(p)) for p, d in blobs.items()}
  steps = sorted({h.step for h in headers.values()})
  if len(steps) > 1:
    raise CompressionError(f'{spec} holds files of several checkpoint steps '
                           f'{steps}; decompress them separately.')
  if config.compress.step is not None and config.compress.step != steps[0]:
    logging.warning('compress.step = %d is ignored: the files name step %d.',
                    config.compress.step, steps[0])
  codec = Codec.from_workdir(config, workdir, steps[0])
  for p, h in headers.items():   # all checked before any decoding
    codec.check_header(h, str(p))
  pngs, start, count = {}, time.time(), 0
  for p, data in blobs.items():
    images, names = codec.decompress(data, progress=len(paths) == 1,
                                     what=str(p))
    if names is None:
      width = max(5, len(str(len(images) - 1)))
      names = [f'{k:0{width}d}' for k in range(len(images))]
      if len(paths) > 1:
        names = [p.stem] if len(images) == 1 else [
            f'{p.stem}_{x}' for x in names]
    for name, image in zip(names, images):
      if f'{name}.png' in pngs:
        raise CompressionError(f'two images decode to {name}.png; decompress '
                               'the files separately.')
      pngs[f'{name}.png'] = _png(image)
    count += len(images)
  _write_folder(out, pngs)
  logging.info('Decompressed %d images into %s (%.1f images/s); every chunk '
               'matched its pixel digest.', count, out,
               count / (time.time() - start))
  return str(out)


def _png(image: np.ndarray) -> bytes:
  buf = io.BytesIO()
  Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image).save(
      buf, format='PNG')
  return buf.getvalue()
