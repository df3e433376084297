"""Lossless compression: exact round trips, size vs the model's NLL, bad input."""

import os
import shutil
import struct
import subprocess
import sys
import tracemalloc
import zlib

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image
import pytest

from gated_pixelcnn import checkpointing
from gated_pixelcnn import compression
from gated_pixelcnn import container
from gated_pixelcnn import image_files
from gated_pixelcnn import likelihood
from gated_pixelcnn import models
from gated_pixelcnn import modes
from gated_pixelcnn import sampling
from gated_pixelcnn import train
from tests import fake_data
from tests import helpers


@pytest.fixture(scope='module')
def run(fake_mnist_dir, fake_tfds_dir, tmp_path_factory):
  """A tiny model trained 4 steps on the fake data (checkpoints 2 and 4)."""
  from configs import test as test_config  # pylint: disable=g-import-not-at-top
  config = test_config.get_config()
  config.manual_dir = str(fake_mnist_dir)
  config.data_dir = str(fake_tfds_dir)
  workdir = str(tmp_path_factory.mktemp('compress_run'))
  train.train_and_evaluate(config, workdir)
  return config, workdir


def _config(run, **compress):
  config = run[0].copy_and_resolve_references()
  config.compress.update(compress)
  return config


@pytest.fixture(scope='module')
def codec(run):
  return compression.Codec.from_workdir(run[0], run[1], batch_size=128)


@pytest.fixture(scope='module')
def sharp():
  """A random tiny model with sharpened (x2) weights and 300 images drawn
  from it: about 5 bits/dim, so a coder that ignored the model (8 bits) is
  far outside the 1% the size test allows."""
  model = models.GatedPixelCNN(num_layers=2, features=8, kernel_size=3,
                               first_kernel_size=3, head_features=16)
  variables = model.init(jax.random.PRNGKey(0),
                         jnp.zeros((1, 28, 28, 1), jnp.int32))
  params = jax.tree_util.tree_map(lambda x: x * 2.0, variables['params'])
  images = np.asarray(sampling.sample(
      model, {'params': params}, jax.random.PRNGKey(1), num_samples=300,
      image_shape=(28, 28, 1)))
  return compression.Codec(model, params, image_shape=(28, 28, 1), step=0,
                           batch_size=128), images


def _images(n, seed=0):
  """Structured images plus the extremes: all 0, all 255, uniform noise."""
  images = fake_data.images_with_structure(n, (28, 28, 1), seed)
  rng = np.random.default_rng(seed)
  images[0] = 0
  images[1] = 255
  images[2] = rng.integers(0, 256, (28, 28, 1))
  return images


def _nll_bits(codec, images) -> float:
  logits = codec.model.apply(codec.variables, jnp.asarray(images, jnp.int32))
  return float(-likelihood.log_prob(logits, jnp.asarray(images)).sum()
               / np.log(2.0))


def _payload_bits(data) -> int:
  return 8 * (len(data) - compression.read_header(data).overhead_bytes)


def test_round_trip_is_exact_and_size_is_the_nll(sharp):
  codec, images = sharp
  data = codec.compress(images)
  header = compression.read_header(data)
  assert (header.num_images, header.batch, len(header.chunks)) == (300, 128, 3)
  decoded, names = codec.decompress(data)
  assert names is None and decoded.dtype == np.uint8
  np.testing.assert_array_equal(decoded, images)
  nll_bits = _nll_bits(codec, images)
  assert nll_bits / images.size < 6.0   # the test can tell a model from none
  assert abs(_payload_bits(data) - nll_bits) <= 0.01 * nll_bits, (
      _payload_bits(data), nll_bits)
  # The fixed part: magic, fields, names length, chunk table, CRC-32.
  assert header.overhead_bytes == 8 + 36 + 4 + 12 * 3 + 4
  # Values the model finds very unlikely round-trip too (each costs at most
  # 20 bits, the 2**-20 floor).
  extremes = _images(4)[:3]
  np.testing.assert_array_equal(
      codec.decompress(codec.compress(extremes))[0], extremes)


def test_encoder_and_decoder_see_identical_frequencies(sharp, monkeypatch):
  """The property the round trip rests on, checked directly: every
  sub-pixel's quantised distribution is the same integers on both sides, and
  sums to 2**PRECISION_BITS with every value possible."""
  codec, images = sharp[0], sharp[1][:5]
  seen = {'enc': [], 'dec': []}
  run_coder = sampling.run_coder

  def spy(side):
    def wrapped(model, variables, coder, **kw):
      def recording(t, freqs):
        seen[side].append(freqs.copy())
        return coder(t, freqs)
      return run_coder(model, variables, recording, **kw)
    return wrapped

  monkeypatch.setattr(sampling, 'run_coder', spy('enc'))
  data = codec.compress(images)
  monkeypatch.setattr(sampling, 'run_coder', spy('dec'))
  decoded, _ = codec.decompress(data)
  np.testing.assert_array_equal(decoded, images)
  enc, dec = np.stack(seen['enc']), np.stack(seen['dec'])
  assert enc.shape == (28 * 28, 5, 256)
  np.testing.assert_array_equal(enc, dec)
  assert enc.min() >= 1
  np.testing.assert_array_equal(enc.sum(-1), 2**sampling.PRECISION_BITS)
  # The ideal code length of the quantised distributions is the NLL's to
  # within the quantisation's bound (256 / 2**20 / ln 2 bits per sub-pixel).
  flat = images.reshape(5, -1)
  picked = enc[np.arange(784)[:, None], np.arange(5)[None], flat.T]
  ideal = float(-np.log2(picked / 2.0**sampling.PRECISION_BITS).sum())
  nll = _nll_bits(codec, images)
  assert nll - 1e-3 * nll <= ideal <= nll + 256 / 2**20 / np.log(2) * flat.size
  assert ideal <= _payload_bits(data) <= ideal + 64 + 1e-4 * ideal


def test_fingerprint_ignores_how_the_convolutions_compute():
  """conv_impl is speed only and the coder's cached path does not use it:
  files written before it existed, or under another choice, still decode.
  """
  kwargs = dict(num_layers=1, features=8, head_features=8)
  params = models.GatedPixelCNN(**kwargs).init(
      jax.random.PRNGKey(0), jnp.zeros((1, 4, 4, 1), jnp.int32))['params']
  prints = {compression.model_fingerprint(
      models.GatedPixelCNN(**kwargs, conv_impl=impl), 5, params)
            for impl in ('conv', 'im2col', 'taps')}
  assert len(prints) == 1
  assert prints != {compression.model_fingerprint(
      models.GatedPixelCNN(**kwargs), 6, params)}


def test_quantized_frequencies_edge_cases():
  logits = jnp.asarray(np.stack([
      np.zeros(256), np.full(256, -1e30), np.r_[1e4, np.zeros(255)],
      np.random.default_rng(0).normal(size=256) * 30]), jnp.float32)
  freqs = np.asarray(sampling.quantized_frequencies(logits))
  assert freqs.min() >= 1
  np.testing.assert_array_equal(freqs.sum(-1), 2**20)
  np.testing.assert_array_equal(freqs[:2], 4096)   # uniform: exact
  assert freqs[2, 0] == 2**20 - 255


def test_batches_padding_and_names(codec, run):
  images = _images(20, seed=1)
  names = [f'img{k}' for k in range(20)]
  small = compression.Codec(codec.model, codec.variables['params'],
                            image_shape=(28, 28, 1), step=codec.step,
                            batch_size=7)
  assert small.fingerprint == codec.fingerprint
  data = small.compress(images, names)
  assert compression.read_header(data).batch == 7
  # Decoded with the file's batch size, whatever the codec's.
  decoded, got = codec.decompress(data)
  np.testing.assert_array_equal(decoded, images)
  assert got == names


# ------------------------------------------------------ one-image files


def _file_nll_bytes(codec, image, label=None) -> float:
  labels = None if label is None else jnp.asarray([label])
  return float(compression._image_nll(codec.model, codec.variables,
                                      jnp.asarray(image[None]), labels)[0]
               ) / np.log(2.0) / 8


def test_one_image_files_cost_at_most_16_bytes_over_the_nll(sharp):
  codec, images = sharp
  small = compression.Codec(codec.model, codec.variables['params'],
                            image_shape=(28, 28, 1), step=0, file_batch=16)
  files = small.compress_files(images[:40])
  over = [len(f) - _file_nll_bytes(small, x) for f, x in zip(files, images)]
  # Measured 15.3 bytes: a 13-byte header and tag, the coder's flush and
  # the 20-bit quantisation.
  print(f'mean bytes over the NLL: {np.mean(over):.2f}')
  assert 10 < np.mean(over) <= 16, np.mean(over)
  headers = [container.read_compact(f) for f in files]
  assert [(h.batch, h.slot) for h in headers[:18]] == [
      (16, k % 16) for k in range(18)]
  # All at once (in 3 batches), or one alone in its batch row: the same.
  decoded = small.decompress_files(files)
  for x, (y, label) in zip(images, decoded):
    np.testing.assert_array_equal(y, x)
    assert label is None
  (y, _), = small.decompress_files([files[21]])
  np.testing.assert_array_equal(y, images[21])


def test_a_files_frequencies_do_not_depend_on_its_batch_mates(sharp):
  """What one-image decoding rests on: the coding loop hands a batch row
  the same frequencies whatever the other rows hold (the encoder codes a
  full batch, a decoder of one file a batch of zeros around it)."""
  codec, images = sharp
  shape, batch = (9, 13, 1), 4
  full = np.asarray(images[:batch, :9, :13])
  alone = np.zeros_like(full)
  alone[2] = full[2]
  seen = {}
  for name, canvas in (('full', full), ('alone', alone)):
    flat = canvas.reshape(batch, -1)
    freqs = []

    def coder(t, f, flat=flat, freqs=freqs):
      freqs.append(f[2].copy())
      return flat[:, t]

    sampling.run_coder(codec.model, codec.variables, coder,
                       batch_size=batch, image_shape=shape)
    seen[name] = np.stack(freqs)
  assert seen['full'].shape == (9 * 13, 256)
  np.testing.assert_array_equal(seen['full'], seen['alone'])


def test_one_image_files_of_any_size_and_colour():
  """A model coding sizes it was not built with: it is convolutional."""
  rng = np.random.default_rng(3)
  for C, shapes in ((1, [(17, 40), (40, 33), (1, 1), (17, 40)]),
                    (3, [(5, 6), (5, 6)])):
    model = models.GatedPixelCNN(num_layers=2, features=6, kernel_size=3,
                                 first_kernel_size=3, num_channels=C,
                                 head_features=6)
    variables = model.init(jax.random.PRNGKey(C),
                           jnp.zeros((1, 28, 28, C), jnp.int32))
    codec = compression.Codec(model, variables['params'],
                              image_shape=(28, 28, C), step=0, file_batch=2)
    images = [rng.integers(0, 256, (*hw, C), dtype=np.uint8)
              for hw in shapes]
    files = codec.compress_files(images)
    assert [container.read_compact(f).image_shape for f in files] == [
        x.shape for x in images]
    for x, (y, _) in zip(images, codec.decompress_files(files[::-1])[::-1]):
      np.testing.assert_array_equal(y, x)


def test_class_conditional_files_carry_their_label():
  model = models.GatedPixelCNN(num_layers=2, features=6, kernel_size=3,
                               first_kernel_size=3, num_classes=3,
                               head_features=6)
  variables = model.init(jax.random.PRNGKey(0),
                         jnp.zeros((1, 8, 8, 1), jnp.int32),
                         jnp.zeros((1,), jnp.int32))
  params = jax.tree_util.tree_map(lambda x: x * 3.0, variables['params'])
  codec = compression.Codec(model, params, image_shape=(8, 8, 1), step=0,
                            file_batch=4)
  images = np.asarray(sampling.sample(
      model, {'params': params}, jax.random.PRNGKey(1), num_samples=3,
      image_shape=(8, 8, 1), labels=jnp.asarray([0, 1, 2])))
  given = codec.compress_files(images, labels=[2, 0, 1])
  chosen = codec.compress_files(images)
  best = codec.best_labels(images)
  nll = [[_file_nll_bytes(codec, x, c) for c in range(3)] for x in images]
  assert best.tolist() == np.argmin(nll, axis=1).tolist()
  for files, labels in ((given, [2, 0, 1]), (chosen, best.tolist())):
    assert [container.read_compact(f).label for f in files] == labels
    out = codec.decompress_files(files)
    assert [label for _, label in out] == labels
    for x, (y, _) in zip(images, out):
      np.testing.assert_array_equal(y, x)
  assert sum(map(len, chosen)) <= sum(map(len, given))
  with pytest.raises(compression.CompressionError, match='one label in 0..2'):
    codec.compress_files(images, labels=[0, 3, 1])


def test_bad_one_image_files_fail_clearly(sharp):
  codec, images = sharp
  small = compression.Codec(codec.model, codec.variables['params'],
                            image_shape=(28, 28, 1), step=0, file_batch=2)
  good = small.compress_files(images[:1])[0]
  assert small.decompress_files([good])[0][0].tolist() == images[0].tolist()
  cases = {
      'truncated or malformed': [good[:8], good[:5] + b'\xff' + good[6:],
                                 good[:6] + b'\x80\x80\x80\x80\x01'],
      'another model': [good[:2] + b'abc' + good[5:]],
      'tag': [good[:-1] + bytes([good[-1] ^ 1]),
              good[:20] + bytes([good[20] ^ 4]) + good[21:]],
  }
  for match, files in cases.items():
    for data in files:
      with pytest.raises(compression.CompressionError, match=match):
        small.decompress_files([data])
  # Headers claiming more than any file is written with (a batch of 256
  # rows of 512, whose caches would take gigabytes; a 2048x1024 image; a
  # batch of 512): refused unread.
  for info, H, W in ((0x20, 1, 512), (0x00, 2048, 1024), (0x24, 1, 1)):
    huge = container.COMPACT_MAGIC + good[2:5] + bytes([info]) + (
        container._varint(H) + container._varint(W) + b'\x00' + good[-30:])
    with pytest.raises(compression.CompressionError,
                       match='more than any file|unknown info byte'):
      small.decompress_files([huge])
  for bad, match in (((28, 28, 3), 'codes \\[H, W, 1\\]'),
                     ((0, 5, 1), 'height 0'), ((5, 4097, 1), 'width 4097'),
                     ((1025, 1024, 1), 'crop or tile it')):
    with pytest.raises(compression.CompressionError, match=match):
      small.compress_files([np.zeros(bad, np.uint8)])
  with pytest.raises(compression.CompressionError, match='unconditional'):
    small.compress_files(images[:1], labels=[0])
  with pytest.raises(compression.CompressionError, match='power of two'):
    compression.Codec(codec.model, codec.variables['params'],
                      image_shape=(28, 28, 1), step=0, file_batch=3)


def test_colour_model_round_trip():
  """RGB: sub-pixels in raster order, then R, G, B (mask B's groups)."""
  model = models.GatedPixelCNN(num_layers=2, features=6, kernel_size=3,
                               first_kernel_size=3, num_channels=3,
                               head_features=6)
  variables = model.init(jax.random.PRNGKey(0),
                         jnp.zeros((1, 5, 6, 3), jnp.int32))
  params = jax.tree_util.tree_map(lambda x: x * 3.0, variables['params'])
  codec = compression.Codec(model, params, image_shape=(5, 6, 3), step=0,
                            batch_size=4)
  images = np.random.default_rng(0).integers(0, 256, (9, 5, 6, 3),
                                             dtype=np.uint8)
  images[:, :, :, 1] = images[:, :, :, 0] // 2 + 7   # G depends on R
  data = codec.compress(images)
  decoded, _ = codec.decompress(data)
  np.testing.assert_array_equal(decoded, images)
  # Never above the NLL; below it where the sharpened random model gives a
  # sub-pixel less than 2**-20, the quantisation's floor.
  nll = _nll_bits(codec, images)
  assert _payload_bits(data) <= 1.01 * nll


# ------------------------------------------------------------- bad input


def test_corrupted_or_truncated_files_fail_clearly(codec):
  images = _images(10, seed=2)
  data = codec.compress(images)
  rng = np.random.default_rng(0)
  positions = sorted({0, 5, 8, 9, 20, 40, 60, len(data) // 2, len(data) - 1,
                      *rng.integers(0, len(data), 20).tolist()})
  for pos in positions:
    bad = bytearray(data)
    bad[pos] ^= 1 << int(rng.integers(8))
    with pytest.raises(compression.CompressionError,
                       match='corrupted|not a gated_pixelcnn|version'):
      codec.decompress(bytes(bad))
  for length in (0, 3, 8, 30, 60, len(data) // 2, len(data) - 1):
    with pytest.raises(compression.CompressionError,
                       match='truncated|not a gated_pixelcnn'):
      codec.decompress(data[:length])
  with pytest.raises(compression.CompressionError, match='not a gated_pixel'):
    codec.decompress(b'\x89PNG\r\n\x1a\n' + data[8:])


def _with_crc(body: bytes) -> bytes:
  return body + struct.pack('<I', zlib.crc32(body))


def _altered_payload(data: bytes) -> bytes:
  """The file with its first payload word changed and a valid CRC-32."""
  at = compression.read_header(data).payload_offset
  body = bytearray(data[:-4])
  body[at] ^= 0x5A
  return _with_crc(bytes(body))


def _with_fields(data: bytes, **fields) -> bytes:
  """The file with header fields replaced (names: a new names block) and a
  valid CRC-32: what a careless or hostile writer could produce."""
  layout = struct.Struct('<B16sIBBHHBII')
  keys = ('version', 'fingerprint', 'step', 'platform', 'precision', 'H', 'W',
          'C', 'num_images', 'batch')
  values = dict(zip(keys, layout.unpack_from(data, 8)))
  header = compression.read_header(data)
  names_end = 8 + layout.size + 4 + struct.unpack_from('<I', data,
                                                       8 + layout.size)[0]
  blob = data[8 + layout.size + 4:names_end]
  if 'names' in fields:
    blob = zlib.compress('\n'.join(fields.pop('names')).encode())
  values.update(fields)
  return _with_crc(b''.join([
      data[:8], layout.pack(*values.values()), struct.pack('<I', len(blob)),
      blob, data[names_end:header.payload_offset], data[
          header.payload_offset:-4]]))


def _with_names_block(n: int, blob: bytes) -> bytes:
  """A well-formed file of n images (chunks of 4,096, one payload word
  each, valid CRC-32) whose names block is ``blob``."""
  chunks = [(np.zeros(1, np.uint32), bytes(8))] * -(-n // 4096)
  data = container.pack(fingerprint=bytes(16), step=1, platform='cpu',
                        precision=20, image_shape=(28, 28, 1), num_images=n,
                        batch=min(n, 4096), names=None, chunks=chunks)
  at = 8 + struct.calcsize('<B16sIBBHHBII')   # the names block's length
  return _with_crc(data[:at] + struct.pack('<I', len(blob)) + blob +
                   data[at + 4:-4])


def _deflate(pieces) -> bytes:
  z = zlib.compressobj(9)
  return b''.join(z.compress(p) for p in pieces) + z.flush()


def test_a_names_zip_bomb_is_refused_without_inflating_it():
  """Names blocks that inflate to 200 MB from ~200 KB (within the bound of
  a million names of 240 bytes): refused after the first piece, with the
  parser's peak allocation far below what the block inflates to."""
  n = 10**6
  mb = 2**20
  bombs = {
      'one endless name': (_deflate([b'a' * mb] * 200), 'longer than 240'),
      'one name repeated': (_deflate([b'ab\n' * (mb // 3)] * 200),
                            "repeated: 'ab'"),
      'empty names': (_deflate([b'\n' * mb] * 200), 'bad image name'),
  }
  for what, (blob, match) in bombs.items():
    data = _with_names_block(n, blob)
    assert len(data) < 2 * mb, what
    tracemalloc.start()
    try:
      with pytest.raises(compression.CompressionError,
                         match=f'malformed.*{match}'):
        container.read_header(data, what)
      _, peak = tracemalloc.get_traced_memory()
    finally:
      tracemalloc.stop()
    assert peak < 16 * mb, (what, peak)
  with pytest.raises(compression.CompressionError, match='more names than'):
    container.read_header(_with_names_block(3, _deflate([b'a\nb\nc\nd'])))
  # Valid names cost a Python object each: a file names at most 2^20 images,
  # and the writer refuses to write more.
  with pytest.raises(compression.CompressionError,
                     match='more than the 1048576 a file may name'):
    container.read_header(_with_names_block(2**20 + 1, _deflate([b'a'])))
  with pytest.raises(compression.CompressionError, match='names at most'):
    container.check_names([f'{k}' for k in range(2**20 + 1)], 2**20 + 1)
  # The same machinery reads a genuine block of a million names.
  names = [f'img{k}' for k in range(n)]
  header = container.read_header(
      _with_names_block(n, zlib.compress('\n'.join(names).encode())))
  assert header.names == names


def test_malformed_files_with_a_valid_checksum_fail_clearly(codec, tmp_path):
  images = _images(3)
  data = codec.compress(images, ['a', 'b', 'c'])
  cases = {
      'path traversal': (_with_fields(data, names=['../evil', 'b', 'c']),
                         'bad image name'),
      'absolute path': (_with_fields(data, names=['/tmp/x', 'b', 'c']),
                        'bad image name'),
      'NUL in a name': (_with_fields(data, names=['a\0', 'b', 'c']),
                        'bad image name'),
      'too few names': (_with_fields(data, names=['a', 'b']), 'names for'),
      'batch > number of images': (_with_fields(data, batch=50), 'batch 50'),
      'huge batch': (_with_fields(data, batch=2**32 - 1), 'batch'),
      'billions of images': (_with_fields(data, num_images=2**32 - 1,
                                          batch=2**32 - 1), 'batch'),
      'a million images': (_with_fields(
          codec.compress(images), num_images=10**6, batch=4096),
                           'more bytes than the file has'),
      'no images': (_with_fields(data, num_images=0), 'out of range'),
      'more images than the table': (_with_fields(
          codec.compress(images), num_images=9, batch=1), 'payload length'),
      'zero height': (_with_fields(data, H=0), 'out of range'),
      'unknown platform': (_with_fields(data, platform=9), 'out of range'),
  }
  for what, (bad, match) in cases.items():
    with pytest.raises(compression.CompressionError,
                       match=f'malformed.*({match})'):
      codec.decompress(bad, what=what)
  # Valid layout, altered payload: the range decoder or the pixel digest
  # stops it.
  with pytest.raises(compression.CompressionError, match=_EITHER_CAUSE):
    codec.decompress(_altered_payload(data))
  with pytest.raises(compression.CompressionError, match='no images given'):
    codec.compress(np.zeros((0, 28, 28, 1), np.uint8))


def test_another_models_file_fails_before_decoding(codec, run):
  data = codec.compress(_images(4))
  older = compression.Codec.from_workdir(run[0], run[1], step=2)
  assert older.step == 2 and codec.step == 4
  with pytest.raises(compression.CompressionError,
                     match='another model: step 4.*this model is step 2'):
    older.decompress(data)
  other_params = jax.tree_util.tree_map(lambda x: x + 1e-3,
                                        codec.variables['params'])
  other = compression.Codec(codec.model, other_params, image_shape=(28, 28, 1),
                            step=4)
  with pytest.raises(compression.CompressionError,
                     match='same step, different config or parameters'):
    other.decompress(data)


_EITHER_CAUSE = (r'(?s)Either the file was altered, or this machine .* '
                 r'computes the model\'s probabilities differently .* '
                 r'\(a cpu machine\).*Nothing was written')


def test_different_probabilities_are_caught_not_written(codec, run):
  """A decoder whose floats differ (as on another machine) must fail, never
  return a wrong image: the range decoder fails, or the pixels miss the
  digest (which one depends on the machine), and either message names both
  causes."""
  images = _images(6)
  data = codec.compress(images)
  params = jax.tree_util.tree_map(lambda x: x * 1.5, codec.variables['params'])
  drifted = compression.Codec(codec.model, params, image_shape=(28, 28, 1),
                              step=4)
  drifted.fingerprint = codec.fingerprint   # pretend it is the same model
  with pytest.raises(compression.CompressionError, match=_EITHER_CAUSE):
    drifted.decompress(data)


def test_each_decoding_failure_names_both_causes(codec):
  data = codec.compress(_images(3))
  # The pixels decode but miss the stored digest (the digest is altered).
  header = compression.read_header(data)
  at = header.payload_offset - 8   # the last chunk's pixel digest
  body = bytearray(data[:-4])
  body[at] ^= 0xFF
  with pytest.raises(compression.CompressionError,
                     match='differ from those compressed'):
    codec.decompress(_with_crc(bytes(body)))
  with pytest.raises(compression.CompressionError, match=_EITHER_CAUSE):
    codec.decompress(_with_crc(bytes(body)))
  # The range decoder itself gives up: a payload word it cannot decode.
  words = np.frombuffer(data, '<u4', -1, header.payload_offset)[:-1]
  body = bytearray(data[:-4])
  body[header.payload_offset:] = b'\xff' * (4 * len(words))
  with pytest.raises(compression.CompressionError,
                     match='(?s)range decoder failed.*' + _EITHER_CAUSE[4:]):
    codec.decompress(_with_crc(bytes(body)))


def test_wrong_images_fail_clearly(codec, tmp_path):
  with pytest.raises(compression.CompressionError, match='28, 28, 1'):
    codec.compress(np.zeros((2, 32, 32, 1), np.uint8))
  with pytest.raises(compression.CompressionError, match='28, 28, 1'):
    codec.compress(np.zeros((2, 28, 28, 3), np.uint8))
  with pytest.raises(compression.CompressionError, match='8-bit'):
    codec.compress(np.full((2, 28, 28, 1), 300))
  gray = np.zeros((28, 28), np.uint8)
  cases = {
      'big.png': (Image.fromarray(np.zeros((32, 28), np.uint8)), '28x32'),
      'rgb.png': (Image.fromarray(np.zeros((28, 28, 3), np.uint8)), "'RGB'"),
      'rgba.png': (Image.fromarray(np.zeros((28, 28, 4), np.uint8)), 'RGBA'),
      'deep.png': (Image.fromarray(gray.astype(np.uint16) * 300), "'I;16'"),
      'palette.png': (Image.fromarray(gray).convert('P'), "'P'"),
  }
  for name, (image, message) in cases.items():
    image.save(tmp_path / name)
    with pytest.raises(compression.CompressionError, match=message):
      image_files.read_image(tmp_path / name, (28, 28, 1))
  (tmp_path / 'notes.txt').write_text('not an image')
  with pytest.raises(compression.CompressionError, match='not an image file'):
    image_files.read_image(tmp_path / 'notes.txt', (28, 28, 1))
  with pytest.raises(compression.CompressionError, match='unique'):
    codec.compress(np.zeros((2, 28, 28, 1), np.uint8), ['a', 'a'])


def test_run_coder_checks_the_coder_and_recovers(sharp):
  codec = sharp[0]
  kw = dict(batch_size=2, image_shape=(28, 28, 1))

  def returns(values):
    return lambda t, freqs: values

  for bad, match in ((np.array([0, 256]), 'integers in 0..255'),
                     (np.array([0.5, 1.0]), 'integers'),
                     (np.array([1, 2, 3]), 'expected 2 integers')):
    with pytest.raises(ValueError, match=match):
      sampling.run_coder(codec.model, codec.variables, returns(bad), **kw)

  def fails(t, freqs):
    raise KeyError('coder failed')

  with pytest.raises(KeyError, match='coder failed'):
    sampling.run_coder(codec.model, codec.variables, fails, **kw)
  # Nothing of a failed run stays behind: the next one works.
  canvas = sampling.run_coder(codec.model, codec.variables,
                              returns(np.array([7, 9])), **kw)
  assert (canvas[0] == 7).all() and (canvas[1] == 9).all()
  with pytest.raises(compression.CompressionError, match='batch_size must'):
    compression.Codec(codec.model, codec.variables['params'],
                      image_shape=(28, 28, 1), step=0, batch_size=4097)


def test_models_that_cannot_compress_are_refused():
  for model in (models.GatedPixelCNN(num_layers=1, features=4, num_classes=3),
                models.PixelCNN(num_layers=1, features=4)):
    with pytest.raises(compression.CompressionError,
                       match='unconditional|needs a Gated PixelCNN'):
      compression.check_codable(model)


# ------------------------------------------------------------- the modes


def _png_folder(folder, images, names):
  folder.mkdir()
  for name, image in zip(names, images):
    Image.fromarray(image[..., 0]).save(folder / f'{name}.png')


def _read_pngs(folder):
  return {f[:-4]: np.asarray(Image.open(folder / f))[..., None]
          for f in sorted(os.listdir(folder))}


def test_modes_round_trip_files_folders_and_splits(run, tmp_path):
  config, workdir = run
  images = _images(12, seed=5)
  names = [f'shoe_{k:02d}' for k in range(12)]
  _png_folder(tmp_path / 'in', images, names)
  # A folder -> one file -> PNGs with the original names.
  out = modes.compress_checkpoint(
      _config(run, input=str(tmp_path / 'in'),
              output=str(tmp_path / 'all.gpx')), workdir)
  assert out == str(tmp_path / 'all.gpx')
  modes.decompress_checkpoint(
      _config(run, input=out, output=str(tmp_path / 'back')), workdir)
  back = _read_pngs(tmp_path / 'back')
  assert sorted(back) == sorted(names)
  for k, name in enumerate(names):
    np.testing.assert_array_equal(back[name], images[k])
  # One file per image, decompressed as a folder; the older checkpoint.
  modes.compress_checkpoint(
      _config(run, input=str(tmp_path / 'in'), output=str(tmp_path / 'each'),
              per_image=True, num_images=3, step=2), workdir)
  assert sorted(os.listdir(tmp_path / 'each')) == [
      f'shoe_{k:02d}.gpx' for k in range(3)]
  modes.decompress_checkpoint(
      _config(run, input=str(tmp_path / 'each'),
              output=str(tmp_path / 'each_back')), workdir)
  assert {k: v.tolist() for k, v in _read_pngs(tmp_path / 'each_back').items()
          } == {n: images[k].tolist() for k, n in enumerate(names[:3])}
  # The test split of the dataset, all 37 images.
  out = modes.compress_checkpoint(
      _config(run, input='tfds:test', output=str(tmp_path / 'test.gpx')),
      workdir)
  modes.decompress_checkpoint(
      _config(run, input=out, output=str(tmp_path / 'test_back')), workdir)
  pngs = _read_pngs(tmp_path / 'test_back')
  expected, _ = image_files.load_inputs(_config(run, input='tfds:test'),
                                        (28, 28, 1))[:2]
  assert len(pngs) == 37 == len(expected)
  np.testing.assert_array_equal(np.stack(list(pngs.values())), expected)


def test_modes_leave_nothing_behind_on_bad_input(run, tmp_path):
  config, workdir = run
  images = _images(4, seed=6)
  _png_folder(tmp_path / 'in', images, 'abcd')
  good = modes.compress_checkpoint(
      _config(run, input=str(tmp_path / 'in'),
              output=str(tmp_path / 'files' / 'good.gpx')), workdir)
  before = sorted(os.listdir(tmp_path))
  data = open(good, 'rb').read()

  def fails(match, **compress):
    with pytest.raises((compression.CompressionError,
                        checkpointing.CheckpointError), match=match):
      mode = compress.pop('mode')
      mode(_config(run, **compress), workdir)
    assert sorted(os.listdir(tmp_path)) == before
    assert open(good, 'rb').read() == data

  # A non-image among the inputs: nothing is coded or written.
  (tmp_path / 'in' / 'readme.txt').write_text('hello')
  fails('readme.txt is not an image', mode=modes.compress_checkpoint,
        input=str(tmp_path / 'in'), output=str(tmp_path / 'new.gpx'))
  os.remove(tmp_path / 'in' / 'readme.txt')
  # Never overwrite existing work.
  fails('already exists', mode=modes.compress_checkpoint,
        input=str(tmp_path / 'in'), output=good)
  fails('set --config.compress.input', mode=modes.compress_checkpoint,
        output=str(tmp_path / 'new.gpx'))
  fails("no split 'validation'", mode=modes.compress_checkpoint,
        input='tfds:validation', output=str(tmp_path / 'new.gpx'))
  # A corrupted file next to a good one: no output folder at all.
  bad = bytearray(data)
  bad[len(bad) // 2] ^= 0xFF
  (tmp_path / 'files' / 'bad.gpx').write_bytes(bytes(bad))
  fails('bad.gpx is truncated or corrupted',
        mode=modes.decompress_checkpoint,
        input=str(tmp_path / 'files'), output=str(tmp_path / 'out'))
  os.remove(tmp_path / 'files' / 'bad.gpx')
  (tmp_path / 'files' / 'photo.gpx').write_bytes(
      (tmp_path / 'in' / 'a.png').read_bytes())
  fails('photo.gpx is not a gated_pixelcnn compressed file',
        mode=modes.decompress_checkpoint,
        input=str(tmp_path / 'files'), output=str(tmp_path / 'out'))
  os.remove(tmp_path / 'files' / 'photo.gpx')
  # Altered after writing, CRC-32 recomputed: the pixel digest stops it.
  (tmp_path / 'files' / 'altered.gpx').write_bytes(_altered_payload(data))
  fails('altered.gpx.*the file was altered',
        mode=modes.decompress_checkpoint,
        input=str(tmp_path / 'files' / 'altered.gpx'),
        output=str(tmp_path / 'out'))
  os.remove(tmp_path / 'files' / 'altered.gpx')
  # An output folder that is not empty is never written into.
  (tmp_path / 'full').mkdir()
  (tmp_path / 'full' / 'keep.png').write_bytes(b'mine')
  before = sorted(os.listdir(tmp_path))
  fails('already exists', mode=modes.decompress_checkpoint,
        input=good, output=str(tmp_path / 'full'))
  assert os.listdir(tmp_path / 'full') == ['keep.png']


def test_decompress_checks_the_checkpoint_of_the_file(run, tmp_path):
  config, workdir = run
  images = _images(3)
  codec = compression.Codec.from_workdir(config, workdir)
  (tmp_path / 'x.gpx').write_bytes(codec.compress(images))
  decompress = lambda workdir: modes.decompress_checkpoint(  # pylint: disable=unnecessary-lambda-assignment
      _config(run, input=str(tmp_path / 'x.gpx'),
              output=str(tmp_path / 'out')), workdir)
  with pytest.raises(checkpointing.CheckpointError,
                     match='no checkpoints in .*empty_run'):
    decompress(str(tmp_path / 'empty_run'))
  assert not (tmp_path / 'empty_run').exists()   # read-only: nothing made
  # The run went on and its step-4 checkpoint was rotated away.
  shutil.copytree(workdir, tmp_path / 'later')
  shutil.rmtree(tmp_path / 'later' / 'checkpoints' / '4')
  with pytest.raises(checkpointing.CheckpointError,
                     match=r'no checkpoint of step 4 in .*\(it has \[2\]\)'):
    decompress(str(tmp_path / 'later'))
  assert not (tmp_path / 'out').exists()


def test_main_compress_and_decompress(run, tmp_path):
  config, workdir = run
  env = helpers.subprocess_env()
  out = tmp_path / 'five.gpx'
  logs = []
  for args in (['--mode=compress', '--config.compress.input=tfds:test',
                '--config.compress.num_images=5',
                f'--config.compress.output={out}'],
               ['--mode=decompress', f'--config.compress.input={out}',
                f'--config.compress.output={tmp_path / "five"}']):
    proc = subprocess.run(helpers.main_command(workdir, config, *args),
                          cwd=helpers.ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    logs.append(proc.stderr)
  assert 'bits/dim (header included)' in logs[0]
  assert 'matched its pixel digest' in logs[1]
  # A mistyped workdir is an error, not a new folder.
  proc = subprocess.run(
      helpers.main_command(tmp_path / 'typo', config, '--mode=decompress',
            f'--config.compress.input={out}',
            f'--config.compress.output={tmp_path / "again"}'),
      cwd=helpers.ROOT, env=env, capture_output=True, text=True, timeout=300)
  assert proc.returncode != 0 and 'no checkpoints in' in proc.stderr
  assert not (tmp_path / 'typo').exists() and not (tmp_path / 'again').exists()
  assert sorted(os.listdir(tmp_path / 'five')) == [
      f'{k:05d}.png' for k in range(5)]


def test_compress_command_with_the_pretrained_model(tmp_path):
  """gated_pixelcnn.compress: images of two sizes -> one .gpx each -> the
  same PNGs (in this process, as the command runs it); as a command, an
  existing output is a one-line error and exit status 1."""
  from gated_pixelcnn import compress as compress_command  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)
  images = {'a': rng.integers(0, 256, (9, 11), np.uint8),
            'b': rng.integers(0, 256, (9, 11), np.uint8),
            'c': np.zeros((5, 28), np.uint8)}
  (tmp_path / 'in').mkdir()
  for name, image in images.items():
    Image.fromarray(image).save(tmp_path / 'in' / f'{name}.png')
  compress_command.run([str(tmp_path / 'in')], str(tmp_path / 'gpx'))
  compress_command.run([str(tmp_path / 'gpx')], str(tmp_path / 'back'),
                       decompress=True)
  assert sorted(os.listdir(tmp_path / 'gpx')) == ['a.gpx', 'b.gpx', 'c.gpx']
  for name, image in images.items():
    back = np.asarray(Image.open(tmp_path / 'back' / f'{name}.png'))
    np.testing.assert_array_equal(back, image)
  with pytest.raises(compression.CompressionError, match='--file_batch'):
    compress_command.run([str(tmp_path / 'in')], str(tmp_path / 'x'),
                         file_batch=3)
  proc = subprocess.run(
      [sys.executable, '-m', 'gated_pixelcnn.compress', '-d',
       str(tmp_path / 'gpx'), '-o', str(tmp_path / 'in')],
      cwd=helpers.ROOT, env=helpers.subprocess_env(), capture_output=True,
      text=True, timeout=300)
  assert proc.returncode == 1, proc.stderr[-2000:]
  assert proc.stderr.strip().splitlines()[-1].startswith(
      'error: -o '), proc.stderr[-2000:]
  assert not (tmp_path / 'x').exists()
