"""config.conv_impl = 'auto': the fastest convolution is measured once per
machine and shape, cached, and a damaged cache is only a cache."""

import json
import os

import jax
import numpy as np
import pytest

from gated_pixelcnn import errors
from gated_pixelcnn import layers
from gated_pixelcnn import train
from gated_pixelcnn import tuning
from gated_pixelcnn import validation


@pytest.fixture
def cache(tmp_path, monkeypatch):
  monkeypatch.setenv('XDG_CACHE_HOME', str(tmp_path))
  return tmp_path / 'gated_pixelcnn' / 'tuning.json'


def test_choose_measures_once_and_keeps_the_fastest(cache):
  timed = []

  def measure(impl):
    timed.append(impl)
    return {'conv': 3.0, 'im2col': 1.0, 'taps': 2.0}[impl]

  key = {'cpu': 'test', 'batch': [8, 28, 28, 1]}
  choice, entry = tuning.choose(key, layers.CONV_IMPLS, measure)
  assert choice == 'im2col' and entry['seconds']['conv'] == 3.0
  assert timed == list(layers.CONV_IMPLS)
  # Cached: the same key is not timed again; another key is.
  assert tuning.choose(key, layers.CONV_IMPLS, measure)[0] == 'im2col'
  assert len(timed) == 3
  tuning.choose({**key, 'batch': [4, 28, 28, 1]}, layers.CONV_IMPLS, measure)
  assert len(timed) == 6
  assert len(json.loads(cache.read_text())) == 2


def test_another_formulation_must_be_clearly_faster(cache):
  del cache
  for im2col, expected in ((0.97, 'conv'), (0.9, 'im2col')):
    times = {'conv': 1.0, 'im2col': im2col, 'taps': 2.0}
    assert tuning.choose({'im2col': im2col}, layers.CONV_IMPLS,
                         times.get)[0] == expected


def test_a_failed_measurement_is_not_chosen(cache):
  del cache

  def measure(impl):
    if impl == 'im2col':
      raise MemoryError('out of memory')
    return {'conv': 1.0, 'taps': 1.5}[impl]
  choice, entry = tuning.choose({'cpu': 'test'}, layers.CONV_IMPLS, measure)
  assert choice == 'conv' and entry['seconds']['im2col'] == float('inf')


GOOD = b'{"k": {"choice": "conv", "seconds": {"conv": 1.0}}}'


@pytest.mark.parametrize('content', [
    b'{not json', b'[1, 2]', b'[' * 100_000 + b']' * 100_000,
    b'{"k": {"choice": "winograd", "seconds": {}}}',
    b'{"k": {"choice": "conv"}}', b'{"k": {"choice": "conv", "seconds": 1}}',
    b'{"k": {"choice": "conv", "seconds": {"conv": "fast"}}}', b'{"k": 3}',
    GOOD[:-1] + b' ' * tuning.MAX_CACHE_BYTES + b'}', 'fifo'])
def test_a_damaged_cache_is_measured_again_and_replaced(cache, content):
  cache.parent.mkdir(parents=True)
  if content == 'fifo':   # would block a reader forever
    os.mkfifo(cache)
  else:
    cache.write_bytes(content)
  choice, _ = tuning.choose({'cpu': 'test'}, layers.CONV_IMPLS,
                            {'conv': 2.0, 'im2col': 3.0, 'taps': 1.0}.get)
  assert choice == 'taps'
  assert [v['choice'] for v in json.loads(cache.read_text()).values()] == [
      'taps']
  # A good file is read as it is.
  cache.write_bytes(GOOD)
  assert tuning._read(cache) == json.loads(GOOD)  # pylint: disable=protected-access


def test_bad_conv_impl_is_a_config_error(fake_config):
  fake_config.conv_impl = 'winograd'
  with pytest.raises(errors.ConfigError, match="conv_impl 'winograd'"):
    validation.validate_config(fake_config)


def test_conv_impl_in_the_model_config_is_a_config_error(fake_config):
  fake_config.model.conv_impl = 'taps'
  with pytest.raises(errors.ConfigError, match='--config.conv_impl'):
    validation.validate_config(fake_config)


def test_trainer_tunes_on_the_cpu_and_trains_with_the_choice(
    fake_config, cache, monkeypatch):
  """'auto' times every formulation of the run's own train step, keeps the
  fastest, and the next trainer of that shape reads it from the cache; the
  chosen step trains like XLA's convolution."""
  mesh = jax.sharding.Mesh(np.array(jax.devices()[:2]), ('data',))
  fake_config.conv_impl = 'auto'
  trainer = train.Trainer(fake_config, mesh)
  assert trainer.conv_impl == 'conv'   # until tuned
  trainer.tune()
  assert trainer.conv_impl in layers.CONV_IMPLS
  assert trainer.model.conv_impl == trainer.conv_impl
  entry, = json.loads(cache.read_text()).values()
  assert entry['choice'] == trainer.conv_impl
  assert set(entry['seconds']) == set(layers.CONV_IMPLS)
  assert all(s > 0 for s in entry['seconds'].values())

  def fail(*args, **kwargs):
    raise AssertionError('timed again despite the cache')
  monkeypatch.setattr(tuning, 'time_train_step', fail)
  again = train.Trainer(fake_config, mesh)
  again.tune()
  assert again.conv_impl == trainer.conv_impl

  fake_config.conv_impl = 'conv'
  reference = train.Trainer(fake_config, mesh)
  batch = reference.global_batch({'image': np.random.default_rng(0).integers(
      0, 256, (8, 28, 28, 1), np.uint8)})
  losses = []
  for t in (reference, again):
    state = t.init(jax.random.PRNGKey(0))
    for _ in range(2):
      state, metrics = t.train_step(state, batch)
    losses.append(float(metrics['bits_per_dim']))
  np.testing.assert_allclose(losses[1], losses[0], rtol=1e-4)


def test_explicit_conv_impl_is_not_timed(fake_config, cache):
  fake_config.conv_impl = 'taps'
  trainer = train.Trainer(fake_config)
  trainer.tune()
  assert trainer.conv_impl == 'taps' and not cache.exists()
