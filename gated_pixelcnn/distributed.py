"""The multi-process runtime: ``jax.distributed`` behind ``main.py --distributed``.

One process per host (TPU VM worker, GPU node) runs the same command. With
``--distributed`` each calls :func:`initialize` before anything touches a
device; afterwards ``jax.devices()`` lists the devices of every process and
one mesh spans them all (train.py). On Cloud TPU VMs and under Slurm JAX
finds the coordinator, the process count and this process's id itself;
elsewhere from ``--coordinator_address`` (or ``JAX_COORDINATOR_ADDRESS``),
``--num_processes`` and ``--process_id``.

What the rest of the package does with several processes:
  * input_pipeline: every process reads only its slice of each global batch
    (and its part of the eval split); train.Trainer.global_batch assembles
    the global arrays with ``jax.make_array_from_process_local_data``.
  * logging, TensorBoard, sample PNGs, config.json and eval_results.json
    come from process 0 only (clu's writer with ``just_logging`` elsewhere).
  * Orbax saves and restores collectively; all processes resume at one step.
  * preemption: SIGTERM reaching any process makes all of them save a
    checkpoint at the same step and exit (train.train_and_evaluate: the
    processes compare their flags at every sync point, <= 32 steps apart).
"""

from __future__ import annotations

import os

from absl import logging
import jax

from gated_pixelcnn import errors

# Setting this environment variable to 1 has the effect of --distributed.
ENV_FLAG = 'GATED_PIXELCNN_DISTRIBUTED'


class DistributedError(errors.UserError, RuntimeError):
  """The multi-process runtime could not start; the message says why."""


def requested(flag: bool) -> bool:
  """--distributed, or GATED_PIXELCNN_DISTRIBUTED=1 in the environment."""
  value = os.environ.get(ENV_FLAG, '').strip().lower()
  if value not in ('', '0', '1', 'false', 'true'):
    raise DistributedError(f'{ENV_FLAG}={value!r}: use 1 or 0.')
  return flag or value in ('1', 'true')


def initialize(coordinator_address: str | None = None,
               num_processes: int | None = None,
               process_id: int | None = None) -> None:
  """``jax.distributed.initialize`` with the given (or detected) parameters.

  Must run before JAX's backends start (before any device is touched).
  Arguments left None are found by JAX on Cloud TPU VMs and under Slurm;
  the coordinator address also from JAX_COORDINATOR_ADDRESS.
  """
  if num_processes is not None and num_processes < 1:
    raise DistributedError(f'--num_processes={num_processes} must be >= 1.')
  if process_id is not None:
    if process_id < 0 or (num_processes is not None and
                          process_id >= num_processes):
      raise DistributedError(
          f'--process_id={process_id} must be in 0..num_processes-1 '
          f'(num_processes={num_processes}).')
  if coordinator_address is not None and ':' not in coordinator_address:
    raise DistributedError(
        f'--coordinator_address={coordinator_address!r} needs a port, e.g. '
        f'10.0.0.2:8476 (the address of process 0).')
  # JAX's preemption service catches SIGTERM itself and has the processes
  # agree on a stop step relative to the step each last reported, which is
  # 0 until the first report: a signal during start-up or restore then
  # names step 1, which a resumed run never reaches, and the run ignores
  # the signal. parallel.handle_sigterm keeps the signal for the loop instead.
  jax.config.update('jax_enable_preemption_service', False)
  try:
    jax.distributed.initialize(coordinator_address=coordinator_address,
                               num_processes=num_processes,
                               process_id=process_id)
  except (ValueError, TypeError, RuntimeError) as e:
    raise DistributedError(
        f'jax.distributed.initialize failed: {e}\nOn Cloud TPU VMs and under '
        f'Slurm --distributed needs nothing else; elsewhere pass '
        f'--coordinator_address=HOST:PORT (process 0\'s address) '
        f'--num_processes=N --process_id=I on every process (the address '
        f'may come from JAX_COORDINATOR_ADDRESS instead). Without '
        f'--distributed the run uses this host\'s devices only.') from e
  logging.info('jax.distributed: process %d of %d, %d local and %d global '
               'devices.', jax.process_index(), jax.process_count(),
               jax.local_device_count(), jax.device_count())
