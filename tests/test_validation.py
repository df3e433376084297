"""Config validation: every numeric value of every config has a range, and a
value out of it is refused before anything runs, naming the key."""

import dataclasses
import glob
import importlib
import math
import os

import ml_collections
import pytest

from gated_pixelcnn import errors
from gated_pixelcnn import models
from gated_pixelcnn import train
from gated_pixelcnn import validation
from tests import helpers

VARIANTS = {'fashion_mnist_autoencoder': ('pixelcnn', 'mse'),
            'fashion_mnist_multiscale': ('low', 'high')}


def _all_configs():
  """(name, config) of every configs/*.py and each of its variants."""
  for path in sorted(glob.glob(os.path.join(helpers.ROOT, 'configs', '*.py'))):
    name = os.path.basename(path)[:-3]
    if name == '__init__':
      continue
    module = importlib.import_module(f'configs.{name}')
    for variant in VARIANTS.get(name, (None,)):
      config = (module.get_config(variant) if variant else module.get_config())
      yield f'{name}:{variant}' if variant else name, config


CONFIGS = dict(_all_configs())


def test_every_numeric_key_of_every_config_has_a_range():
  missing = {f'{name}: {key}' for name, config in CONFIGS.items()
             for key in validation.numeric_leaves(config)
             if key not in validation.RANGES}
  assert not missing, f'add these keys to validation.RANGES: {missing}'
  # Every numeric field of every model class has one too (a config may set
  # any of them) ...
  fields = {f'model.{f.name}' for cls in models.MODELS.values()
            for f in dataclasses.fields(cls) if f.type in ('int', 'float')}
  assert fields - set(validation.RANGES) == set()
  # ... and there are no stale entries.
  used = {key for config in CONFIGS.values()
          for key in validation.numeric_leaves(config)}
  assert set(validation.RANGES) <= used | fields


def test_every_config_is_within_its_ranges():
  for name, config in CONFIGS.items():
    validation.check_ranges(config)   # raises on a bad value, naming it


def _bad_values(rule, value):
  """Values just outside ``rule`` of the type the config holds."""
  is_int = isinstance(value, int) and not isinstance(value, bool)
  step = 1 if is_int else 1e-3
  bad = []
  if rule.low is not None:
    bad.append(rule.low if rule.low_open else rule.low - step)
  if rule.high is not None:
    bad.append(rule.high if rule.high_open else rule.high + step)
  if not is_int:
    bad += [math.inf, -math.inf, math.nan]
  return [type(value)(b) if is_int else float(b) for b in bad]


def _cases():
  """(key, config name, bad value) for every key and each of its bounds."""
  for key, rule in validation.RANGES.items():
    for name, config in CONFIGS.items():
      leaves = validation.numeric_leaves(config)
      if key in leaves and leaves[key] is not None:
        value = leaves[key]
        sample = value[0] if isinstance(value, tuple) else value
        for bad in _bad_values(rule, sample):
          yield key, name, bad
        break


@pytest.mark.parametrize('key,name,bad', list(_cases()), ids=str)
def test_values_out_of_range_are_refused_naming_the_key(key, name, bad):
  config = ml_collections.ConfigDict(CONFIGS[name].to_dict())
  node, _, leaf = key.rpartition('.')
  target = config[node] if node else config
  if isinstance(target[leaf], tuple):
    bad = (target[leaf][0], bad)
  target[leaf] = bad
  with pytest.raises(errors.ConfigError,
                     match=rf'bad config: {key.replace(".", "[.]")} = '):
    validation.check_ranges(config)


@pytest.mark.parametrize('key,value', [
    ('learning_rate', math.inf), ('rmsprop_decay', 1.0),
    ('rmsprop_decay', -0.5), ('rmsprop_eps', -1e-8), ('seed', -1),
    ('seed', 2**32), ('ema_decay', 1.0), ('sample.temperature', math.nan),
    ('num_train_steps', -1), ('eval_batch_size', 0), ('cpu_devices', -1),
])
def test_values_that_passed_before_but_cannot_train(fake_config, key, value):
  """The cases found by trying: each used to start and fail later (inf
  learning rate: NaN at step 2) or silently (seed 2**32 == seed 0)."""
  node, _, leaf = key.rpartition('.')
  (fake_config[node] if node else fake_config)[leaf] = value
  with pytest.raises(errors.ConfigError, match=f'{key} = '):
    train.Trainer(fake_config)


def test_model_dtype_is_checked(fake_config):
  fake_config.model.dtype = 'float7'
  with pytest.raises(errors.ConfigError,
                     match="dtype must be 'float32' or 'bfloat16'"):
    train.Trainer(fake_config)


def test_range_descriptions():
  assert validation.Range(0, 1, high_open=True, integer=False).describe() == (
      'a finite number in [0, 1)')
  assert validation.Range(0, low_open=True).describe() == 'an integer > 0'
  assert validation.Range(0, optional=True).describe() == (
      'an integer >= 0 (or None)')
  assert not validation.Range(0).contains(True)   # booleans are not numbers
  assert validation.Range(0, optional=True).contains(None)


@pytest.mark.parametrize('key,value', [
    ('num_train_steps', 1.5), ('model.num_layers', 2.5), ('max_to_keep', 1.5),
    ('seed', True), ('log_every_steps', 0.5)])
def test_counts_must_be_integers(fake_config, key, value):
  """A config file can hold a float where an integer belongs (overrides
  cannot: ml_collections keeps the type)."""
  node, _, leaf = key.rpartition('.')
  target = fake_config[node] if node else fake_config
  target.__dict__['_fields'][leaf] = value   # as a config file could
  with pytest.raises(errors.ConfigError,
                     match=f'{key} = {value!r}; it must be an integer'):
    validation.check_ranges(fake_config)
