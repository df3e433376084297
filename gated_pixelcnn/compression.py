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
import functools
import hashlib
import json
import math
import struct
import time

from absl import logging
import constriction
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from gated_pixelcnn import container
from gated_pixelcnn import figures
from gated_pixelcnn import likelihood
from gated_pixelcnn import runs
from gated_pixelcnn import sampling
from gated_pixelcnn import train

CompressionError = container.CompressionError
read_header = container.read_header
SUFFIX = container.SUFFIX
# The range coder's model: the quantised frequencies of each sub-pixel, as
# float64 (exact for integers), renormalised by constriction deterministically.
_FAMILY = constriction.stream.model.Categorical(perfect=False)
# One-image files: sub-pixels whose frequencies are range-coded together.
_SLAB = 256
# best_labels: sub-pixels per forward pass (logits: 1 KiB each).
_NLL_SUBPIXELS = 2**18


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


def check_codable(model, config=None, labels_ok: bool = False) -> None:
  """Only Gated PixelCNNs (the cached loop needs one), unconditional unless
  ``labels_ok`` (one-image files carry their label)."""
  name = config.model.name if config is not None else type(model).__name__
  if not model.codable:
    raise CompressionError(
        f'compression needs a Gated PixelCNN (model.name = '
        f"'gated_pixelcnn'); {name!r} has no cached sampler loop to code "
        'with, or is conditioned on an input the decoder would not have.')
  if model.num_classes and not labels_ok:
    raise CompressionError(
        'compression needs an unconditional model: this one is '
        f'class-conditional (model.num_classes = {model.num_classes}), so '
        'the decoder would need every image\'s label. Write one file per '
        'image (compress.per_image=True, or python -m '
        'gated_pixelcnn.compress), which stores it, or use an unconditional '
        'model (configs/default.py).')


@functools.partial(jax.jit, static_argnums=0)
def _image_nll(model, variables, images, labels):
  """Each image's NLL in nats (the labels' class)."""
  images = images.astype(jnp.int32)
  return -likelihood.log_prob(model.apply(variables, images, labels), images)


class Codec:
  """Compresses and decompresses images of one shape with one model.

    codec = Codec.from_workdir(config, workdir)           # newest checkpoint
    data = codec.compress(images_uint8_NxHxWxC)           # bytes
    images, names = codec.decompress(data)                # exact

  ``batch_size`` images are coded together (one range-coder stream per
  batch); a file decodes with the batch size it was written with. Each new
  batch size compiles the coding loop once.

  One-image files (`compress_files`, `decompress_files`): any image size up
  to container.MAX_SIDE, class-conditional models too; each file holds one
  range-coder stream and about 13 bytes more, and files are coded
  ``file_batch`` at a time in a batch of that fixed shape.
  """

  def __init__(self, model, params, *, image_shape: tuple[int, int, int],
               step: int, batch_size: int = 256, file_batch: int = 64):
    check_codable(model, labels_ok=True)
    container.check_file_batch(file_batch)
    self.file_batch = file_batch
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
    check_codable(trainer.model, config, labels_ok=True)
    _, state = runs.restore(config, workdir, read_only=True, step=step,
                                 trainer=trainer)
    return cls(trainer.model,
               figures.host_params(trainer.eval_params(state)),
               image_shape=trainer.spec.image_shape, step=int(state.step),
               batch_size=(config.compress.batch_size if batch_size is None
                           else batch_size),
               file_batch=config.compress.file_batch)

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
    check_codable(self.model)
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

  # ------------------------------------------------- one-image files

  def batch_for(self, image_shape) -> int:
    """The coding batch of one-image files of ``image_shape``: file_batch,
    halved until it is within container.batch_fits's bounds."""
    batch = self.file_batch
    while batch > 1 and not container.batch_fits(batch, image_shape):
      batch //= 2
    return batch

  def _check_image(self, image, k: int) -> np.ndarray:
    image = np.asarray(image)
    if image.ndim == 2 and self.model.num_channels == 1:
      image = image[..., None]
    C = self.model.num_channels
    if image.ndim != 3 or image.shape[2] != C:
      raise CompressionError(
          f'image {k} has shape {image.shape}; this model codes [H, W, {C}] '
          'images.')
    if image.dtype != np.uint8:
      if not np.issubdtype(image.dtype, np.integer) or image.size and (
          image.min() < 0 or image.max() > 255):
        raise CompressionError(f'image {k} must hold 8-bit integers 0..255 '
                               f'(got {image.dtype}).')
      image = image.astype(np.uint8)
    container.check_compact_fields(image.shape, 1, 0, None)
    return image

  def _check_labels(self, labels, n: int) -> list[int | None]:
    num_classes = self.model.num_classes
    if labels is None:
      return [None] * n
    if not num_classes:
      raise CompressionError('labels given, but the model is unconditional '
                             '(model.num_classes = 0): leave them out.')
    labels = np.asarray(labels)
    if not np.issubdtype(labels.dtype, np.integer):
      raise CompressionError(f'labels must be integers 0..{num_classes - 1}'
                             f', got {labels.dtype} values.')
    labels = [int(x) for x in labels.reshape(-1)]
    if len(labels) != n or not all(0 <= x < num_classes for x in labels):
      raise CompressionError(f'give one label in 0..{num_classes - 1} per '
                             f'image ({n} images, {len(labels)} labels).')
    return labels

  def best_labels(self, images: np.ndarray) -> np.ndarray:
    """For a class-conditional model: each image's class of least NLL (about
    the smallest file), from one forward pass per class, a few images at a
    time (the logits take 1 KiB per sub-pixel)."""
    step = max(1, _NLL_SUBPIXELS // math.prod(images.shape[1:]))
    best = []
    for lo in range(0, len(images), step):
      part = jnp.asarray(images[lo:lo + step])
      nll = jnp.stack([_image_nll(self.model, self.variables, part,
                                  jnp.full(len(part), c, jnp.int32))
                       for c in range(self.model.num_classes)])
      best.append(np.asarray(jnp.argmin(nll, axis=0)))
    return np.concatenate(best)

  def compress_files(self, images, labels=None,
                     progress: bool = False) -> list[bytes]:
    """One compact file per image (uint8 [H, W, C], sizes may differ).

    A class-conditional model codes each image with its ``labels`` entry, or
    when None with the class of least NLL (about the smallest file); the
    label goes
    into the file. Images of one shape are coded `batch_for` at a time.
    """
    images = [self._check_image(x, k) for k, x in enumerate(images)]
    labels = self._check_labels(labels, len(images))
    groups = {}
    for k, image in enumerate(images):
      groups.setdefault(image.shape, []).append(k)
    out, start, done = [None] * len(images), time.time(), 0
    for shape, members in groups.items():
      # A few images code in a smaller batch (a power of two), which also
      # makes each of their files faster to decode.
      batch = min(self.batch_for(shape),
                  1 << (len(members) - 1).bit_length())
      for lo in range(0, len(members), batch):
        ks = members[lo:lo + batch]
        part = np.stack([images[k] for k in ks])
        got = [labels[k] for k in ks]
        if self.model.num_classes and None in got:
          best = self.best_labels(part)
          got = [int(b) if g is None else g for g, b in zip(got, best)]
        words = self._encode_files(part, got, batch)
        for slot, k in enumerate(ks):
          out[k] = container.pack_compact(
              fingerprint=self.fingerprint, image=images[k], batch=batch,
              slot=slot, label=got[slot], words=words[slot])
        done += len(ks)
        if progress:
          _log_progress('Compressed', done, len(images), start, None, None,
                        'files')
    return out

  def _encode_files(self, images: np.ndarray, labels, batch: int
                    ) -> list[np.ndarray]:
    """One range-coder stream per image, all coded in one batch of shape
    ``batch`` (image k in row k)."""
    n = len(images)
    padded = np.zeros((batch, math.prod(images.shape[1:])), np.int32)
    padded[:n] = images.reshape(n, -1)
    encoders = [constriction.stream.queue.RangeEncoder() for _ in range(n)]
    pending, position = [], [0]

    def flush():   # the frequencies come a sub-pixel at a time: code slabs
      if pending:
        freqs = np.stack(pending, 1).astype(np.float64)   # [n, t, 256]
        t0 = position[0] - len(pending)
        for k, encoder in enumerate(encoders):
          encoder.encode(padded[k, t0:position[0]], _FAMILY, freqs[k])
        pending.clear()

    def coder(t, freqs_Bx256):
      _check_order(t, position)
      pending.append(freqs_Bx256[:n].copy())
      if len(pending) == _SLAB:
        flush()
      return padded[:, t]

    canvas = self._run(coder, batch, images.shape[1:],
                       self._batch_labels(labels, batch))
    flush()
    if position[0] != padded.shape[1] or not np.array_equal(
        canvas[:n].reshape(n, -1), padded[:n]):
      raise RuntimeError('the coding loop did not write the images it coded.')
    return [e.get_compressed() for e in encoders]

  def _batch_labels(self, labels, batch: int) -> np.ndarray | None:
    if not self.model.num_classes:
      return None
    out = np.zeros(batch, np.int32)
    out[:len(labels)] = labels
    return out

  def read_file(self, data: bytes, what: str = 'the file'
                ) -> container.CompactHeader:
    """The header of a one-image file, checked against this model."""
    header = container.read_compact(data, what)
    model_id = self.fingerprint[:container.MODEL_ID_BYTES]
    if header.model_id != model_id:
      raise CompressionError(
          f'{what} was compressed with another model (id '
          f'{header.model_id.hex()}; this one is {model_id.hex()}). '
          'Decompress it with the model that compressed it: the pretrained '
          'model, or the run and checkpoint step that compressed it.')
    C = self.model.num_channels
    if header.image_shape[2] != C:
      raise CompressionError(f'{what} holds a {header.image_shape[2]}-channel'
                             f' image; this model codes {C}.')
    if (header.label is not None) != bool(self.model.num_classes) or (
        header.label is not None and header.label >= self.model.num_classes):
      raise CompressionError(f'{what} has label {header.label}, which this '
                             'model cannot take: it was written by another '
                             'model, or altered.')
    return header

  def decompress_files(self, files: list[bytes], whats=None,
                       progress: bool = False
                       ) -> list[tuple[np.ndarray, int | None]]:
    """(image uint8 [H, W, C], label or None) of each one-image file.

    Every header is checked before any decoding; files of one shape and
    coding batch decode together, each in the batch row it was coded in.
    Each image is checked against its file's tag after decoding: an altered
    file, or one of another model, is an error, never a wrong image.
    """
    whats = whats or [f'file {k}' for k in range(len(files))]
    if len(whats) != len(files):
      raise ValueError(f'{len(whats)} names for {len(files)} files')
    headers = [self.read_file(d, w) for d, w in zip(files, whats)]
    rounds = {}   # (shape, batch) -> list of {slot: file index}
    used = {}     # (shape, batch, slot) -> rounds holding that slot
    for k, h in enumerate(headers):
      slots = rounds.setdefault((h.image_shape, h.batch), [])
      r = used.get((h.image_shape, h.batch, h.slot), 0)
      used[h.image_shape, h.batch, h.slot] = r + 1
      if r == len(slots):
        slots.append({})
      slots[r][h.slot] = k
    out, start, done = [None] * len(files), time.time(), 0
    for (shape, batch), slots in rounds.items():
      for members in slots:
        images = self._decode_files(files, headers, whats, members, shape,
                                    batch)
        for slot, k in members.items():
          tag = container.compact_tag(self.fingerprint,
                                      files[k][:-container.TAG_BYTES],
                                      images[slot])
          if tag != files[k][-container.TAG_BYTES:]:
            raise CompressionError(
                f'cannot decompress {whats[k]}: the decoded image does not '
                'match the file\'s tag. Either the file was altered, or it '
                'was compressed with another model or on another kind of '
                f'machine than this one ({_platform()}, JAX '
                f'{jax.__version__}). Nothing was written.')
          out[k] = (images[slot], headers[k].label)
        done += len(members)
        if progress:
          _log_progress('Decompressed', done, len(files), start, None, None,
                        'files')
    return out

  def _decode_files(self, files, headers, whats, members, shape, batch):
    decoders = {slot: constriction.stream.queue.RangeDecoder(
        container.compact_words(files[k], headers[k]))
                for slot, k in members.items()}
    labels = [0] * batch
    for slot, k in members.items():
      labels[slot] = headers[k].label or 0
    position = [0]

    def coder(t, freqs_Bx256):
      _check_order(t, position)
      values = np.zeros(batch, np.int32)
      for slot, decoder in decoders.items():
        try:
          values[slot] = decoder.decode(
              _FAMILY, freqs_Bx256[slot:slot + 1].astype(np.float64))[0]
        except Exception as e:  # constriction: AssertionError on bad data
          raise CompressionError(
              f'cannot decompress {whats[members[slot]]}: the range decoder '
              f'failed ({type(e).__name__}: {e}); the file was altered, or '
              'was compressed with another model. Nothing was written.'
          ) from e
      return values

    return self._run(coder, batch, shape,
                     self._batch_labels(labels, batch))

  def _pack(self, n, batch, names, chunks) -> bytes:
    return container.pack(
        fingerprint=self.fingerprint, step=self.step, platform=_platform(),
        precision=sampling.PRECISION_BITS, image_shape=self.image_shape,
        num_images=n, batch=batch, names=names, chunks=chunks)

  def _run(self, coder, batch, image_shape=None, labels=None) -> np.ndarray:
    return sampling.run_coder(self.model, self.variables, coder,
                              batch_size=batch,
                              image_shape=image_shape or self.image_shape,
                              labels=labels)

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
    check_codable(self.model)
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
  if bits is None:
    logging.info('%s %d/%d %s, %.1f images/s, ETA %.0f s.', verb, done,
                 total, what, rate, (total - done) / max(rate, 1e-9))
    return
  logging.info('%s %d/%d images: %.4f bits/dim (%s), %.1f images/s, '
               'ETA %.0f s.', verb, done, total,
               bits / (done * math.prod(image_shape)), what, rate,
               (total - done) / max(rate, 1e-9))
