"""Jobs on a trained workdir: --mode=eval, sample and complete."""

from __future__ import annotations

import jax
import ml_collections
import numpy as np

from gated_pixelcnn import checkpointing
from gated_pixelcnn import generate
from gated_pixelcnn import input_pipeline
from gated_pixelcnn import train
from clu import metric_writers


def restore(config: ml_collections.ConfigDict, workdir: str
            ) -> tuple[train.Trainer, train.TrainState]:
  """The trainer for ``config`` and the newest readable state in ``workdir``."""
  trainer = train.Trainer(config)
  manager = checkpointing.create_manager(workdir, config.max_to_keep)
  try:
    restored = checkpointing.restore_latest(manager, workdir,
                                            trainer.abstract_state)
  finally:
    manager.close()
  if restored is None:
    raise checkpointing.CheckpointError(
        f'no checkpoint in {checkpointing.checkpoint_dir(workdir)}; train '
        f'first (--mode=train) or point --workdir at a trained run.')
  return trainer, restored[0]


def _writer(workdir):
  return metric_writers.create_default_writer(
      workdir, just_logging=jax.process_index() > 0)


def evaluate_checkpoint(config: ml_collections.ConfigDict,
                        workdir: str) -> dict[str, float]:
  """--mode=eval: exact test bits/dim of the newest checkpoint in workdir."""
  trainer, state = restore(config, workdir)
  builder = input_pipeline.get_builder(config)
  metrics = trainer.evaluate_split(trainer.eval_params(state), builder)
  step = int(state.step)
  writer = _writer(workdir)
  writer.write_scalars(step, {'eval/bits_per_dim': metrics['bits_per_dim']})
  writer.flush()
  train.write_eval_results(workdir, step, metrics, config)
  return metrics


def sample_checkpoint(config: ml_collections.ConfigDict, workdir: str) -> str:
  """--mode=sample: a grid of samples to WORKDIR/samples/ and TensorBoard."""
  trainer, state = restore(config, workdir)
  step = int(state.step)
  rng = jax.random.fold_in(jax.random.PRNGKey(config.sample.seed), step)
  grid = generate.sample_grid(trainer.model,
                              generate.host_params(trainer.eval_params(state)), rng,
                              trainer.spec.image_shape, config.sample)
  name = f'samples_{config.sample.method}_t{config.sample.temperature:g}'
  return generate.write_grid(_writer(workdir), workdir, step, name, grid)


def complete_checkpoint(config: ml_collections.ConfigDict, workdir: str) -> str:
  """--mode=complete: test images with their lower part sampled again."""
  trainer, state = restore(config, workdir)
  H = trainer.spec.image_shape[0]
  num_rows = config.sample.observed_rows
  if num_rows is None:
    num_rows = H // 2
  if not 0 <= num_rows <= H:
    raise ValueError(f'sample.observed_rows = {num_rows} must be in 0..{H}.')
  builder = input_pipeline.get_builder(config)
  source = input_pipeline.open_split(builder, trainer.spec.eval_split)
  n = min(config.sample.num_samples, len(source))
  examples = source.__getitems__(list(range(n)))
  images = np.stack([ex['image'] for ex in examples])
  labels = (np.asarray([ex['label'] for ex in examples], np.int32)
            if trainer.model.num_classes else None)
  step = int(state.step)
  rng = jax.random.fold_in(jax.random.PRNGKey(config.sample.seed), step)
  grid = generate.completion_grid(
      trainer.model, generate.host_params(trainer.eval_params(state)), rng, images,
      labels, num_rows, config.sample.num_completions, config.sample)
  return generate.write_grid(_writer(workdir), workdir, step, 'completions',
                             grid)
