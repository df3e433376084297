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
induction over t the canvases, hence the frequencies, are identical. What this
cannot cover is a different machine computing the same program's floats
differently (another platform or XLA version): every chunk's pixels carry a
digest, checked after decoding, so such a file fails with a clear error
instead of giving a wrong image.

File format (little-endian), version 1:

  magic           8 bytes  b'\\x89GPX\\r\\n\\x1a\\n'
  version         u8
  fingerprint     16 bytes sha256(model config, checkpoint step,
                           parameter digest)[:16]
  step            u32      checkpoint step of the model
  platform        u8       0 cpu, 1 gpu, 2 tpu, 3 other (where it was encoded)
  precision       u8       bits of the quantised distributions (20)
  H, W            u16 each
  C               u8
  num_images      u32
  batch           u32      images coded together (the decoder's batch shape)
  names           u32 length, then zlib('\\n'.join(stems)) (length 0: none)
  chunk table     per chunk of `batch` images: u32 payload words, 8-byte
                  blake2b digest of the chunk's pixels
  payload         each chunk's range-coder words (u32)
  crc32           u32 of everything above
"""

from __future__ import annotations

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
import zlib

from absl import logging
import constriction
from etils import epath
import jax
import ml_collections
import numpy as np
from PIL import Image
from PIL import UnidentifiedImageError

from gated_pixelcnn import checkpointing
from gated_pixelcnn import generate
from gated_pixelcnn import input_pipeline
from gated_pixelcnn import models
from gated_pixelcnn import sampling
from gated_pixelcnn import train

MAGIC = b'\x89GPX\r\n\x1a\n'
VERSION = 1
SUFFIX = '.gpx'
PLATFORMS = ('cpu', 'gpu', 'tpu', 'other')
_FIXED = struct.Struct('<B16sIBBHHBII')   # version .. batch
_CHUNK = struct.Struct('<I8s')            # payload words, pixel digest
_U32 = struct.Struct('<I')
# The range coder's model: the quantised frequencies of each sub-pixel, as
# float64 (exact for integers), renormalised by constriction deterministically.
_FAMILY = constriction.stream.model.Categorical(perfect=False)


class CompressionError(ValueError):
  """Bad input for compress/decompress; the message says what to do."""


@dataclasses.dataclass(frozen=True)
class Header:
  """What a compressed file says about itself (see the module docstring)."""
  fingerprint: bytes
  step: int
  platform: str
  precision: int
  image_shape: tuple[int, int, int]
  num_images: int
  batch: int
  names: list[str] | None
  chunks: list[tuple[int, bytes]]   # (payload words, pixel digest)
  payload_offset: int


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


def model_fingerprint(model_config, step: int, params) -> bytes:
  """16 bytes naming the exact model: its config, checkpoint step and
  parameters."""
  if isinstance(model_config, ml_collections.ConfigDict):
    model_config = model_config.to_dict()
  h = hashlib.sha256(b'gated_pixelcnn compression model\n')
  h.update(json.dumps(model_config, sort_keys=True).encode())
  h.update(struct.pack('<Q', step))
  h.update(params_digest(params))
  return h.digest()[:16]


def pixel_digest(images: np.ndarray) -> bytes:
  return hashlib.blake2b(np.ascontiguousarray(images, np.uint8).tobytes(),
                         digest_size=8).digest()


def _platform() -> str:
  name = jax.devices()[0].platform
  return name if name in PLATFORMS else 'other'


def check_codable(model, config=None) -> None:
  """Only unconditional Gated PixelCNNs: the cached loop needs a Gated
  PixelCNN, and a conditional model would need its labels or h sent too."""
  name = config.model.name if config is not None else type(model).__name__
  if type(model) is not models.GatedPixelCNN:  # pylint: disable=unidiomatic-typecheck
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
  batch); a file decodes with the batch size it was written with.
  """

  def __init__(self, model, params, *, image_shape: tuple[int, int, int],
               model_config, step: int, batch_size: int = 256):
    check_codable(model)
    if batch_size < 1:
      raise CompressionError(f'batch_size must be >= 1, got {batch_size}.')
    H, W, C = image_shape
    if C != model.num_channels:
      raise CompressionError(f'image_shape {image_shape} has {C} channels; '
                             f'the model has {model.num_channels}.')
    self.model = model
    self.variables = {'params': params}
    self.image_shape = tuple(int(d) for d in image_shape)
    self.step = int(step)
    self.batch_size = batch_size
    self.fingerprint = model_fingerprint(model_config, self.step, params)

  @classmethod
  def from_workdir(cls, config: ml_collections.ConfigDict, workdir: str,
                   step: int | None = None, batch_size: int | None = None,
                   trainer: train.Trainer | None = None) -> Codec:
    """The model of ``config`` at checkpoint ``step`` (None: the newest) in
    ``workdir``, read-only; images of the training data's shape."""
    if trainer is None:
      trainer = train.Trainer(config)
    check_codable(trainer.model, config)
    state = restore(config, workdir, trainer, step)
    if batch_size is None:
      batch_size = config.compress.batch_size
    return cls(trainer.model,
               generate.host_params(trainer.eval_params(state)),
               image_shape=trainer.spec.image_shape,
               model_config=config.model, step=int(state.step),
               batch_size=batch_size)

  # -------------------------------------------------------------- encode

  def check_images(self, images) -> np.ndarray:
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[1:] != self.image_shape:
      raise CompressionError(
          f'images must be [N, {", ".join(map(str, self.image_shape))}] '
          f'(the model\'s image shape), got shape {images.shape}.')
    if images.dtype != np.uint8:
      if not np.issubdtype(images.dtype, np.integer) or (
          images.size and (images.min() < 0 or images.max() > 255)):
        raise CompressionError(f'images must be 8-bit values 0..255, got '
                               f'dtype {images.dtype}.')
      images = images.astype(np.uint8)
    return images

  def compress(self, images, names: list[str] | None = None,
               progress: bool = False) -> bytes:
    """A compressed file holding ``images`` (uint8 [N, H, W, C]) and their
    optional ``names`` (file stems, restored by decompress)."""
    images = self.check_images(images)
    names = _check_names(names, len(images))
    n = len(images)
    batch = max(1, min(self.batch_size, n))
    chunks, payload = [], []
    start = time.time()
    for k, lo in enumerate(range(0, n, batch)):
      part = images[lo:lo + batch]
      words = self._encode_chunk(part, batch)
      chunks.append((len(words), pixel_digest(part)))
      payload.append(words.astype('<u4').tobytes())
      if progress:
        _log_progress('Compressed', lo + len(part), n, start,
                      sum(map(len, payload)) * 8, self.image_shape)
    return self._container(n, batch, names, chunks, b''.join(payload))

  def compress_each(self, images, names: list[str] | None = None,
                    progress: bool = False) -> list[bytes]:
    """One self-contained file per image (each coded alone, batch 1)."""
    images = self.check_images(images)
    names = _check_names(names, len(images))
    start, out = time.time(), []
    for k in range(len(images)):
      words = self._encode_chunk(images[k:k + 1], 1)
      out.append(self._container(
          1, 1, None if names is None else [names[k]],
          [(len(words), pixel_digest(images[k:k + 1]))],
          words.astype('<u4').tobytes()))
      if progress and ((k + 1) % 64 == 0 or k + 1 == len(images)):
        _log_progress('Compressed', k + 1, len(images), start,
                      sum(len(d) for d in out) * 8, self.image_shape)
    return out

  def _container(self, n, batch, names, chunks, payload) -> bytes:
    H, W, C = self.image_shape
    blob = b'' if names is None else zlib.compress('\n'.join(names).encode(),
                                                   9)
    parts = [MAGIC,
             _FIXED.pack(VERSION, self.fingerprint, self.step,
                         PLATFORMS.index(_platform()),
                         sampling.PRECISION_BITS, H, W, C, n, batch),
             _U32.pack(len(blob)), blob,
             b''.join(_CHUNK.pack(w, d) for w, d in chunks), payload]
    body = b''.join(parts)
    return body + _U32.pack(zlib.crc32(body))

  def _run(self, coder, batch) -> np.ndarray:
    return sampling.run_coder(self.model, self.variables, coder,
                              batch_size=batch, image_shape=self.image_shape)

  def _encode_chunk(self, images: np.ndarray, batch: int) -> np.ndarray:
    n = len(images)
    padded = np.zeros((batch, math.prod(self.image_shape)), np.int32)
    padded[:n] = images.reshape(n, -1)   # column t = sub-pixel t
    encoder = constriction.stream.queue.RangeEncoder()
    position = [0]

    def coder(t, freqs):
      if t != position[0]:
        raise RuntimeError(f'sub-pixel {t} coded out of order (expected '
                           f'{position[0]}).')
      position[0] += 1
      values = padded[:, t]
      encoder.encode(values[:n], _FAMILY, freqs[:n].astype(np.float64))
      return values

    canvas = self._run(coder, batch)
    if position[0] != padded.shape[1] or not np.array_equal(
        canvas[:n].reshape(n, -1), padded[:n]):
      raise RuntimeError('the coding loop did not write the images it coded.')
    return encoder.get_compressed()

  # -------------------------------------------------------------- decode

  def check_header(self, header: Header, what: str = 'the file') -> None:
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
    decoding if the pixels differ from those compressed (this machine
    computes the model's probabilities differently): never a wrong image.
    """
    header = read_header(data, what)
    self.check_header(header, what)
    if header.platform != _platform():
      logging.warning('%s was compressed on %s, decoding on %s: the decoded '
                      'pixels are checked against the stored digest.', what,
                      header.platform, _platform())
    out = np.zeros((header.num_images,) + self.image_shape, np.uint8)
    offset, start = header.payload_offset, time.time()
    for k, (num_words, digest) in enumerate(header.chunks):
      lo = k * header.batch
      n = min(header.batch, header.num_images - lo)
      words = np.frombuffer(data, '<u4', num_words, offset).astype(np.uint32)
      offset += 4 * num_words
      images = self._decode_chunk(words, n, header.batch, what)
      if pixel_digest(images) != digest:
        raise CompressionError(
            f'decoding {what} gave pixels that differ from those compressed '
            f'(images {lo}..{lo + n - 1}): this machine ({_platform()}, JAX '
            f'{jax.__version__}) computes the model\'s probabilities '
            f'differently from the one that compressed it '
            f'({header.platform}). Decompress on the kind of machine and '
            f'software that compressed it. Nothing was written.')
      out[lo:lo + n] = images
      if progress:
        _log_progress('Decompressed', lo + n, header.num_images, start,
                      offset * 8, self.image_shape)
    return out, header.names

  def _decode_chunk(self, words, n, batch, what) -> np.ndarray:
    decoder = constriction.stream.queue.RangeDecoder(words)

    def coder(t, freqs):
      del t
      values = np.zeros(batch, np.int32)
      values[:n] = decoder.decode(_FAMILY, freqs[:n].astype(np.float64))
      return values

    try:
      canvas = self._run(coder, batch)
    except (ValueError, RuntimeError) as e:
      raise CompressionError(f'cannot decode {what}: {e}') from e
    return canvas[:n]


def _check_names(names, n):
  if names is None:
    return None
  names = [str(x) for x in names]
  if len(names) != n:
    raise CompressionError(f'{len(names)} names for {n} images.')
  for x in names:
    if not x or '\n' in x or '/' in x or x in ('.', '..'):
      raise CompressionError(f'bad image name {x!r}: names are file stems '
                             '(no "/", no newline).')
  if len(set(names)) != n:
    dup = sorted({x for x in names if names.count(x) > 1})
    raise CompressionError(f'image names must be unique; repeated: {dup[:5]} '
                           '(e.g. a.png and a.jpg both decompress to a.png).')
  return names


def _log_progress(verb, done, total, start, bits, image_shape):
  elapsed = time.time() - start
  rate = done / max(elapsed, 1e-9)
  logging.info('%s %d/%d images: %.4f bits/dim (payload), %.1f images/s, '
               'ETA %.0f s.', verb, done, total,
               bits / (done * math.prod(image_shape)), rate,
               (total - done) / max(rate, 1e-9))


def read_header(data: bytes, what: str = 'the file') -> Header:
  """Parses and checks a compressed file (magic, version, checksum, layout)
  without a model; CompressionError says what is wrong."""
  if len(data) < len(MAGIC) or data[:len(MAGIC)] != MAGIC:
    raise CompressionError(
        f'{what} is not a gated_pixelcnn compressed file (it does not start '
        f'with the {SUFFIX} magic bytes); decompress takes files written by '
        '--mode=compress.')
  minimum = len(MAGIC) + _FIXED.size + _U32.size * 2
  if len(data) < minimum:
    raise CompressionError(f'{what} is truncated ({len(data)} bytes): it '
                           'cannot be decoded.')
  version = data[len(MAGIC)]
  if version != VERSION:
    raise CompressionError(
        f'{what} is format version {version}; this gated_pixelcnn reads '
        f'version {VERSION}. Use the gated_pixelcnn version that wrote it.')
  (crc,) = _U32.unpack_from(data, len(data) - 4)
  if zlib.crc32(data[:-4]) != crc:
    raise CompressionError(
        f'{what} is truncated or corrupted (its CRC-32 does not match): it '
        'cannot be decoded. Nothing was written.')
  try:
    return _parse(data)
  except (struct.error, zlib.error, UnicodeDecodeError, ValueError) as e:
    raise CompressionError(f'{what} is malformed ({e}) although its checksum '
                           'matches: it was not written by this version of '
                           'gated_pixelcnn.') from e


def _parse(data: bytes) -> Header:
  pos = len(MAGIC)
  (_, fingerprint, step, platform, precision, H, W, C, n,
   batch) = _FIXED.unpack_from(data, pos)
  pos += _FIXED.size
  (blob_len,) = _U32.unpack_from(data, pos)
  pos += _U32.size
  names = None
  if blob_len:
    names = zlib.decompress(data[pos:pos + blob_len]).decode().split('\n')
    if len(names) != n:
      raise ValueError(f'{len(names)} names for {n} images')
  pos += blob_len
  if platform >= len(PLATFORMS) or min(H, W, C, batch) < 1 or n < 1:
    raise ValueError('bad header fields')
  num_chunks = -(-n // batch)
  chunks = [_CHUNK.unpack_from(data, pos + k * _CHUNK.size)
            for k in range(num_chunks)]
  pos += num_chunks * _CHUNK.size
  if pos + 4 * sum(w for w, _ in chunks) != len(data) - 4:
    raise ValueError('payload length does not match the chunk table')
  return Header(fingerprint=fingerprint, step=step,
                platform=PLATFORMS[platform], precision=precision,
                image_shape=(H, W, C), num_images=n, batch=batch, names=names,
                chunks=chunks, payload_offset=pos)


# ------------------------------------------------------- files and the modes


def restore(config, workdir: str, trainer: train.Trainer,
            step: int | None) -> train.TrainState:
  """The state at ``step`` (None: the newest readable), never moving files."""
  manager = checkpointing.create_manager(workdir, config.max_to_keep)
  try:
    if step is None:
      restored = checkpointing.restore_latest(
          manager, workdir, trainer.abstract_state, read_only=True)
      if restored is None:
        raise checkpointing.CheckpointError(
            f'no checkpoint in {checkpointing.checkpoint_dir(workdir)}; '
            'train first (--mode=train) or point --workdir at a trained run.')
      return restored[0]
    return checkpointing.restore_step(manager, workdir,
                                      trainer.abstract_state, step)
  finally:
    manager.close()


def read_image(path, image_shape) -> np.ndarray:
  """An 8-bit image file as uint8 [H, W, C]; clear errors otherwise."""
  H, W, C = image_shape
  expected = {1: 'L', 3: 'RGB'}.get(C)
  try:
    with Image.open(path) as im:
      im.load()
      mode, size = im.mode, im.size
      array = np.asarray(im)
  except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
    raise CompressionError(f'{path} is not an image file Pillow can read '
                           f'({e}).') from e
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


def _image_files(folder: epath.Path) -> list[epath.Path]:
  files = sorted(p for p in folder.iterdir()
                 if not p.name.startswith('.') and p.is_file())
  if not files:
    raise CompressionError(f'{folder} has no files to compress.')
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
    f = config.get('subsample', 1)
    images = np.stack([ex['image'] for ex in source.__getitems__(
        list(range(n)))])[:, ::f, ::f]
    return images, None, f'{config.dataset} {split} ({n} images)'
  path = epath.Path(spec)
  if not path.exists():
    raise CompressionError(f'compress.input {spec} does not exist.')
  files = _image_files(path) if path.is_dir() else [path]
  if limit:
    files = files[:limit]
  images = np.stack([read_image(p, image_shape) for p in files])
  return images, [p.stem for p in files], f'{spec} ({len(files)} images)'


def _check_one_process() -> None:
  if jax.process_count() > 1:
    raise CompressionError(
        'compress and decompress run in one process: start them without '
        '--distributed (one host codes a file in sequence).')


def _check_new_output(path: epath.Path, kind: str) -> None:
  if path.exists() and not (path.is_dir() and not any(path.iterdir())):
    raise CompressionError(
        f'compress.output {path} already exists; choose a new {kind} (it is '
        'never overwritten).')


def _output(config) -> epath.Path:
  if not config.compress.output:
    raise CompressionError('set --config.compress.output: the file (or, for '
                           'decompress and compress.per_image, the folder) '
                           'to write.')
  return epath.Path(config.compress.output)


def _write_folder(dst: epath.Path, files: dict[str, bytes]) -> None:
  """Writes every file into a temporary sibling, then renames it into place:
  an interrupted run leaves no partial output."""
  dst.parent.mkdir(parents=True, exist_ok=True)
  tmp = epath.Path(tempfile.mkdtemp(prefix=f'.{dst.name}.partial-',
                                    dir=dst.parent))
  try:
    for name, data in files.items():
      (tmp / name).write_bytes(data)
    if dst.exists():
      dst.rmdir()   # empty (checked before)
    tmp.rename(dst)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise


def _write_file(dst: epath.Path, data: bytes) -> None:
  dst.parent.mkdir(parents=True, exist_ok=True)
  fd, tmp = tempfile.mkstemp(prefix=f'.{dst.name}.partial-', dir=dst.parent)
  try:
    with os.fdopen(fd, 'wb') as f:
      f.write(data)
    os.replace(tmp, dst)
  except BaseException:
    if os.path.exists(tmp):
      os.remove(tmp)
    raise


def compress_checkpoint(config: ml_collections.ConfigDict,
                        workdir: str) -> str:
  """--mode=compress: compress.input -> compress.output (a .gpx file, or with
  compress.per_image a folder of one .gpx per image)."""
  _check_one_process()
  out = _output(config)
  _check_new_output(out, 'folder' if config.compress.per_image else 'file')
  trainer = train.Trainer(config)
  check_codable(trainer.model, config)
  images, names, what = load_inputs(config, trainer.spec.image_shape)
  if config.compress.per_image:
    stems = names or [f'{k:05d}' for k in range(len(images))]
    _check_names(stems, len(images))
  codec = Codec.from_workdir(config, workdir, config.compress.step,
                             trainer=trainer)
  logging.info('Compressing %s with the model of step %d (fingerprint %s).',
               what, codec.step, codec.fingerprint.hex())
  start = time.time()
  if config.compress.per_image:
    files = codec.compress_each(images, stems, progress=True)
    _write_folder(out, {f'{s}{SUFFIX}': d for s, d in zip(stems, files)})
    size = sum(len(d) for d in files)
  else:
    data = codec.compress(images, names, progress=True)
    _write_file(out, data)
    size = len(data)
  dims = images.size
  logging.info('Wrote %s: %d images, %d bytes, %.4f bits/dim (header '
               'included), %.1f images/s.', out, len(images), size, 8 * size / dims,
               len(images) / (time.time() - start))
  return str(out)


def decompress_checkpoint(config: ml_collections.ConfigDict,
                          workdir: str) -> str:
  """--mode=decompress: compress.input (a .gpx file or a folder of them) ->
  PNG files in the folder compress.output."""
  _check_one_process()
  spec = config.compress.input
  if not spec:
    raise CompressionError('set --config.compress.input: a .gpx file or a '
                           'folder of them.')
  src = epath.Path(spec)
  if not src.exists():
    raise CompressionError(f'compress.input {spec} does not exist.')
  out = _output(config)
  _check_new_output(out, 'folder')
  paths = _image_files(src) if src.is_dir() else [src]
  blobs = {p: p.read_bytes() for p in paths}
  headers = {p: read_header(d, str(p)) for p, d in blobs.items()}
  steps = sorted({h.step for h in headers.values()})
  if len(steps) > 1:
    raise CompressionError(f'{spec} holds files of several checkpoint steps '
                           f'{steps}; decompress them separately.')
  codec = Codec.from_workdir(config, workdir, steps[0])
  for p, h in headers.items():   # all checked before any decoding
    codec.check_header(h, str(p))
  pngs, start, count = {}, time.time(), 0
  for p, data in blobs.items():
    images, names = codec.decompress(data, progress=len(paths) == 1,
                                     what=str(p))
    if names is None:
      width = max(5, len(str(len(images) - 1)))
      names = ([p.stem] if len(paths) > 1 and len(images) == 1 else
               [f'{k:0{width}d}' for k in range(len(images))])
      if len(paths) > 1 and len(images) > 1:
        names = [f'{p.stem}_{x}' for x in names]
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
