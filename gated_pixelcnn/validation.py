"""Config validation: every value is checked before anything runs, and the
error names the key, the value and what it must be."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import ml_collections

from gated_pixelcnn import conditioning
from gated_pixelcnn import container
from gated_pixelcnn import errors
from gated_pixelcnn import input_pipeline
from gated_pixelcnn import layers
from gated_pixelcnn import models
from gated_pixelcnn import optim


@dataclasses.dataclass(frozen=True)
class Range:
  """The values a numeric config key may take (always finite)."""
  low: float | None = None
  high: float | None = None
  low_open: bool = False     # ``low`` itself is excluded
  high_open: bool = False
  optional: bool = False     # None (a placeholder's default) is allowed
  integer: bool = True       # counts, sizes, seeds; False: any real number

  def contains(self, value) -> bool:
    if value is None:
      return self.optional
    if isinstance(value, bool) or not isinstance(
        value, int if self.integer else (int, float)):
      return False
    if not math.isfinite(value):
      return False
    if self.low is not None and (value < self.low or (
        self.low_open and value == self.low)):
      return False
    return self.high is None or (value < self.high or (
        not self.high_open and value == self.high))

  def describe(self) -> str:
    if self.low is not None and self.high is not None:
      text = (f'in {"(" if self.low_open else "["}{self.low}, {self.high}'
              f'{")" if self.high_open else "]"}')
    elif self.low is not None:
      text = f'{">" if self.low_open else ">="} {self.low}'
    else:
      text = f'{"<" if self.high_open else "<="} {self.high}'
    return (f'{"an integer" if self.integer else "a finite number"} {text}'
            + (' (or None)' if self.optional else ''))


_POSITIVE = Range(1)
_NATURAL = Range(0)
_NONNEGATIVE = Range(0, integer=False)
_UNIT = Range(0, 1, high_open=True, integer=False)
_SEED = Range(0, 2**32 - 1)     # jax.random.PRNGKey wraps larger seeds

# Every numeric key of every config and every numeric field of the models
# (tests/test_validation.py checks that there is no other).
RANGES: dict[str, Range] = {
    'batch_size': _POSITIVE, 'eval_batch_size': _POSITIVE,
    'num_train_steps': _NATURAL,
    'learning_rate': Range(0, low_open=True, integer=False),
    'warmup_steps': _NATURAL,
    'rmsprop_decay': _UNIT,
    'rmsprop_eps': Range(0, low_open=True, integer=False),
    'grad_clip_norm': _NONNEGATIVE,    # 0: off
    'weight_decay': _NONNEGATIVE,
    'decay_fraction': Range(0, 1, low_open=True, integer=False),
    'ema_decay': _UNIT,                # 0: off
    'log_every_steps': _POSITIVE, 'eval_every_steps': _POSITIVE,
    'checkpoint_every_steps': _POSITIVE, 'max_to_keep': _POSITIVE,
    'subsample': _POSITIVE,
    'shard_params_min_size': _NATURAL,
    'cpu_devices': _NATURAL,           # 0: one per core
    'microbatches': _NATURAL,          # 0: auto
    'num_profile_steps': _NATURAL,
    'seed': _SEED,
    'model.num_layers': _POSITIVE, 'model.features': _POSITIVE,
    'model.kernel_size': _POSITIVE, 'model.first_kernel_size': _POSITIVE,
    'model.num_channels': Range(1, 3), 'model.num_classes': _NATURAL,
    'model.head_features': _POSITIVE, 'model.bottleneck': _POSITIVE,
    'model.encoder_features': _POSITIVE, 'model.embedding_dim': _POSITIVE,
    'model.spatial_features': _POSITIVE, 'model.spatial_hidden': _POSITIVE,
    'sample.num_samples': _POSITIVE,
    'sample.temperature': _NONNEGATIVE,    # 0: the most likely value
    'sample.seed': _SEED,
    'sample.observed_rows': Range(0, optional=True),
    'sample.num_completions': _POSITIVE,
    'sample.interpolate_pair': _NATURAL,   # each of the two indices
    'sample.num_interpolations': Range(2),
    'compress.num_images': _NATURAL,   # 0: all
    'compress.batch_size': Range(1, container.MAX_BATCH),
    'compress.file_batch': Range(1, container.MAX_FILE_BATCH),
    'compress.step': Range(0, optional=True),
}


def numeric_leaves(config: ml_collections.ConfigDict
                   ) -> dict[str, Any]:
  """Every number (or None placeholder, or tuple of numbers) of the config
  by dotted key; booleans and strings are not numbers here."""
  out = {}

  def walk(prefix, node):
    for key, value in node.items():
      name = f'{prefix}{key}'
      if isinstance(value, (dict, ml_collections.ConfigDict)):
        walk(name + '.', value)
      elif value is None:   # a placeholder: numeric if its type is
        if isinstance(node, ml_collections.ConfigDict) and (
            node.get_type(key) in (int, float)):
          out[name] = value
      elif (isinstance(value, (int, float, tuple, list))
            and not isinstance(value, bool)):
        out[name] = value
  walk('', config)
  return out


def check_ranges(config: ml_collections.ConfigDict) -> None:
  """A ConfigError naming the first numeric value out of its range."""
  for key, rule in RANGES.items():
    node, _, leaf = key.rpartition('.')
    parent = config.get(node) if node else config
    if parent is None or leaf not in parent:
      continue
    value = parent[leaf]
    values = value if isinstance(value, (tuple, list)) else (value,)
    if not values or not all(rule.contains(v) for v in values):
      what = 'each value' if isinstance(value, (tuple, list)) else 'it'
      raise errors.ConfigError(f'bad config: {key} = {value!r}; {what} must '
                               f'be {rule.describe()}.')


def validate_config(config: ml_collections.ConfigDict,
                    num_devices: int | None = None
                    ) -> input_pipeline.DatasetSpec:
  """Fails fast, with a message naming the key, on a config that cannot run."""
  check_ranges(config)
  spec = input_pipeline.get_spec(config.dataset)
  num_devices = num_devices or jax.device_count()

  def check(ok, message):
    if not ok:
      raise errors.ConfigError(f'bad config: {message}')

  for key in ('batch_size', 'eval_batch_size'):
    check(config[key] % num_devices == 0,
          f'{key} = {config[key]} must be divisible by the number of devices '
          f'({num_devices}); e.g. --config.{key}='
          f'{max(1, config[key] // num_devices) * num_devices}.')
    check(config[key] % jax.process_count() == 0,
          f'{key} must be divisible by the process count.')
  check(config.microbatches == 0 or
        config.batch_size % (num_devices * config.microbatches) == 0,
        f'microbatches = {config.microbatches} must be 0 (auto) or divide '
        f'the per-device batch (batch_size {config.batch_size} / '
        f'{num_devices} devices); e.g. --config.microbatches=0.')
  file_batch = config.get('compress', {}).get('file_batch', 1)
  check(container.is_file_batch(file_batch),
        f'compress.file_batch = {file_batch} must be a power of two; e.g. '
        f'--config.compress.file_batch={1 << (file_batch.bit_length() - 1)}.')
  check(config.optimizer in optim.OPTIMIZERS,
        f'optimizer {config.optimizer!r} is not one of '
        f'{sorted(optim.OPTIMIZERS)}.')
  conv_impls = ('auto', *layers.CONV_IMPLS)
  check(config.get('conv_impl', 'auto') in conv_impls,
        f'conv_impl {config.get("conv_impl")!r} is not one of {conv_impls}.')
  check(config.lr_schedule in optim.SCHEDULES,
        f'lr_schedule {config.lr_schedule!r} is not one of '
        f'{optim.SCHEDULES}.')
  f = config.get('subsample', 1)
  H, W, _ = spec.image_shape
  check(H % f == 0 and W % f == 0,
        f'subsample = {f} must divide the image size {H}x{W}.')
  check(config.model.num_channels == spec.image_shape[-1],
        f'model.num_channels = {config.model.num_channels} but '
        f'{config.dataset} images have {spec.image_shape[-1]} channel(s) '
        f'(shape {spec.image_shape}).')
  num_classes = config.model.get('num_classes', 0)
  check(num_classes in (0, spec.num_classes),
        f'model.num_classes = {num_classes} but {config.dataset} '
        f'has {spec.num_classes or "no"} labels; use 0 (unconditional)'
        + (f' or {spec.num_classes}.' if spec.num_classes else '.'))
  check('conv_impl' not in config.model,
        'model.conv_impl is not a model field; how the convolutions compute '
        'is the top-level --config.conv_impl.')
  try:
    model = models.create_model(config.model)  # checks the architecture
  except ValueError as e:
    raise errors.ConfigError(f'bad config: model: {e}') from e
  check(model.objective != 'triplet' or spec.num_classes,
        f'the embedding network trains on labels; {config.dataset} has none.')
  check(model.objective != 'triplet' or config.microbatches in (0, 1),
        'the triplet loss mines triplets in the whole batch: set '
        'microbatches = 1 (or 0).')
  source = config.conditioning.source if 'conditioning' in config else ''
  check(source in conditioning.SOURCES,
        f'conditioning.source {source!r} is not one of {conditioning.SOURCES}.')
  check(model.needs_conditioning_run == bool(source),
        f"model.name = {config.model.name!r} with conditioning.source = "
        f"{source!r}: a conditional_pixelcnn needs a source ('embedding' or "
        f"'subsample'); other models take none (set it to '').")
  check(source != 'subsample' or model.conditioning == 'spatial',
        "multi-scale conditions on a low-resolution image: set "
        "model.conditioning = 'spatial'.")
  sample = config.sample
  check(sample.method in ('naive', 'cached'),
        f"sample.method {sample.method!r} is not 'naive' or 'cached'.")
  check(sample.method == 'naive' or model.cached_sampling or (
      model.objective != 'likelihood'),
        f"sample.method='cached' needs model.name='gated_pixelcnn'; use "
        f"sample.method='naive' for {config.model.name!r}.")
  return spec
