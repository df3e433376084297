"""Orbax checkpoints under WORKDIR/checkpoints: verified on restore, with a
safe fallback on corruption and clear errors when saving fails.

Every checkpoint's meta records a checksum of the saved state
(`state_checksum`); a checkpoint whose restored state does not match it
(bytes flipped on disk) is treated like an unreadable one. The meta also
records what shapes the state (``expected_meta``, e.g. the model config), so
that resuming with another model names the differing fields instead of
failing on array shapes.
"""

from __future__ import annotations

import contextlib
import functools
import json
import time
from typing import Any
import zlib

from absl import logging
from etils import epath
import jax
from jax import lax
from jax.experimental import multihost_utils
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from gated_pixelcnn import errors
from gated_pixelcnn import workdir as workdir_lib


CheckpointError = errors.CheckpointError


class _ChecksumMismatch(ValueError):
  """The restored state is not the state that was saved."""


def checkpoint_dir(workdir: str) -> epath.Path:
  # epath: local folders and gs:// buckets alike; Orbax needs absolute paths.
  return epath.Path(workdir_lib.resolve(workdir)) / 'checkpoints'


def create_manager(workdir: str, max_to_keep: int) -> ocp.CheckpointManager:
  """A manager that keeps the newest ``max_to_keep`` steps.

  Saves are synchronous: a failed save raises at its own step, and leaves no
  background thread behind (Orbax's async save threads wait minutes for
  signals a failed commit never sends, holding the process at exit). The
  save is a small part of the time between checkpoints.
  """
  options = ocp.CheckpointManagerOptions(
      preservation_policy=ocp.checkpoint_managers.LatestN(max_to_keep),
      create=True, enable_async_checkpointing=False)
  return ocp.CheckpointManager(checkpoint_dir(workdir), options=options,
                               item_names=('state', 'meta'))


# --------------------------------------------------------------- checksum


def _mix32(x: jax.Array) -> jax.Array:
  """A bijection of uint32 that spreads every input bit over the output."""
  x = x ^ (x >> 16)
  x = x * jnp.uint32(0x85EBCA6B)
  x = x ^ (x >> 13)
  x = x * jnp.uint32(0xC2B2AE35)
  return x ^ (x >> 16)


def _bits(x: jax.Array) -> jax.Array:
  """uint32 [N]: the bits of every element (complex: real and imaginary
  parts; PRNG keys: their key data; sub-byte types widened first)."""
  if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
    x = jax.random.key_data(x)
  if jnp.iscomplexobj(x):
    x = jnp.stack([x.real, x.imag])
  if x.dtype == jnp.bool_ or x.dtype.itemsize < 1 or jnp.dtype(
      x.dtype).name in ('int4', 'uint4', 'int2', 'uint2'):
    x = x.astype(jnp.int32)
  unsigned = {1: jnp.uint8, 2: jnp.uint16}.get(x.dtype.itemsize, jnp.uint32)
  return lax.bitcast_convert_type(x, unsigned).astype(jnp.uint32).reshape(-1)


def _checksum_lanes(tree) -> jax.Array:
  """uint32[2]: sum over every element of mix(bits ^ mix(index, leaf, lane)).

  Integer sums wrap exactly and in any order, so the value does not depend
  on the sharding, the device count or the platform. Changing one element
  changes its (bijective) term and so the sum in both lanes: a flipped bit
  is always detected; several changes cancel with probability ~2^-64.
  """
  total = jnp.zeros((2,), jnp.uint32)
  for path, x in jax.tree_util.tree_leaves_with_path(tree):
    x = jnp.asarray(x)
    name = f'{jax.tree_util.keystr(path)}|{x.dtype}|{x.shape}'.encode()
    seed = zlib.crc32(name)
    bits = _bits(x)
    index = jnp.arange(bits.size, dtype=jnp.uint32)
    lanes = [jnp.sum(_mix32(bits ^ _mix32(index * jnp.uint32(0x9E3779B1) +
                                          jnp.uint32((seed + k) % 2**32))),
                     dtype=jnp.uint32)
             for k in (0, 0x632BE5AB)]
    total = total + jnp.stack(lanes)
  return total


def state_checksum(state: Any) -> str:
  """16 hex digits naming the exact bits of every array of ``state`` (any
  sharding, any process count; computed on the devices)."""
  leaves = jax.tree_util.tree_leaves(state)
  meshes = [x.sharding.mesh for x in leaves
            if isinstance(getattr(x, 'sharding', None),
                          jax.sharding.NamedSharding)]
  lanes = _checksum_fn(meshes[0] if meshes else None)(state)
  return ''.join(f'{int(v):08x}' for v in np.asarray(
      lanes.addressable_data(0)))


@functools.lru_cache(maxsize=8)
def _checksum_fn(mesh):
  """The jitted checksum, its result replicated on ``mesh`` so that every
  process can read it."""
  out = (jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
         if mesh is not None else None)
  return jax.jit(_checksum_lanes, out_shardings=out)


# ------------------------------------------------------------------- save


def save(manager: ocp.CheckpointManager, step: int, state: Any,
         meta: dict[str, Any]) -> None:
  """Saves ``state`` (a pytree of arrays) and JSON ``meta`` (plus the
  state's checksum) at ``step``; a failed save is a CheckpointError."""
  try:
    meta = {**meta, 'state_checksum': state_checksum(state)}
    manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)),
                 force=True)
  except Exception as e:  # Orbax raises many types for I/O failures.
    raise _save_error(manager, e) from e


def close(manager: ocp.CheckpointManager) -> None:
  """Waits for any save in flight and closes the manager, also when a save
  failed; a failure is then a CheckpointError."""
  error = None
  try:
    manager.wait_until_finished()
  except Exception as e:  # pylint: disable=broad-except
    error = e
  finally:
    with contextlib.suppress(Exception):
      manager.close()
  if error is not None:
    raise _save_error(manager, error) from error


def _save_error(manager, error: Exception) -> CheckpointError:
  with contextlib.suppress(Exception):
    manager.reload()
  last = None
  with contextlib.suppress(Exception):
    last = manager.latest_step()
  where = (f'the newest complete checkpoint is step {last}' if last is not None
           else 'no checkpoint was completed')
  return CheckpointError(
      f'saving a checkpoint in {manager.directory} failed '
      f'({type(error).__name__}: {error}); training stopped and {where}. Fix '
      'the cause (disk space, permissions, the path), then rerun the same '
      'command to resume.')


def probe(workdir: str) -> None:
  """Saves and reads back a tiny checkpoint beside the real ones, so that a
  path Orbax or TensorStore cannot use (or a read-only or full disk) fails
  now, with a clear error, and not at the first save. Synchronous, like
  the saves of training."""
  path = epath.Path(workdir_lib.resolve(workdir)) / '.gated_pixelcnn.probe'
  tree = {'x': np.arange(8, dtype=np.int32)}

  def barrier(name):
    if jax.process_count() > 1:
      multihost_utils.sync_global_devices(name)

  try:
    if jax.process_index() == 0 and path.exists():
      path.rmtree()   # left by a run that died while probing
    barrier('checkpoint probe cleared')
    with ocp.Checkpointer(ocp.StandardCheckpointHandler()) as checkpointer:
      checkpointer.save(path, args=ocp.args.StandardSave(tree))
      back = checkpointer.restore(path, args=ocp.args.StandardRestore(tree))
    if not np.array_equal(np.asarray(back['x']), tree['x']):
      raise ValueError('read back other values than it wrote')
  except Exception as e:  # pylint: disable=broad-except
    hint = (' Orbax/TensorStore cannot read paths with "[" and "]": rename '
            'the folder.' if '[' in str(path) and ']' in str(path) else '')
    raise workdir_lib.WorkdirError(
        f'checkpoints cannot be written to and read back from {workdir} '
        f'({type(e).__name__}: {str(e)[:300]}).{hint} Use another --workdir.'
    ) from e
  finally:
    barrier('checkpoint probe done')
    if jax.process_index() == 0:
      with contextlib.suppress(Exception):
        path.rmtree()


# ---------------------------------------------------------------- restore


def _move_aside(workdir: str, step: int) -> epath.Path:
  src = checkpoint_dir(workdir) / str(step)
  dst_root = epath.Path(workdir_lib.resolve(workdir)) / 'checkpoints_corrupt'
  dst = dst_root / f'{step}-{time.strftime("%Y%m%d-%H%M%S")}'
  if jax.process_index() == 0:
    dst_root.mkdir(parents=True, exist_ok=True)
    src.rename(dst)
  multihost_utils.sync_global_devices(f'checkpoint {step} moved aside')
  return dst


def restore_latest(manager: ocp.CheckpointManager, workdir: str,
                   abstract_state: Any, read_only: bool = False,
                   expected_meta: dict[str, Any] | None = None
                   ) -> tuple[Any, dict[str, Any]] | None:
  """Restores the newest readable checkpoint, or None if there is none.

  A checkpoint that cannot be read, or whose state does not match its
  recorded checksum, is reported by path and moved to
  WORKDIR/checkpoints_corrupt/ (never deleted) so that training continues
  from the previous one; if no checkpoint is readable, raises
  CheckpointError and leaves every file where it is. ``read_only``
  (reading another run, e.g. the one a conditional model depends on):
  unreadable checkpoints are reported but never moved. ``expected_meta``:
  values the newest checkpoint's meta must have (what shapes the state);
  a difference is a CheckpointError naming the fields, before any restore.
  """
  manager.reload()
  steps = sorted(manager.all_steps(), reverse=True)
  if steps and expected_meta:
    _check_expected(manager, workdir, steps[0], expected_meta)
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
  """The state and meta of ``step``, verified against the meta's checksum
  (checkpoints older than the checksum are taken as they are)."""
  restored = manager.restore(step, args=ocp.args.Composite(
      state=ocp.args.StandardRestore(abstract_state),
      meta=ocp.args.JsonRestore()))
  expected = dict(restored['meta']).get('state_checksum')
  if expected is not None:
    actual = state_checksum(restored['state'])
    if actual != expected:
      raise _ChecksumMismatch(
          f'the restored state has checksum {actual}, the saved one had '
          f'{expected}: its files were altered on disk')
  return restored


def _flat(tree: Any, prefix: str = '') -> dict[str, Any]:
  if isinstance(tree, dict):
    out = {}
    for k, v in tree.items():
      out.update(_flat(v, f'{prefix}{k}.'))
    return out
  return {prefix[:-1]: tree}


def _check_expected(manager, workdir: str, step: int,
                    expected: dict[str, Any]) -> None:
  """CheckpointError naming every field of ``expected`` that the meta of
  ``step`` (or, for checkpoints older than that record, the run's
  config.json) has with another value."""
  expected = json.loads(json.dumps(expected, default=str))  # as saved
  try:
    meta = dict(manager.restore(step, args=ocp.args.Composite(
        meta=ocp.args.JsonRestore()))['meta'])
  except Exception:  # pylint: disable=broad-except
    return   # unreadable: restore_latest reports it
  recorded = {k: meta[k] for k in expected if k in meta}
  ours, theirs = _flat(expected), _flat(recorded)
  diff = [k for k in ours if k in theirs and theirs[k] != ours[k]]
  diff += [k for k in theirs if k not in ours]   # e.g. a model field dropped
  if not recorded:   # an older checkpoint: the run's config, where it agrees
    with contextlib.suppress(Exception):
      saved = json.loads((epath.Path(workdir_lib.resolve(workdir)) /
                          'config.json').read_text())
      theirs = _flat({k: saved[k] for k in expected if k in saved})
      diff = [k for k in ours if k in theirs and theirs[k] != ours[k]]
  if diff:
    shown = '; '.join(f'{k} = {theirs.get(k, "(unset)")!r} there, '
                      f'{ours.get(k, "(unset)")!r} here' for k in diff[:8])
    raise CheckpointError(
        f'the checkpoints in {checkpoint_dir(workdir)} (newest: step {step}) '
        f'were made with another configuration: {shown}. Resume with the '
        'settings of that run (its config.json), or train this one in a new '
        '--workdir.')


def restore_step(manager: ocp.CheckpointManager, workdir: str,
                 abstract_state: Any, step: int,
                 expected_meta: dict[str, Any] | None = None) -> Any:
  """The state saved at ``step``, never moving files; CheckpointError if
  that step is not there, was made with another ``expected_meta``, or
  cannot be read."""
  manager.reload()
  steps = sorted(manager.all_steps())
  if step not in steps:
    raise CheckpointError(
        f'no checkpoint of step {step} in {checkpoint_dir(workdir)} (it has '
        f'{steps or "none"}): the checkpoint was deleted (only the newest '
        f'max_to_keep are kept) or this is another run.')
  if expected_meta:
    _check_expected(manager, workdir, step, expected_meta)
  try:
    return _restore(manager, step, abstract_state)['state']
  except Exception as e:  # Orbax raises many types for unreadable files.
    raise CheckpointError(f'checkpoint {checkpoint_dir(workdir) / str(step)} '
                          f'cannot be read ({type(e).__name__}: {e}).') from e
