"""Orbax checkpoints under WORKDIR/checkpoints, with a safe fallback on corruption."""

from __future__ import annotations

import time
from typing import Any

from absl import logging
from etils import epath
import jax
from jax.experimental import multihost_utils
import orbax.checkpoint as ocp


class CheckpointError(RuntimeError):
  """No usable checkpoint where one was needed; the message says what to do."""


def checkpoint_dir(workdir: str) -> epath.Path:
  # epath: local folders and gs:// buckets alike.
  return epath.Path(workdir) / 'checkpoints'


def create_manager(workdir: str, max_to_keep: int) -> ocp.CheckpointManager:
  """A manager that keeps the newest ``max_to_keep`` steps (saves are async)."""
  options = ocp.CheckpointManagerOptions(
      preservation_policy=ocp.checkpoint_managers.LatestN(max_to_keep),
      create=True)
  return ocp.CheckpointManager(checkpoint_dir(workdir), options=options,
                               item_names=('state', 'meta'))


def save(manager: ocp.CheckpointManager, step: int, state: Any,
         meta: dict[str, Any]) -> None:
  """Saves ``state`` (a pytree of arrays) and JSON ``meta`` at ``step``."""
  manager.save(step, args=ocp.args.Composite(
      state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)),
               force=True)


def _move_aside(workdir: str, step: int) -> epath.Path:
  src = checkpoint_dir(workdir) / str(step)
  dst_root = epath.Path(workdir) / 'checkpoints_corrupt'
  dst = dst_root / f'{step}-{time.strftime("%Y%m%d-%H%M%S")}'
  if jax.process_index() == 0:
    dst_root.mkdir(parents=True, exist_ok=True)
    src.rename(dst)
  multihost_utils.sync_global_devices(f'checkpoint {step} moved aside')
  return dst


def restore_latest(manager: ocp.CheckpointManager, workdir: str,
                   abstract_state: Any, read_only: bool = False
                   ) -> tuple[Any, dict[str, Any]] | None:
  """Restores the newest readable checkpoint, or None if there is none.

  A checkpoint that cannot be read is reported by path and moved to
  WORKDIR/checkpoints_corrupt/ (never deleted) so that training continues
  from the previous one; if no checkpoint is readable, raises CheckpointError
  and leaves every file where it is. ``read_only`` (reading another run,
  e.g. the one a conditional model depends on): unreadable checkpoints are
  reported but never moved.
  """
  manager.reload()
  steps = sorted(manager.all_steps(), reverse=True)
  failures = []
  for step in steps:
    try:
      restored = _restore(manager, step, abstract_state)
    except Exception as e:  # Orbax raises many types for unreadable files.
      failures.append((step, e))
      continue
    for bad_step, error in failures:
      if read_only:
        logging.warning('Checkpoint %s is unreadable (%s: %s); using step %d '
                        'of that run instead.',
                        checkpoint_dir(workdir) / str(bad_step),
                        type(error).__name__, error, step)
        continue
      dst = _move_aside(workdir, bad_step)
      logging.warning(
          'Checkpoint %s is unreadable (%s: %s); moved it to %s and resumed '
          'from step %d instead.', checkpoint_dir(workdir) / str(bad_step),
          type(error).__name__, error, dst, step)
    if failures and not read_only:
      manager.reload()
    return restored['state'], dict(restored['meta'])
  if failures:
    listing = '\n'.join(f'  {checkpoint_dir(workdir) / str(s)}: '
                        f'{type(e).__name__}: {e}' for s, e in failures)
    fix = ('train that run again, or point to another one.' if read_only else
           'Move these folders elsewhere to start training from scratch in '
           'this workdir, or point --workdir at a fresh folder.')
    raise CheckpointError(
        f'no checkpoint in {checkpoint_dir(workdir)} can be read:\n{listing}\n'
        + fix)
  return None


def _restore(manager, step, abstract_state):
  return manager.restore(step, args=ocp.args.Composite(
      state=ocp.args.StandardRestore(abstract_state),
      meta=ocp.args.JsonRestore()))


def restore_step(manager: ocp.CheckpointManager, workdir: str,
                 abstract_state: Any, step: int) -> Any:
  """The state saved at ``step``, never moving files; CheckpointError if
  that step is not there or cannot be read."""
  manager.reload()
  steps = sorted(manager.all_steps())
  if step not in steps:
    raise CheckpointError(
        f'no checkpoint of step {step} in {checkpoint_dir(workdir)} (it has '
        f'{steps or "none"}): the checkpoint was deleted (only the newest '
        f'max_to_keep are kept) or this is another run.')
  try:
    return _restore(manager, step, abstract_state)['state']
  except Exception as e:  # Orbax raises many types for unreadable files.
    raise CheckpointError(f'checkpoint {checkpoint_dir(workdir) / str(step)} '
                          f'cannot be read ({type(e).__name__}: {e}).') from e
