"""Training and evaluation: pure jitted steps on a data-parallel mesh, the loop.

The mesh has one axis, ``data``, over all devices of all processes. Batches are
split on it; parameters and optimizer state are replicated, or (with
``config.shard_params``) large arrays are split over it. XLA inserts the
gradient all-reduce. Both steps are pure functions of their inputs; the train
state is donated.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import json
import math
import os
import signal
import threading
from typing import Any, Callable, Iterable

from absl import logging
from clu import metric_writers
from clu import parameter_overview
from clu import periodic_actions
from etils import epath
import flax
import jax
import jax.numpy as jnp
from jax.experimental import multihost_utils
import ml_collections
import numpy as np
import optax

from gated_pixelcnn import checkpointing
from gated_pixelcnn import conditioning
from gated_pixelcnn import datasets
from gated_pixelcnn import errors
from gated_pixelcnn import generate
from gated_pixelcnn import input_pipeline
from gated_pixelcnn import likelihood
from gated_pixelcnn import models
from gated_pixelcnn import optim
from gated_pixelcnn import validation
from gated_pixelcnn import workdir as workdir_lib

P = jax.sharding.PartitionSpec
# Fetch metrics (and so block) at least this often: on small CPU machines,
# queueing many more steps with collectives aborts XLA's rendezvous.
MAX_STEPS_WITHOUT_SYNC = 32


@flax.struct.dataclass
class TrainState:
  """Everything needed to resume training exactly."""
  step: jax.Array          # int32 scalar: updates applied so far
  params: Any
  opt_state: Any
  ema_params: Any          # zero-started moving average of params, or None
  rng: jax.Array           # uint32[2] key for stochastic work (samples)


def eval_params(state: TrainState, ema_decay: float):
  """The parameters to evaluate and sample with: the moving average if one
  is kept, bias-corrected (m_t / (1 - d^t), Adam's correction), which is
  exactly the average of params_1..params_t weighted by d^(t-i): right from
  the first step, where an average started at the initial parameters would
  still be mostly them (0.999^600 = 55% after 600 steps)."""
  if state.ema_params is None:
    return state.params
  step = state.step.astype(jnp.float32)
  weight = 1.0 - jnp.power(jnp.float32(ema_decay), step)
  return jax.tree_util.tree_map(
      lambda m, p: jnp.where(step > 0, m / jnp.maximum(weight, 1e-30), p),
      state.ema_params, state.params)


class NonFiniteLossError(errors.UserError, FloatingPointError):
  """Training produced a NaN or infinite loss."""


# The config checks and the optimizer live in their own modules; these names
# stay importable from here.
validate_config = validation.validate_config
OPTIMIZERS = optim.OPTIMIZERS
create_optimizer = optim.create_optimizer


# ------------------------------------------------------------------- steps


def _model_kwargs(model, batch) -> dict[str, Any]:
  kwargs = {'labels': batch['label']} if model.num_classes else {}
  if 'cond' in batch:
    kwargs['cond'] = batch['cond']
  return kwargs


# What each model objective reports: the metric's name and the per-example
# loss's unit (the metric is the mean per-example loss divided by it).
METRICS = {'likelihood': 'bits_per_dim', 'mse': 'mse',
           'triplet': 'triplet_loss'}
TRIPLET_MARGIN = 0.2


def metric_name(model) -> str:
  return METRICS[model.objective]


def _metric_scale(model, image_shape) -> float:
  dims = math.prod(image_shape)
  return {'likelihood': dims * math.log(2.0), 'mse': float(dims),
          'triplet': 1.0}[model.objective]


def triplet_losses(embeddings_BxD: jax.Array, labels_B: jax.Array,
                   valid_B: jax.Array | None = None,
                   margin: float = TRIPLET_MARGIN) -> jax.Array:
  """Triplet loss per anchor, float32 [B], over all triplets in the batch.

  For anchor a: the mean of relu(d(a, p) - d(a, n) + margin) over every
  same-label p != a and other-label n of the batch ("batch all"; mining only
  the hardest triplet collapses the embedding on this data). Anchors without
  a positive or a negative, and invalid ones, get 0.
  """
  e = embeddings_BxD.astype(jnp.float32)
  d2 = jnp.sum((e[:, None] - e[None, :])**2, axis=-1)
  d = jnp.sqrt(jnp.maximum(d2, 1e-12))
  B = e.shape[0]
  valid = jnp.ones((B,), bool) if valid_B is None else valid_B.astype(bool)
  pair = valid[:, None] & valid[None, :]
  same = labels_B[:, None] == labels_B[None, :]
  pos = same & ~jnp.eye(B, dtype=bool) & pair                   # [a, p]
  neg = ~same & pair                                             # [a, n]
  use = pos[:, :, None] & neg[:, None, :]                        # [a, p, n]
  hinge = jax.nn.relu(d[:, :, None] - d[:, None, :] + margin)
  total = jnp.sum(jnp.where(use, hinge, 0.0), axis=(1, 2))
  count = jnp.sum(use, axis=(1, 2))
  return jnp.where(count > 0, total / jnp.maximum(count, 1), 0.0)


def per_example_loss(model, params, batch, nll_mask=None) -> jax.Array:
  """float32 [B]: nats (likelihood), squared error summed over the image
  in pixel units (mse) or the triplet loss (triplet)."""
  images = batch['image']
  out = model.apply({'params': params}, images, **_model_kwargs(model, batch))
  if model.objective == 'likelihood':
    return -likelihood.log_prob(out, images, nll_mask)
  if model.objective == 'mse':
    return jnp.sum((out - images.astype(jnp.float32))**2, axis=(1, 2, 3))
  return triplet_losses(out, batch['label'], batch.get('mask'))


def _microbatches(batch: dict[str, jax.Array], num: int) -> dict[str, jax.Array]:
  """[B, ...] -> [num, B / num, ...]; micro-batch m holds rows m, m + num, ...

  Strided, so that every device keeps its own rows (each device holds a
  contiguous block of B / devices rows, a multiple of ``num``) and the split
  needs no communication.
  """
  def split(x):
    x = x.reshape(x.shape[0] // num, num, *x.shape[1:])
    return jnp.swapaxes(x, 0, 1)
  return jax.tree_util.tree_map(split, batch)


def train_step(state: TrainState, batch: dict[str, jax.Array], *, model, tx,
               schedule, ema_decay: float, microbatches: int = 1,
               nll_mask=None) -> tuple[TrainState, dict]:
  """One update on the mean loss (bits/dim for likelihood models) of the
  (global) batch; ``nll_mask`` [H, W, C] leaves given sub-pixels out.

  With ``microbatches`` > 1 the batch is processed in that many equal parts,
  unrolled, and their gradients averaged: the same update. On CPUs each
  part's working set then stays in cache (bench/train.py). XLA schedules
  the parts together, so it does not lower peak memory.
  """

  scale = _metric_scale(model, batch['image'].shape[1:])

  def loss_fn(params, part):
    return per_example_loss(model, params, part, nll_mask).mean() / scale

  if microbatches == 1:
    loss, grads = jax.value_and_grad(loss_fn)(state.params, batch)
  else:
    # Unrolled: XLA:CPU runs convolutions inside a `lax.scan` body about 10x
    # slower than at the top level.
    parts = _microbatches(batch, microbatches)
    total = None
    for m in range(microbatches):
      part = jax.tree_util.tree_map(lambda x, m=m: x[m], parts)
      value = jax.value_and_grad(loss_fn)(state.params, part)
      total = value if total is None else jax.tree_util.tree_map(
          jnp.add, total, value)
    loss, grads = jax.tree_util.tree_map(lambda x: x / microbatches, total)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  ema = state.ema_params
  if ema is not None:   # m_t = d m_{t-1} + (1 - d) params_t, m_0 = 0
    ema = optax.incremental_update(params, ema, 1.0 - ema_decay)
  metrics = {metric_name(model): loss, 'grad_norm': optax.tree.norm(grads),
             'learning_rate': schedule(state.step)}
  return state.replace(step=state.step + 1, params=params,
                       opt_state=opt_state, ema_params=ema), metrics


def eval_step(params, batch: dict[str, jax.Array], *, model,
              nll_mask=None) -> dict:
  """Sum of per-example losses (nats for likelihood models) and number of
  real (unmasked) images in the batch."""
  losses = per_example_loss(model, params, batch, nll_mask)
  mask = batch['mask']
  return {'total': jnp.where(mask, losses, 0.0).sum(),
          'count': mask.sum().astype(jnp.int32)}


# ----------------------------------------------------------------- sharding


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
  """CPU cores this process may run on (cgroup/affinity aware where possible)."""
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


class Trainer:
  """Model, optimizer, mesh and the jitted steps for one config."""

  def __init__(self, config, mesh: jax.sharding.Mesh | None = None):
    self.config = config
    # The dataset's spec, and the model's (images subsampled by
    # config.subsample, e.g. the low-resolution model of multi-scale).
    self.data_spec = validate_config(
        config, num_devices=mesh.size if mesh is not None else None)
    f = config.get('subsample', 1)
    H, W, C = self.data_spec.image_shape
    self.spec = dataclasses.replace(self.data_spec,
                                    image_shape=(H // f, W // f, C))
    self.mesh = mesh if mesh is not None else make_mesh()
    self.model = models.create_model(config.model)
    self.metric = metric_name(self.model)
    self.with_labels = bool(self.model.num_classes) or (
        self.model.objective == 'triplet')
    # Loads the run this model is conditioned on, if any (clear errors first).
    self.conditioner = conditioning.Conditioner(config, self.spec.image_shape)
    nll_mask = self.conditioner.nll_mask(self.spec.image_shape)
    self.tx, self.schedule = create_optimizer(config)
    self.microbatches = num_microbatches(
        config, self.mesh.size, self.spec.image_shape,
        self.mesh.devices.flat[0].platform)
    self.batch_sharding = jax.sharding.NamedSharding(self.mesh, P('data'))
    replicated = jax.sharding.NamedSharding(self.mesh, P())

    abstract = jax.eval_shape(self._init, jax.random.PRNGKey(0))
    self.state_sharding = jax.tree_util.tree_map(
        lambda x: param_sharding(self.mesh, x, config.shard_params,
                                 config.get('shard_params_min_size', 2**18)),
        abstract)
    self.state_sharding = self.state_sharding.replace(
        step=replicated, rng=replicated)
    self.abstract_state = jax.tree_util.tree_map(
        lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
        abstract, self.state_sharding)

    self.init = jax.jit(self._init, out_shardings=self.state_sharding)
    self.train_step = jax.jit(
        functools.partial(train_step, model=self.model, tx=self.tx,
                          schedule=self.schedule,
                          ema_decay=config.ema_decay,
                          microbatches=self.microbatches, nll_mask=nll_mask),
        in_shardings=(self.state_sharding, self.batch_sharding),
        out_shardings=(self.state_sharding, replicated),
        donate_argnums=0)
    self.eval_step = jax.jit(
        functools.partial(eval_step, model=self.model, nll_mask=nll_mask),
        in_shardings=(self.state_sharding.params, self.batch_sharding),
        out_shardings=replicated)

  def _init(self, rng) -> TrainState:
    init_rng, state_rng = jax.random.split(rng)
    H, W, C = self.spec.image_shape
    batch = {'image': jnp.zeros((1, H, W, C), jnp.int32),
             'label': jnp.zeros((1,), jnp.int32)}
    if self.conditioner.example is not None:
      batch['cond'] = self.conditioner.example
    params = self.model.init(init_rng, batch['image'],
                             **_model_kwargs(self.model, batch))['params']
    ema = (jax.tree_util.tree_map(jnp.zeros_like, params)
           if self.config.ema_decay else None)
    return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                      opt_state=self.tx.init(params), ema_params=ema,
                      rng=state_rng)

  def global_batch(self, local: dict[str, np.ndarray]) -> dict[str, jax.Array]:
    """The global batch from this process's part (see input_pipeline), with
    images subsampled by config.subsample and the conditioning input."""
    expected = self.data_spec.image_shape
    if local['image'].shape[1:] != expected:
      raise datasets.DatasetError(
          f'{self.config.dataset} images have shape {local["image"].shape[1:]}'
          f', expected {expected}; the prepared data does not match the spec.')
    f = self.config.get('subsample', 1)
    if f > 1:
      local = {**local, 'image': np.ascontiguousarray(
          local['image'][:, ::f, ::f])}
    batch = {k: jax.make_array_from_process_local_data(self.batch_sharding, v)
             for k, v in local.items()}
    return self.conditioner.add(batch)

  def eval_params(self, state: TrainState):
    return eval_params(state, self.config.ema_decay)

  def evaluate_split(self, params, builder) -> dict[str, float]:
    """Exact bits/dim of the dataset's whole eval split."""
    split = self.spec.eval_split
    metrics = self.evaluate(params, input_pipeline.open_split(builder, split),
                            builder.info.splits[split].num_examples,
                            self.config.eval_batch_size)
    metrics.update(self.conditioner.extra_eval(metrics, builder,
                                               self.spec.image_shape))
    return metrics

  def evaluate(self, params, source, split_size: int,
               batch_size: int) -> dict[str, float]:
    """The exact metric of a whole split, e.g. bits/dim = total nats /
    (N * H * W * C * ln 2) (MSE per sub-pixel, triplet loss per image).

    ``source`` is this process's part of a split of ``split_size`` examples;
    every process runs the same number of steps, padding with masked images.
    """
    local = batch_size // jax.process_count()
    num_batches = input_pipeline.num_eval_batches(split_size, local)
    total, count = 0.0, 0
    for batch in input_pipeline.eval_batches(source, local, num_batches,
                                             self.with_labels,
                                             self.data_spec.image_shape):
      out = jax.device_get(self.eval_step(params, self.global_batch(batch)))
      total += float(out['total'])
      count += int(out['count'])
    if count != split_size:
      raise RuntimeError(f'evaluated {count} examples of a split of '
                         f'{split_size}.')
    scale = _metric_scale(self.model, self.spec.image_shape)
    return {self.metric: total / (count * scale), 'num_examples': count}


# ---------------------------------------------------------------- the loop


def _flat_hparams(config) -> dict[str, Any]:
  out = {}

  def walk(prefix, node):
    for key, value in node.items():
      name = f'{prefix}{key}'
      if isinstance(value, dict):
        walk(name + '.', value)
      else:
        out[name] = value if isinstance(value, (int, float, str, bool)) \
            else str(value)
  walk('', config.to_dict())
  return out


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


class _Preemption:
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


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str,
                       extra_hooks: Iterable[Callable[[int], None]] = ()
                       ) -> dict[str, float]:
  """Trains ``config`` in ``workdir``, resuming from its newest checkpoint.

  Args:
    config: the experiment config (see configs/default.py).
    workdir: checkpoints go to WORKDIR/checkpoints, TensorBoard events to
      WORKDIR, the final eval metrics to WORKDIR/eval_results.json. Created
      if missing; refused if it is someone else's folder or another process
      is writing to it (gated_pixelcnn.workdir).
    extra_hooks: callables run with the step number after every step.

  Returns:
    The final eval metrics.
  """
  if config.get('pretrained'):
    raise errors.ConfigError(
        f'config.pretrained = {config.pretrained}: a pretrained model is not '
        'trained further; use it with --mode=eval, sample, complete, '
        'compress or decompress, or train with configs/default.py.')
  trainer = Trainer(config)   # a bad config fails here, before any writing
  with workdir_lib.writer(workdir) as workdir:
    checkpointing.probe(workdir)
    builder = input_pipeline.get_builder(config)
    manager = checkpointing.create_manager(workdir, config.max_to_keep)
    try:
      step, eval_metrics = _train(config, workdir, trainer, builder, manager,
                                  extra_hooks)
    except BaseException:
      with contextlib.suppress(Exception):   # the first error is the one
        checkpointing.close(manager)
      raise
    checkpointing.close(manager)   # a failed last save raises here
    if eval_metrics:
      write_eval_results(workdir, step, eval_metrics, config)
    return eval_metrics


def _train(config, workdir: str, trainer: Trainer, builder, manager,
           extra_hooks: Iterable[Callable[[int], None]]
           ) -> tuple[int, dict[str, float]]:
  """Restores or initialises the state and trains; returns the last step
  and the last eval metrics."""
  spec = trainer.spec
  with_labels = trainer.with_labels
  train_source = input_pipeline.open_split(builder, spec.train_split,
                                          per_process=False)
  restored = checkpointing.restore_latest(manager, workdir,
                                          trainer.abstract_state,
                                          expected_meta=state_config(config))
  if restored is None:
    state = trainer.init(jax.random.PRNGKey(config.seed))
    logging.info('Starting from scratch in %s.', workdir)
  else:
    state, meta = restored
    logging.info('Resumed from step %d in %s.%s', int(state.step), workdir,
                 _digest_note(state))
    _check_meta(meta, config)
  start_step = int(state.step)
  if jax.process_count() > 1:
    multihost_utils.assert_equal(
        start_step, f'the processes restored different steps from '
        f'{checkpointing.checkpoint_dir(workdir)}: the workdir must be one '
        f'folder all hosts share (e.g. gs://BUCKET/runs/NAME), not a '
        f'folder on each host\'s own disk.')

  writer = metric_writers.create_default_writer(
      workdir, just_logging=jax.process_index() > 0)
  conditioning.write_config(workdir, config)
  if start_step == 0:
    writer.write_hparams(_flat_hparams(config))
    parameter_overview.log_parameter_overview(state.params)
  num_steps = config.num_train_steps
  report = periodic_actions.ReportProgress(num_train_steps=num_steps,
                                           writer=writer)
  hooks = [report, *extra_hooks]
  if config.num_profile_steps and jax.process_index() == 0:
    hooks.append(periodic_actions.Profile(
        logdir=workdir, num_profile_steps=config.num_profile_steps,
        first_profile=start_step + 10))

  batches = input_pipeline.TrainBatches(
      train_source, config.batch_size, config.seed,
      with_labels).iterate(start_step)
  sync_every = min(config.log_every_steps, MAX_STEPS_WITHOUT_SYNC)
  pending, window = [], []
  eval_metrics = {}

  def checkpoint(step):
    checkpointing.save(manager, step, state, {
        'step': step, 'examples_seen': step * config.batch_size,
        'process_count': jax.process_count(), 'data_order': DATA_ORDER,
        **_data_order(config), **state_config(config)})

  def run_eval(step):
    nonlocal eval_metrics
    with report.timed('eval'):
      eval_metrics = trainer.evaluate_split(trainer.eval_params(state),
                                            builder)
    writer.write_scalars(step, eval_scalars(eval_metrics))
    writer.flush()
    if config.sample.during_training and generate.can_sample(trainer):
      with report.timed('sample'):
        grid = generate.samples_grid(
            trainer, generate.host_params(trainer.eval_params(state)),
            jax.random.fold_in(state.rng, step), builder)
        generate.write_grid(writer, workdir, step, 'samples', grid)

  step = start_step
  with _Preemption() as preemption:
    try:
      while step < num_steps:
        with jax.profiler.StepTraceAnnotation('train', step_num=step):
          state, metrics = trainer.train_step(
              state, trainer.global_batch(next(batches)))
        pending.append(metrics)
        step += 1
        for hook in hooks:
          hook(step)
        is_last = step == num_steps
        is_log = step % config.log_every_steps == 0 or is_last
        is_eval = step % config.eval_every_steps == 0 or is_last
        is_sync = step % sync_every == 0 or is_log or is_eval
        # SIGTERM may reach the hosts at different steps (or only some of
        # them); they must all stop at the same one: at the first sync
        # point where any of them has it (a collective, at most 32 steps).
        if jax.process_count() == 1:
          stop = preemption.requested
        else:
          stop = is_sync and _any_process(preemption.requested)
        is_ckpt = step % config.checkpoint_every_steps == 0 or is_last or stop
        if is_sync or is_ckpt:
          window += _fetch_and_check(pending, step, manager, trainer.metric)
          pending = []
          workdir_lib.check_still_held()
        if window and (is_log or stop):
          writer.write_scalars(step, {
              f'train/{k}': float(np.mean([m[k] for m in window]))
              for k in window[0]})
          window = []
        if is_ckpt:   # first: a failing evaluation must not lose the step
          checkpoint(step)
        if is_eval and not stop:
          run_eval(step)
        if stop:
          logging.warning('Stopped at step %d on request; rerun the same '
                          'command to resume.%s', step, _digest_note(state))
          break
      if num_steps == start_step and not eval_metrics:
        run_eval(step)  # nothing to train: report the checkpoint's quality
    finally:
      writer.flush()
  return step, eval_metrics


def _digest_note(state) -> str:
  """With several processes: this process's index and state digest."""
  if jax.process_count() == 1:
    return ''
  return (f' (process {jax.process_index()}, replicated state digest '
          f'{state_digest(state)})')


def state_digest(state) -> str:
  """SHA-256 (first 16 hex digits) of this process's copy of every
  replicated array of ``state``: equal on all processes when they hold the
  same state. Arrays split over the mesh (shard_params) are left out."""
  digest = hashlib.sha256()
  for path, x in jax.tree_util.tree_leaves_with_path(state):
    if x.is_fully_replicated:
      digest.update(jax.tree_util.keystr(path).encode())
      digest.update(np.asarray(x.addressable_data(0)).tobytes())
  return digest.hexdigest()[:16]


def _any_process(flag: bool) -> bool:
  """True on every process if ``flag`` is set on any (a collective)."""
  return bool(np.any(multihost_utils.process_allgather(np.asarray(flag))))


def eval_scalars(metrics: dict[str, float]) -> dict[str, float]:
  """TensorBoard scalars of eval metrics: eval/bits_per_dim, ..."""
  return {f'eval/{k}': v for k, v in metrics.items() if k != 'num_examples'}


def _fetch_and_check(pending, step, manager, key: str = 'bits_per_dim'
                     ) -> list[dict[str, float]]:
  """Host copies of the pending metrics; raises on a non-finite loss."""
  host = jax.device_get(pending)
  first = step - len(host) + 1
  for i, m in enumerate(host):
    if not np.isfinite(m[key]):
      last = manager.latest_step()
      where = (f'the last good checkpoint is step {last} in '
               f'{manager.directory}' if last is not None
               else 'no checkpoint was written yet')
      raise NonFiniteLossError(
          f'loss is {m[key]} at step {first + i}; stopped before '
          f'saving it ({where}). Lower learning_rate or set grad_clip_norm, '
          f'then rerun to resume from that checkpoint.')
  return [{k: float(v) for k, v in m.items()} for m in host]


# Checkpoint meta: batches are rows of one global order, the same for any
# number of processes (input_pipeline.TrainBatches).
DATA_ORDER = 'global'


def _data_order(config) -> dict[str, Any]:
  """What the order of training batches depends on (besides the step; not
  on the number of processes, see input_pipeline)."""
  return {'seed': config.seed, 'batch_size': config.batch_size,
          'dataset': config.dataset}


def state_config(config) -> dict[str, Any]:
  """What shapes the train state (recorded in checkpoint meta and checked
  on resume): the model (its compute dtype aside), the optimizer, and
  whether EMA and gradient clipping are on."""
  model = {k: v for k, v in config.model.to_dict().items() if k != 'dtype'}
  return {'model': model, 'optimizer': config.optimizer,
          'ema': bool(config.ema_decay), 'grad_clip': bool(
              config.grad_clip_norm)}


def _check_meta(meta: dict[str, Any], config) -> None:
  if meta.get('process_count', 1) > 1 and meta.get('data_order') != DATA_ORDER:
    logging.warning(
        'The checkpoint was written by %d processes with the older per-'
        'process data order; from here on the batches follow the global '
        'order (input_pipeline), so they differ from an uninterrupted run.',
        meta['process_count'])
  for key, value in _data_order(config).items():
    if key in meta and meta[key] != value:
      logging.warning(
          'The checkpoint was written with %s=%r, this run has %r: the data '
          'order will differ from an uninterrupted run.', key, meta[key],
          value)


def write_eval_results(workdir: str, step: int, metrics: dict[str, float],
                       config) -> None:
  if jax.process_index() != 0:
    return
  results = {'step': step, 'dataset': config.dataset,
             'split': input_pipeline.get_spec(config.dataset).eval_split,
             **{f'eval/{k}': v for k, v in metrics.items()}}
  path = epath.Path(workdir) / 'eval_results.json'
  workdir_lib.write_atomic(path, json.dumps(results, indent=2))
  logging.info('Eval results: %s (written to %s)', results, path)
