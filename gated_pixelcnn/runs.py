"""Trained runs read back: the Trainer for a config with the run it is
conditioned on loaded, and a run's state from its workdir's checkpoints or
from a pretrained folder. The --mode jobs (modes.py), the codec and the
conditioning of another run's model all start here; train.py never
imports it."""

from __future__ import annotations

import jax
import ml_collections

from gated_pixelcnn import checkpointing
from gated_pixelcnn import conditioning
from gated_pixelcnn import pretrained
from gated_pixelcnn import records
from gated_pixelcnn import steps
from gated_pixelcnn import train
from gated_pixelcnn import validation


def load_run(workdir: str | None, what: str, hint: str
             ) -> conditioning.Run:
  """Config, trainer and newest checkpoint's params of the run in workdir,
  read-only (a corrupt newest checkpoint is skipped, never moved)."""
  config = conditioning.read_config(workdir, what, hint)
  trainer, state = restore(config, workdir, read_only=True)
  return conditioning.Run(config, trainer, trainer.eval_params(state),
                          int(state.step))


def load_conditioning(config: ml_collections.ConfigDict
                      ) -> conditioning.Run | None:
  """The run ``config.conditioning.workdir`` holds if the model is
  conditioned on one (config.conditioning.source), else None."""
  cond = config.get('conditioning', None)
  source = cond.source if cond is not None else ''
  if not source:
    return None
  what, hint = conditioning.RUN_KINDS[source]
  return load_run(cond.workdir, what, hint)


def make_trainer(config: ml_collections.ConfigDict,
                 mesh: jax.sharding.Mesh | None = None) -> train.Trainer:
  """The Trainer of ``config``: the config checked first, then the run it
  is conditioned on (if any) loaded and handed to it."""
  validation.validate_config(
      config, num_devices=mesh.size if mesh is not None else None)
  return train.Trainer(config, mesh, load_conditioning(config))


def restore(config: ml_collections.ConfigDict, workdir: str,
            read_only: bool = False, step: int | None = None,
            trainer: train.Trainer | None = None
            ) -> tuple[train.Trainer, steps.TrainState]:
  """The trainer for ``config`` and its state in ``workdir``: the newest
  readable one, or that of ``step`` (``read_only``: see
  `checkpointing.restore_latest`; a given step never moves files). With
  ``config.pretrained`` set, the state of that pretrained folder."""
  if trainer is None:
    trainer = make_trainer(config)
  if config.get('pretrained'):
    return trainer, pretrained.state(config, trainer, step)
  if (step is not None or read_only) and not (
      checkpointing.checkpoint_dir(workdir).exists()):
    raise checkpointing.CheckpointError(
        f'no checkpoints in {checkpointing.checkpoint_dir(workdir)}: point '
        '--workdir at a trained run.')
  manager = checkpointing.create_manager(workdir, config.max_to_keep)
  layout = records.state_config(config)
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
