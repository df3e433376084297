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
