"""Lossless image compression with a trained model: the codec behind
--mode=compress/decompress (modes.py reads and writes the files).

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

import dataclasses
import hashlib
import json
import math
import struct
import time

from absl import logging
import constriction
import jax
import ml_collections
import numpy as np

from gated_pixelcnn import container
from gated_pixelcnn import figures
from gated_pixelcnn import runs
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
  fields but ``conv_impl``, which the coder's cached path does not use),
  checkpoint step and parameters."""
  fields = {f.name: getattr(model, f.name) for f in dataclasses.fields(model)
            if f.name not in ('parent', 'name', 'conv_impl')}
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
      trainer = runs.make_trainer(config)
    check_codable(trainer.model, config)
    _, state = runs.restore(config, workdir, read_only=True, step=step,
                                 trainer=trainer)
    return cls(trainer.model,
               figures.host_params(trainer.eval_params(state)),
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
