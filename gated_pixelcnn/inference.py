"""Jobs on a trained workdir: --mode=eval, sample, complete, reconstruct,
embed_sample and interpolate."""

from __future__ import annotations

import functools
from typing import Callable

from absl import logging
from clu import metric_writers
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from gated_pixelcnn import checkpointing
from gated_pixelcnn import conditioning
from gated_pixelcnn import errors
from gated_pixelcnn import generate
from gated_pixelcnn import grids
from gated_pixelcnn import input_pipeline
from gated_pixelcnn import pretrained
from gated_pixelcnn import train
from gated_pixelcnn import workdir as workdir_lib


def restore(config: ml_collections.ConfigDict, workdir: str,
            read_only: bool = False, step: int | None = None,
            trainer: train.Trainer | None = None
            ) -> tuple[train.Trainer, train.TrainState]:
  """The trainer for ``config`` and its state in ``workdir``: the newest
  readable one, or that of ``step`` (``read_only``: see
  `checkpointing.restore_latest`; a given step never moves files). With
  ``config.pretrained`` set, the state of that pretrained folder."""
  if trainer is None:
    trainer = train.Trainer(config)
  if config.get('pretrained'):
    return trainer, pretrained.state(config, trainer, step)
  if (step is not None or read_only) and not (
      checkpointing.checkpoint_dir(workdir).exists()):
    raise checkpointing.CheckpointError(
        f'no checkpoints in {checkpointing.checkpoint_dir(workdir)}: point '
        '--workdir at a trained run.')
  manager = checkpointing.create_manager(workdir, config.max_to_keep)
  layout = train.state_config(config)
  try:
    if step is not None:
      return trainer, checkpointing.restore_step(
          manager, workdir, trainer.abstract_state, step, expected_meta=layout)
    restored = checkpointing.restore_latest(manager, workdir,
                                            trainer.abstract_state,
                                            read_only=read_only,
                                            expected_meta=layout)
  finally:
    manager.close()
  if restored is None:
    raise checkpointing.CheckpointError(
        f'no checkpoint in {checkpointing.checkpoint_dir(workdir)}; train '
        f'first (--mode=train) or point --workdir at a trained run.')
  return trainer, restored[0]


def _writes_workdir(mode: Callable) -> Callable:
  """A --mode job on a trained run's workdir. It holds the workdir's lock
  while it runs; if a training run holds it, the job still runs, reading
  the checkpoints without moving any (``alone=False``), and writes only
  files named by step (samples, TensorBoard events), not the run's
  eval_results.json. With a pretrained model (``config.pretrained``) the
  workdir is a folder of the job's own outputs."""

  @functools.wraps(mode)
  def run(config: ml_collections.ConfigDict, workdir: str):
    if config.get('pretrained'):   # --workdir only receives the outputs
      with workdir_lib.writer(workdir) as workdir:
        return mode(config, workdir, alone=True)
    with workdir_lib.job(workdir) as (workdir, alone):
      return mode(config, workdir, alone=alone)
  return run


def _writer(workdir):
  return metric_writers.create_default_writer(
      workdir, just_logging=jax.process_index() > 0)


@_writes_workdir
def evaluate_checkpoint(config: ml_collections.ConfigDict,
                        workdir: str, alone: bool = True) -> dict[str, float]:
  """--mode=eval: exact test bits/dim of the newest checkpoint in workdir."""
  trainer, state = restore(config, workdir, read_only=not alone)
  builder = input_pipeline.get_builder(config)
  metrics = trainer.evaluate_split(trainer.eval_params(state), builder)
  step = int(state.step)
  writer = _writer(workdir)
  writer.write_scalars(step, train.eval_scalars(metrics))
  writer.flush()
  if alone:
    train.write_eval_results(workdir, step, metrics, config)
  else:
    logging.info('Test %s at step %d: %s (not written to eval_results.json, '
                 'which belongs to the training run).', trainer.metric, step,
                 metrics)
  return metrics


@_writes_workdir
def sample_checkpoint(config: ml_collections.ConfigDict, workdir: str,
                      alone: bool = True) -> str:
  """--mode=sample: a grid of samples to WORKDIR/samples/ and TensorBoard.

  Unconditional models: a square grid; class-conditional: one row per class;
  multi-scale: low-resolution samples, then full-size samples given each;
  auto-encoder and embedding models: test images | samples given their h.
  """
  trainer, state = restore(config, workdir, read_only=not alone)
  if not generate.can_sample(trainer):
    raise errors.ConfigError(
        f'model.name = {config.model.name!r} is not a generative model; '
        '--mode=reconstruct shows what the MSE auto-encoder does, '
        '--mode=eval the embedding network\'s triplet loss.')
  step = int(state.step)
  rng = _rng(config, step)
  params = generate.host_params(trainer.eval_params(state))
  if trainer.conditioner.source == 'subsample':
    grid = generate.multiscale_grid(trainer, params, rng,
                                    config.sample.num_samples,
                                    config.sample.num_completions)
  else:
    grid = generate.samples_grid(trainer, params, rng,
                                 input_pipeline.get_builder(config))
  name = f'samples_{config.sample.method}_t{config.sample.temperature:g}'
  return generate.write_grid(_writer(workdir), workdir, step, name, grid)


def _rng(config, step):
  return jax.random.fold_in(jax.random.PRNGKey(config.sample.seed), step)


@_writes_workdir
def reconstruct_checkpoint(config: ml_collections.ConfigDict,
                           workdir: str, alone: bool = True) -> str:
  """--mode=reconstruct: the paper's auto-encoder figure.

  Rows of: a test image | its MSE auto-encoder reconstruction (the run in
  sample.mse_workdir, if set) | PixelCNN-decoder samples given its h. On an
  MSE auto-encoder's own workdir: image | reconstruction.
  """
  trainer, state = restore(config, workdir, read_only=not alone)
  model = trainer.model
  if not (model.has_encoder or model.objective == 'mse'):
    raise errors.ConfigError(
        f'--mode=reconstruct needs an auto-encoder (model.name = '
        f'pixelcnn_autoencoder or mse_autoencoder), not '
        f'{config.model.name!r}.')
  builder = input_pipeline.get_builder(config)
  images, _ = generate.test_images(trainer, builder, config.sample.num_samples,
                                   per_class=True)
  params = generate.host_params(trainer.eval_params(state))
  step = int(state.step)
  if model.objective == 'mse':
    grid = grids.make_grid(np.stack(
        [images, mse_reconstruction(model, params, images)], axis=1))
  else:
    extra = []
    if config.sample.mse_workdir:
      run = conditioning.load_run(
          config.sample.mse_workdir, 'MSE auto-encoder baseline',
          'configs/fashion_mnist_autoencoder.py:mse')
      if run.trainer.model.objective != 'mse':
        raise errors.ConfigError(
            f'sample.mse_workdir {config.sample.mse_workdir} '
            f'holds a {run.config.model.name!r} run, not an '
            'mse_autoencoder.')
      extra.append(mse_reconstruction(
          run.trainer.model, generate.host_params(run.params), images))
    else:
      logging.warning('sample.mse_workdir is not set: the figure has no MSE '
                      'baseline column.')
    grid = generate.conditional_grid(trainer, params, _rng(config, step),
                                     images, config.sample.num_completions,
                                     extra_columns=extra)
  return generate.write_grid(_writer(workdir), workdir, step, 'reconstructions',
                             grid)


def mse_reconstruction(model, params, images) -> np.ndarray:
  out = model.apply({'params': params}, jnp.asarray(images))
  return np.asarray(jnp.clip(jnp.round(out), 0, 255), np.uint8)


def _check_vector_conditioned(trainer, mode: str) -> None:
  model = trainer.model
  ok = model.has_encoder or trainer.conditioner.source == 'embedding'
  if not ok:
    raise errors.ConfigError(
        f'--mode={mode} needs a model conditioned on an image\'s vector h: '
        'an embedding-conditioned model (configs/fashion_mnist_embedding_'
        'pixelcnn.py) or a PixelCNN auto-encoder; '
        f'{trainer.config.model.name!r} with conditioning.source = '
        f'{trainer.conditioner.source!r} is not.')


@_writes_workdir
def embed_sample_checkpoint(config: ml_collections.ConfigDict,
                            workdir: str, alone: bool = True) -> str:
  """--mode=embed_sample: new images from the h of unseen test images.

  Rows of: a test image (one per class in turn) | sample.num_completions
  samples given its embedding.
  """
  trainer, state = restore(config, workdir, read_only=not alone)
  _check_vector_conditioned(trainer, 'embed_sample')
  step = int(state.step)
  grid = generate.samples_grid(
      trainer, generate.host_params(trainer.eval_params(state)),
      _rng(config, step), input_pipeline.get_builder(config))
  return generate.write_grid(_writer(workdir), workdir, step, 'embed_samples',
                             grid)


@_writes_workdir
def interpolate_checkpoint(config: ml_collections.ConfigDict,
                           workdir: str, alone: bool = True) -> str:
  """--mode=interpolate: samples along the line between the h of two test
  images (sample.interpolate_pair, indices into the test split)."""
  trainer, state = restore(config, workdir, read_only=not alone)
  _check_vector_conditioned(trainer, 'interpolate')
  a, b = config.sample.interpolate_pair
  builder = input_pipeline.get_builder(config)
  source = input_pipeline.open_split(builder, trainer.spec.eval_split,
                                    per_process=False)
  for k in (a, b):
    if not 0 <= k < len(source):
      raise errors.ConfigError(
          f'sample.interpolate_pair = {(a, b)}: index {k} is not '
          f'in the test split (0..{len(source) - 1}).')
  image_a, image_b = (ex['image'] for ex in source.__getitems__([a, b]))
  step = int(state.step)
  grid = generate.interpolation_grid(
      trainer, generate.host_params(trainer.eval_params(state)),
      _rng(config, step), image_a, image_b, config.sample.num_interpolations,
      config.sample.num_completions)
  return generate.write_grid(_writer(workdir), workdir, step,
                             f'interpolation_{a}_{b}', grid)


@_writes_workdir
def complete_checkpoint(config: ml_collections.ConfigDict, workdir: str,
                        alone: bool = True) -> str:
  """--mode=complete: test images with their lower part sampled again."""
  trainer, state = restore(config, workdir, read_only=not alone)
  if generate.is_conditioned_on_images(trainer.model) or not (
      generate.can_sample(trainer)):
    raise errors.ConfigError(
        f'--mode=complete is for unconditional and class-conditional models; '
        f'for {config.model.name!r} use --mode=sample (samples given the h '
        'of test images).')
  H = trainer.spec.image_shape[0]
  num_rows = config.sample.observed_rows
  if num_rows is None:
    num_rows = H // 2
  if not 0 <= num_rows <= H:
    raise errors.ConfigError(
        f'sample.observed_rows = {num_rows} must be in 0..{H}.')
  images, labels = generate.test_images(
      trainer, input_pipeline.get_builder(config), config.sample.num_samples)
  f = config.get('subsample', 1)
  images = images[:, ::f, ::f]
  step = int(state.step)
  grid = generate.completion_grid(
      trainer.model, generate.host_params(trainer.eval_params(state)),
      _rng(config, step), images,
      labels if trainer.model.num_classes else None, num_rows,
      config.sample.num_completions, config.sample)
  return generate.write_grid(_writer(workdir), workdir, step, 'completions',
                             grid)
