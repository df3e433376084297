"""Conditioning inputs that come from another trained run, added to batches.

``config.conditioning.source`` says what a `models.ConditionalPixelCNN` is
conditioned on (class labels and the auto-encoder's encoder need nothing from
here: labels come with the data, the encoder is part of the model):

* ``'embedding'``: h = the output of a trained, frozen embedding network
  (`models.EmbeddingNet`, its run in ``conditioning.workdir``) for the image.
* ``'subsample'``: h = the image subsampled by the factor of a trained
  low-resolution model (its run in ``conditioning.workdir``): multi-scale
  generation. The pixels (f*i, f*j) are then given, not modelled: they are
  left out of the NLL and kept when sampling.

A run is read back from its workdir (``config.json``, written when
training starts, and its newest checkpoint) by `runs.load_conditioning`,
which hands it to the Trainer: nothing here loads runs or trains.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from etils import epath
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from gated_pixelcnn import checkpointing
from gated_pixelcnn import errors
from gated_pixelcnn import workdir as workdir_lib

SOURCES = ('', 'embedding', 'subsample')
# source: (what the run is, the config that trains one), for error messages.
RUN_KINDS = {
    'embedding': ('embedding network', 'configs/fashion_mnist_embedding.py'),
    'subsample': ('low-resolution model',
                  'configs/fashion_mnist_multiscale.py:low'),
}
CONFIG_FILE = 'config.json'


def write_config(workdir: str, config: ml_collections.ConfigDict) -> None:
  """WORKDIR/config.json: how the run was configured (process 0 only)."""
  if jax.process_index() != 0:
    return
  workdir_lib.write_atomic(epath.Path(workdir) / CONFIG_FILE,
                           config.to_json_best_effort(indent=2))


def read_config(workdir: str | None, what: str, hint: str
                ) -> ml_collections.ConfigDict:
  """The config a run in ``workdir`` was trained with; clear errors if none."""
  if not workdir:
    raise errors.ConfigError(
        f'bad config: {what} needs a trained run: train it with '
        f'`python -m gated_pixelcnn.main --config={hint} --workdir=DIR`, then '
        f'pass its folder, e.g. --config.conditioning.workdir=DIR.')
  path = epath.Path(workdir) / CONFIG_FILE
  if not path.exists():
    raise checkpointing.CheckpointError(
        f'{path} not found: {workdir} holds no run of the {what} (runs write '
        f'config.json when training starts; runs older than that lack it). '
        f'Train it: python -m gated_pixelcnn.main --config={hint} '
        f'--workdir={workdir}')
  try:
    return ml_collections.ConfigDict(json.loads(path.read_text()))
  except (ValueError, TypeError) as e:
    raise checkpointing.CheckpointError(
        f'{path} is not a readable config ({e}); train the {what} again in '
        f'an empty folder.') from e


@dataclasses.dataclass
class Run:
  """A trained run read back from its workdir."""
  config: ml_collections.ConfigDict
  trainer: Any   # train.Trainer
  params: Any    # evaluation params (EMA if used), on the trainer's mesh
  step: int


class Conditioner:
  """Adds ``batch['cond']`` for models conditioned on another run's output."""

  def __init__(self, config: ml_collections.ConfigDict,
               image_shape: tuple[int, int, int], run: Run | None = None):
    cond = config.get('conditioning', None)
    self.source = cond.source if cond is not None else ''
    if bool(self.source) != (run is not None):
      raise ValueError(
          f'conditioning.source = {self.source!r} with '
          f'{"a" if run is not None else "no"} conditioning run: pass the run '
          'that conditioning.workdir holds iff the source is set (build the '
          'trainer with runs.make_trainer, which loads it).')
    self.run = run
    self.factor = 1
    self._low_res_eval: dict[str, float] | None = None
    H, W, C = image_shape
    if self.source == 'embedding':
      model = self.run.trainer.model
      if model.objective != 'triplet':
        raise errors.ConfigError(
            f'bad config: conditioning.workdir {cond.workdir} holds a '
            f'{self.run.config.model.name!r} run, not an embedding network '
            '(model.name = embedding_net).')
      self._check_same_images(config, cond.workdir)
      self.example = jnp.zeros((1, model.embedding_dim), jnp.float32)
      self._fn = jax.jit(lambda params, images: model.apply(
          {'params': params}, images))
    elif self.source == 'subsample':
      low = self.run.config
      if (low.subsample <= 1 or low.model.name != 'gated_pixelcnn' or
          low.model.get('num_classes', 0)):
        raise errors.ConfigError(
            f'bad config: conditioning.workdir {cond.workdir} holds a '
            f'{low.model.name!r} run with subsample = {low.subsample} and '
            f'num_classes = {low.model.get("num_classes", 0)}; multi-scale '
            'needs an unconditional gated_pixelcnn trained on subsampled '
            'images (subsample > 1).')
      self._check_same_images(config, cond.workdir)
      self.factor = f = low.subsample
      self.example = jnp.zeros((1, H // f, W // f, C), jnp.int32)
      self._fn = jax.jit(lambda params, images: images[:, ::f, ::f])
    else:  # '' (validation.validate_config rejects other sources)
      self.example = None

  def _check_same_images(self, config, workdir) -> None:
    other = self.run.config
    if other.dataset != config.dataset:
      raise errors.ConfigError(
          f'bad config: conditioning.workdir {workdir} was trained on '
          f'{other.dataset!r}, this model on {config.dataset!r}.')

  def add(self, batch: dict[str, jax.Array]) -> dict[str, jax.Array]:
    """The batch with its conditioning input 'cond' (unchanged if none)."""
    if not self.source:
      return batch
    params = self.run.params if self.source == 'embedding' else None
    return {**batch, 'cond': self._fn(params, batch['image'])}

  def nll_mask(self, image_shape) -> np.ndarray | None:
    """[H, W, C] 1 for modelled sub-pixels, 0 for those h already fixes."""
    if self.source != 'subsample':
      return None
    H, W, C = image_shape
    mask = np.ones((H, W, C), np.float32)
    mask[::self.factor, ::self.factor] = 0.0
    return mask

  def extra_eval(self, metrics: dict[str, float], builder, image_shape
                 ) -> dict[str, float]:
    """Multi-scale: the low-resolution model's bits/dim and the total.

    The conditional model's ``bits_per_dim`` counts the nats of the
    sub-pixels it models over all H*W*C dims; the low-resolution model's
    nats over its (H/f)*(W/f)*C dims are added to give -log2 p(x) / dims.
    """
    if self.source != 'subsample':
      return {}
    if self._low_res_eval is None:  # its params never change: once per run
      self._low_res_eval = self.run.trainer.evaluate_split(self.run.params,
                                                           builder)
    low = self._low_res_eval['bits_per_dim']
    H, W, _ = image_shape
    share = (H // self.factor) * (W // self.factor) / (H * W)
    return {'bits_per_dim_low_res': low,
            'bits_per_dim_total': metrics['bits_per_dim'] + low * share}
