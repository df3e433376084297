"""The .gpx file: what `compression` writes around its range-coder words.

Little-endian, format version 1:

  magic           8 bytes  b'\\x89GPX\\r\\n\\x1a\\n'
  version         u8
  fingerprint     16 bytes the model (`compression.model_fingerprint`)
  step            u32      checkpoint step of the model
  platform        u8       0 cpu, 1 gpu, 2 tpu, 3 other (where it was encoded)
  precision       u8       bits of the quantised distributions
  H, W            u16 each
  C               u8
  num_images      u32      N >= 1
  batch           u32      images coded together, 1..min(N, 4096) (the
                           decoder's batch shape); the last chunk may hold
                           fewer
  names           u32 length, then zlib('\\n'.join(names)) (length 0: none)
  chunk table     per chunk of `batch` images: u32 payload words (>= 1),
                  8-byte blake2b digest of the chunk's pixels
  payload         each chunk's range-coder words (u32)
  crc32           u32 of everything above

Everything read from a file is checked (magic, CRC-32, version, field
ranges, names, lengths) before a model sees it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import struct
import zlib

import numpy as np

from gated_pixelcnn import errors

MAGIC = b'\x89GPX\r\n\x1a\n'
VERSION = 1
SUFFIX = '.gpx'
PLATFORMS = ('cpu', 'gpu', 'tpu', 'other')
# Names leave room for '.png' and a '_<index>' suffix within 255 bytes.
MAX_NAME_BYTES = 240
# Images coded together: bounds what a file can make the decoder allocate
# (every chunk has at least one payload word, so N <= MAX_BATCH * words).
MAX_BATCH = 4096
# Names are optional; a file names at most this many images with at most
# this many bytes of names in all, so that reading them allocates a bounded
# amount (~200 MB at worst) whatever a file claims.
MAX_NAMED_IMAGES = 2**20
MAX_NAMES_BYTES = 2**26
_FIXED = struct.Struct('<B16sIBBHHBII')   # version .. batch
_CHUNK = struct.Struct('<I8s')            # payload words, pixel digest
_U32 = struct.Struct('<I')
_LIMITS = {'step': (0, 2**32 - 1), 'height': (1, 2**16 - 1),
           'width': (1, 2**16 - 1), 'channels': (1, 255),
           'number of images': (1, 2**32 - 1)}


class CompressionError(errors.UserError, ValueError):
  """Bad input for compress/decompress; the message says what to do."""


@dataclasses.dataclass(frozen=True)
class Header:
  """What a compressed file says about itself."""
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

  @property
  def overhead_bytes(self) -> int:
    """Everything but the range-coder words."""
    return self.payload_offset + _U32.size

  def chunk_images(self, k: int) -> tuple[int, int]:
    """First image and number of images of chunk k."""
    lo = k * self.batch
    return lo, min(self.batch, self.num_images - lo)


def pixel_digest(images: np.ndarray) -> bytes:
  return hashlib.blake2b(np.ascontiguousarray(images, np.uint8).tobytes(),
                         digest_size=8).digest()


def check_fields(step: int, image_shape, num_images: int | None = None):
  """Values the format can hold, checked before any coding."""
  values = {'step': step, 'height': image_shape[0], 'width': image_shape[1],
            'channels': image_shape[2]}
  if num_images is not None:
    values['number of images'] = num_images
    if num_images < 1:
      raise CompressionError('nothing to compress: no images given.')
  for what, value in values.items():
    lo, hi = _LIMITS[what]
    if not lo <= value <= hi:
      raise CompressionError(f'{what} {value} does not fit the {SUFFIX} '
                             f'format ({lo}..{hi}).')


def check_names(names, n: int) -> list[str] | None:
  """File stems (no folders, no hidden files), unique; or None."""
  if names is None:
    return None
  names = [str(x) for x in names]
  if len(names) != n:
    raise CompressionError(f'{len(names)} names for {n} images.')
  seen = set()
  for x in names:
    _check_name(x, seen)
  if n > MAX_NAMED_IMAGES or sum(len(x.encode()) + 1 for x in names) > (
      MAX_NAMES_BYTES):
    raise CompressionError(
        f'a file names at most {MAX_NAMED_IMAGES:,} images with '
        f'{MAX_NAMES_BYTES // 2**20} MiB of names; compress the images in '
        'parts, or with compress.per_image.')
  return names


def _check_name(x: str, seen: set[str]) -> None:
  """One name: a plain file stem of at most MAX_NAME_BYTES, not in ``seen``
  (then added to it)."""
  if (not x or x.startswith('.') or any(c in x for c in '/\\\n\0')
      or len(x.encode()) > MAX_NAME_BYTES):
    raise CompressionError(
        f'bad image name {x[:MAX_NAME_BYTES]!r}: names are file stems (not '
        'empty, not starting with ".", no "/", "\\", newline or NUL, at most '
        f'{MAX_NAME_BYTES} bytes).')
  if x in seen:
    raise CompressionError(f'image names must be unique; repeated: {x!r} '
                           '(e.g. a.png and a.jpg both decompress to a.png).')
  seen.add(x)


# Names are inflated this many bytes at a time, each piece checked before
# the next is inflated.
_INFLATE_PIECE = 1 << 16


def _inflate_names(blob: bytes, n: int) -> list[str]:
  """The n names of a zlib block, inflated piece by piece and checked as
  they come (length, characters, uniqueness, count): a crafted block stops
  at the first bad piece, so it cannot make this allocate more than the
  valid names a file may hold (MAX_NAMED_IMAGES, MAX_NAMES_BYTES)."""
  if n > MAX_NAMED_IMAGES:
    raise ValueError(f'{n} named images, more than the {MAX_NAMED_IMAGES} a '
                     'file may name')
  inflate = zlib.decompressobj()
  names, seen, pending, size = [], set(), b'', 0
  data = blob
  while True:
    piece = inflate.decompress(data, _INFLATE_PIECE)
    data = inflate.unconsumed_tail
    size += len(piece)
    if size > min(n * (MAX_NAME_BYTES + 1), MAX_NAMES_BYTES):
      raise ValueError(f'names block longer than {n} names can be')
    *lines, pending = (pending + piece).split(b'\n')
    for line in lines:
      if len(names) == n - 1:
        raise ValueError(f'more names than the {n} images')
      names.append(line.decode())
      _check_name(names[-1], seen)
    if len(pending) > MAX_NAME_BYTES:
      raise ValueError(f'a name longer than {MAX_NAME_BYTES} bytes')
    if inflate.eof or not (piece or data):
      break
  if not inflate.eof or inflate.unused_data:
    raise ValueError('names block incomplete or followed by other bytes')
  names.append(pending.decode())
  _check_name(names[-1], seen)
  if len(names) != n:
    raise ValueError(f'{len(names)} names for {n} images')
  return names


def pack(*, fingerprint: bytes, step: int, platform: str, precision: int,
         image_shape, num_images: int, batch: int, names: list[str] | None,
         chunks: list[tuple[np.ndarray, bytes]]) -> bytes:
  """The file for chunks of (range-coder words uint32, pixel digest)."""
  H, W, C = image_shape
  blob = b'' if names is None else zlib.compress('\n'.join(names).encode(), 9)
  body = b''.join([
      MAGIC,
      _FIXED.pack(VERSION, fingerprint, step, PLATFORMS.index(platform),
                  precision, H, W, C, num_images, batch),
      _U32.pack(len(blob)), blob,
      b''.join(_CHUNK.pack(len(w), d) for w, d in chunks),
      b''.join(np.asarray(w, '<u4').tobytes() for w, _ in chunks)])
  return body + _U32.pack(zlib.crc32(body))


def read_header(data: bytes, what: str = 'the file') -> Header:
  """Parses and checks a compressed file without a model; CompressionError
  says what is wrong."""
  if data[:len(MAGIC)] != MAGIC:
    raise CompressionError(
        f'{what} is not a gated_pixelcnn compressed file (it does not start '
        f'with the {SUFFIX} magic bytes); decompress takes files written by '
        '--mode=compress.')
  if len(data) < len(MAGIC) + _FIXED.size + 2 * _U32.size:
    raise CompressionError(f'{what} is truncated ({len(data)} bytes): it '
                           'cannot be decoded.')
  (crc,) = _U32.unpack_from(data, len(data) - _U32.size)
  if zlib.crc32(data[:-_U32.size]) != crc:
    raise CompressionError(
        f'{what} is truncated or corrupted (its CRC-32 does not match): it '
        'cannot be decoded. Nothing was written.')
  version = data[len(MAGIC)]
  if version != VERSION:
    raise CompressionError(
        f'{what} is format version {version}; this gated_pixelcnn reads '
        f'version {VERSION}. Use the gated_pixelcnn version that wrote it.')
  try:
    return _parse(data)
  except (struct.error, zlib.error, UnicodeDecodeError, ValueError) as e:
    raise CompressionError(f'{what} is malformed ({e}) although its checksum '
                           'matches: it was not written by gated_pixelcnn, '
                           'or was altered.') from e


def _parse(data: bytes) -> Header:
  pos = len(MAGIC)
  (_, fingerprint, step, platform, precision, H, W, C, n,
   batch) = _FIXED.unpack_from(data, pos)
  pos += _FIXED.size
  if platform >= len(PLATFORMS) or min(H, W, C) < 1 or n < 1:
    raise ValueError('header fields out of range')
  if not 1 <= batch <= min(n, MAX_BATCH):
    raise ValueError(f'batch {batch} not in 1..{min(n, MAX_BATCH)}')
  (blob_len,) = _U32.unpack_from(data, pos)
  names_at = pos + _U32.size
  pos = names_at + blob_len
  # The chunk table before the names: its length bounds N by the file size.
  num_chunks = -(-n // batch)
  if pos + num_chunks * (_CHUNK.size + 4) > len(data) - _U32.size:
    raise ValueError(f'{n} images in batches of {batch} need more bytes than '
                     'the file has')
  chunks = [_CHUNK.unpack_from(data, pos + k * _CHUNK.size)
            for k in range(num_chunks)]
  pos += num_chunks * _CHUNK.size
  if min(w for w, _ in chunks) < 1 or (
      pos + 4 * sum(w for w, _ in chunks) != len(data) - _U32.size):
    raise ValueError('payload length does not match the chunk table')
  names = None
  if blob_len:
    names = _inflate_names(data[names_at:names_at + blob_len], n)
  return Header(fingerprint=fingerprint, step=step,
                platform=PLATFORMS[platform], precision=precision,
                image_shape=(H, W, C), num_images=n, batch=batch, names=names,
                chunks=chunks, payload_offset=pos)


# ------------------------------------------------ compact one-image files
#
# One image per file, in as few bytes as decoding needs (about 13 beyond the
# range coder's words for a 28x28 image):
#
#   magic        2 bytes  b'\x89g'
#   model id     3 bytes  the first bytes of the model's fingerprint: a file
#                         of another model is refused before decoding
#   info         u8       bits 0-1: C - 1; bits 2-5: log2 of the coding
#                         batch B (B <= 256); bit 6: a class label follows;
#                         bit 7: 0
#   H, W         varint each, 1..MAX_SIDE (and the bounds of image_fits,
#                         batch_fits)
#   slot         varint   the image's row in the coding batch, < B
#   label        varint   (iff bit 6) the class the image was coded with
#   payload      the range coder's u32 words, little-endian, trailing zero
#                bytes dropped (the decoder reads zeros past the end)
#   tag          4 bytes  blake2b of the model's full fingerprint, the bytes
#                         above and the image's pixels: checked after
#                         decoding, so an altered file or another model
#                         (whose id happens to match) is an error, not a
#                         wrong image (a 2**-32 chance per altered file of
#                         passing unseen)
#
# The decoder runs the coding loop at the file's batch shape B with the
# image in its slot, as the encoder did, so that it computes the encoder's
# frequencies bit for bit whatever else shares the batch.

COMPACT_MAGIC = b'\x89g'
MODEL_ID_BYTES = 3
TAG_BYTES = 4
# Largest height or width a compact file may claim; with the batch shape it
# bounds what decoding allocates.
MAX_SIDE = 4096
MAX_LOG2_BATCH = 8    # B <= 256
MAX_FILE_BATCH = 2**MAX_LOG2_BATCH
MAX_LABEL = 2**20
# What a file can make the decoder allocate and compute, bounded before
# decoding: an image holds at most MAX_IMAGE_SUBPIXELS sub-pixels (the coding
# loop runs one step per sub-pixel: about half an hour for the largest on 2
# CPU cores); a coding batch holds at most MAX_BATCH_SUBPIXELS (the canvas)
# and MAX_BATCH_ROW sub-pixels per row (the loop's caches grow with
# batch x width x channels; a row of 2**16 is about 0.5 GB for the pretrained
# model). Batch 1 always fits an image that does.
MAX_IMAGE_SUBPIXELS = 2**20
MAX_BATCH_SUBPIXELS = 2**21
MAX_BATCH_ROW = 2**16


def is_file_batch(batch: int) -> bool:
  """A coding batch a one-image file can record: a power of two up to
  MAX_FILE_BATCH."""
  return 1 <= batch <= MAX_FILE_BATCH and not batch & (batch - 1)


def check_file_batch(batch: int, what: str = 'file_batch') -> None:
  if not is_file_batch(batch):
    raise CompressionError(f'{what} must be a power of two in 1..'
                           f'{MAX_FILE_BATCH}, got {batch}.')


def image_fits(image_shape) -> bool:
  H, W, C = image_shape
  return max(H, W) <= MAX_SIDE and H * W * C <= MAX_IMAGE_SUBPIXELS


def batch_fits(batch: int, image_shape) -> bool:
  H, W, C = image_shape
  return batch == 1 or (batch <= MAX_FILE_BATCH
                        and batch * H * W * C <= MAX_BATCH_SUBPIXELS
                        and batch * W * C <= MAX_BATCH_ROW)


@dataclasses.dataclass(frozen=True)
class CompactHeader:
  """What a one-image file says about itself."""
  model_id: bytes
  image_shape: tuple[int, int, int]
  batch: int
  slot: int
  label: int | None
  payload_offset: int


def is_compact(data: bytes) -> bool:
  return data[:len(COMPACT_MAGIC)] == COMPACT_MAGIC


def _varint(value: int) -> bytes:
  out = bytearray()
  while True:
    byte, value = value & 0x7F, value >> 7
    out.append(byte | (0x80 if value else 0))
    if not value:
      return bytes(out)


def _read_varint(data: bytes, pos: int, hi: int, what: str) -> tuple[int, int]:
  """The varint at ``pos`` (at most 4 bytes, canonical, <= hi) and the
  position after it."""
  value = 0
  for k in range(4):
    if pos + k >= len(data):
      raise ValueError(f'{what} runs past the end')
    byte = data[pos + k]
    value |= (byte & 0x7F) << (7 * k)
    if not byte & 0x80:
      if byte == 0 and k:
        raise ValueError(f'{what} is not minimally encoded')
      if value > hi:
        raise ValueError(f'{what} {value} is over {hi}')
      return value, pos + k + 1
  raise ValueError(f'{what} is longer than 4 bytes')


def compact_tag(fingerprint: bytes, head_and_payload: bytes,
                pixels: np.ndarray) -> bytes:
  h = hashlib.blake2b(digest_size=TAG_BYTES)
  h.update(fingerprint)
  h.update(head_and_payload)
  h.update(np.ascontiguousarray(pixels, np.uint8).tobytes())
  return h.digest()


def check_compact_fields(image_shape, batch: int, slot: int,
                         label: int | None) -> None:
  H, W, C = image_shape
  for what, value, hi in (('height', H, MAX_SIDE), ('width', W, MAX_SIDE)):
    if not 1 <= value <= hi:
      raise CompressionError(f'image {what} {value} is not in 1..{hi}, the '
                             'sizes a one-image file holds.')
  if not 1 <= C <= 4:
    raise CompressionError(f'{C} channels: one-image files hold 1..4.')
  if not image_fits(image_shape):
    raise CompressionError(
        f'a {W}x{H} image of {C} channel(s) has more than the '
        f'{MAX_IMAGE_SUBPIXELS:,} sub-pixels a one-image file holds (coding '
        'takes one network step per sub-pixel); crop or tile it.')
  if not is_file_batch(batch):
    raise CompressionError(f'the coding batch of one-image files is a power '
                           f'of two up to {2**MAX_LOG2_BATCH}, got {batch}.')
  if not 0 <= slot < batch:
    raise CompressionError(f'slot {slot} not in 0..{batch - 1}.')
  if label is not None and not 0 <= label <= MAX_LABEL:
    raise CompressionError(f'label {label} not in 0..{MAX_LABEL}.')


def pack_compact(*, fingerprint: bytes, image: np.ndarray, batch: int,
                 slot: int, label: int | None, words: np.ndarray) -> bytes:
  """The one-image file of ``image`` [H, W, C] coded into ``words``."""
  H, W, C = image.shape
  check_compact_fields(image.shape, batch, slot, label)
  info = (C - 1) | (batch.bit_length() - 1) << 2 | (label is not None) << 6
  head = b''.join([COMPACT_MAGIC, fingerprint[:MODEL_ID_BYTES], bytes([info]),
                   _varint(H), _varint(W), _varint(slot),
                   b'' if label is None else _varint(label)])
  body = head + np.asarray(words, '<u4').tobytes().rstrip(b'\0')
  return body + compact_tag(fingerprint, body, image)


def read_compact(data: bytes, what: str = 'the file') -> CompactHeader:
  """Parses a one-image file without a model; CompressionError says what
  is wrong."""
  if not is_compact(data):
    raise CompressionError(
        f'{what} is not a gated_pixelcnn one-image file (it does not start '
        f'with the {SUFFIX} magic bytes).')
  try:
    pos = len(COMPACT_MAGIC) + MODEL_ID_BYTES
    if len(data) < pos + 4 + TAG_BYTES:
      raise ValueError(f'{len(data)} bytes is shorter than any such file')
    model_id, info = data[len(COMPACT_MAGIC):pos], data[pos]
    pos += 1
    log2_batch = info >> 2 & 0xF
    if info & 0x80 or log2_batch > MAX_LOG2_BATCH:
      raise ValueError(f'unknown info byte {info:#04x}')
    batch = 1 << log2_batch
    H, pos = _read_varint(data, pos, MAX_SIDE, 'height')
    W, pos = _read_varint(data, pos, MAX_SIDE, 'width')
    slot, pos = _read_varint(data, pos, batch - 1, 'slot')
    label = None
    if info & 0x40:
      label, pos = _read_varint(data, pos, MAX_LABEL, 'label')
    if min(H, W) < 1 or pos > len(data) - TAG_BYTES:
      raise ValueError('fields out of range')
    shape = (H, W, (info & 3) + 1)
    if not image_fits(shape) or not batch_fits(batch, shape):
      raise ValueError(f'a batch of {batch} {H}x{W} images is more than any '
                       'file is written with')
  except ValueError as e:
    raise CompressionError(
        f'{what} is truncated or malformed ({e}): it was not written by '
        'gated_pixelcnn, or was altered. Nothing was written.') from e
  return CompactHeader(model_id=model_id, image_shape=shape,
                       batch=batch, slot=slot, label=label,
                       payload_offset=pos)


def compact_words(data: bytes, header: CompactHeader) -> np.ndarray:
  """The payload's u32 words (the dropped zero bytes restored)."""
  payload = data[header.payload_offset:len(data) - TAG_BYTES]
  payload += b'\0' * (-len(payload) % 4)
  return np.frombuffer(payload, '<u4').astype(np.uint32)
