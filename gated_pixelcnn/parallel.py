"""Where the steps run: the data-parallel mesh and parameter sharding, CPU
devices and micro-batches on CPU hosts, and SIGTERM as a request to stop
that all processes agree on."""

from __future__ import annotations

import os
import signal
import threading

from absl import logging
import jax
from jax.experimental import multihost_utils
import numpy as np

from gated_pixelcnn import errors

P = jax.sharding.PartitionSpec


# Auto micro-batching on CPUs: the most pixels one device processes at once.
# XLA:CPU's train step is fastest per pixel when a part's activations stay in
# cache: 8 parts of 2 64x64 images per core run 1.3x faster than one of 16.
CPU_MICROBATCH_PIXELS = 8192


def num_microbatches(config, num_devices: int, image_shape,
                     platform: str) -> int:
  """``config.microbatches``, or for 0 (auto) the parts a device's batch is
  split into: on CPU the fewest that keep a part within
  CPU_MICROBATCH_PIXELS pixels, elsewhere 1."""
  if config.microbatches:
    return config.microbatches
  if config.model.name == 'embedding_net':
    return 1  # the triplet loss mines triplets in the whole batch
  per_device = max(1, config.batch_size // num_devices)
  if platform != 'cpu':
    return 1
  pixels = image_shape[0] * image_shape[1]
  for parts in range(1, per_device + 1):
    if per_device % parts == 0 and (
        per_device // parts * pixels <= CPU_MICROBATCH_PIXELS):
      return parts
  return per_device


def num_cores() -> int:
  """CPU cores this process may run on (cgroup/affinity aware where
  possible)."""
  try:
    return len(os.sched_getaffinity(0))
  except AttributeError:  # not on Linux
    return os.cpu_count() or 1


def cpu_device_count(config, cores: int) -> int:
  """How many CPU devices a CPU-only host should expose for ``config``.

  ``config.cpu_devices`` > 0 is taken as is. 0 (auto) gives one device per
  core, or the largest count <= cores that divides both batch sizes. On
  XLA:CPU a data-parallel mesh of one device per core runs the train step
  1.1-1.3x faster than one device using all cores (bench/train.py): the
  small convolutions, gates and transposes of a 2-core step do not keep two
  threads busy, two independent half-batch programs do.
  """
  if config.cpu_devices:
    return config.cpu_devices
  for n in range(max(1, min(cores, config.batch_size)), 0, -1):
    if config.batch_size % n == 0 and config.eval_batch_size % n == 0:
      return n
  return 1


def configure_cpu_devices(config) -> None:
  """Sets ``jax_num_cpu_devices`` from ``config.cpu_devices``.

  Must run before JAX's backends start (main.py calls it first). It only
  shapes the CPU backend: on a TPU/GPU host the accelerators stay the
  devices. Left alone when XLA_FLAGS already forces a host device count.
  """
  if config.cpu_devices < 0:
    raise errors.ConfigError(f'bad config: cpu_devices = {config.cpu_devices}'
                             ' must be >= 0 (0: one per core).')
  if 'xla_force_host_platform_device_count' in os.environ.get('XLA_FLAGS', ''):
    return
  count = cpu_device_count(config, num_cores())
  try:
    jax.config.update('jax_num_cpu_devices', count)
  except RuntimeError as e:  # backends already started
    logging.warning('cpu_devices = %d not applied: %s', count, e)


def make_mesh(devices=None) -> jax.sharding.Mesh:
  devices = np.asarray(devices if devices is not None else jax.devices())
  return jax.sharding.Mesh(devices.reshape(-1), ('data',))


def param_sharding(mesh, x, shard_params: bool, min_size: int = 2**18):
  """Replicated, or (FSDP style) split over the whole mesh on its largest
  axis that the mesh size divides, for arrays of ``min_size`` elements or
  more; XLA gathers each before use and reduce-scatters its gradient."""
  n = mesh.shape['data']
  if shard_params and n > 1 and x.size >= min_size:
    for axis in np.argsort(x.shape)[::-1]:
      if x.shape[axis] % n == 0:
        spec = [None] * x.ndim
        spec[axis] = 'data'
        return jax.sharding.NamedSharding(mesh, P(*spec))
  return jax.sharding.NamedSharding(mesh, P())


_SIGTERM = threading.Event()


def _on_sigterm(signum, frame):
  del signum, frame
  logging.warning('SIGTERM received: saving a checkpoint and stopping.')
  _SIGTERM.set()


def handle_sigterm() -> None:
  """Makes SIGTERM a request to checkpoint and stop (train_and_evaluate).

  main.py calls it first thing in --mode=train, before JAX starts, so that a
  signal during start-up, restore or compilation is kept for the loop.
  (JAX's own preemption service, which would also catch SIGTERM, is kept
  off: see distributed.initialize.)
  """
  signal.signal(signal.SIGTERM, _on_sigterm)


class Preemption:
  """SIGTERM as a flag the loop checks after every step; installs the
  handler for the loop if handle_sigterm has not already."""

  def __init__(self):
    self._previous = None

  @property
  def requested(self) -> bool:
    return _SIGTERM.is_set()

  def __enter__(self):
    if signal.getsignal(signal.SIGTERM) is not _on_sigterm:
      try:
        self._previous = signal.signal(signal.SIGTERM, _on_sigterm)
      except ValueError:  # not the main thread: no handler, no flag
        self._previous = None
    return self

  def __exit__(self, *exc):
    _SIGTERM.clear()
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)


def any_process(flag: bool) -> bool:
  """True on every process if ``flag`` is set on any (a collective)."""
  return bool(np.any(multihost_utils.process_allgather(np.asarray(flag))))
