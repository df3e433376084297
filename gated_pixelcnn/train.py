"""Training and evaluation on a data-parallel mesh: the Trainer (model,
optimizer, the jitted steps of steps.py, exact evaluation of a split) and
the training loop (resume, checkpoints, evaluations, preemption).

The mesh has one axis, ``data``, over all devices of all processes. Batches are
split on it; parameters and optimizer state are replicated, or (with
``config.shard_params``) large arrays are split over it (parallel.py). XLA
inserts the gradient all-reduce. Both steps are pure functions of their
inputs; the train state is donated.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
from typing import Callable, Iterable

from absl import logging
from clu import parameter_overview
import jax
import jax.numpy as jnp
from jax.experimental import multihost_utils
import ml_collections
import numpy as np

from gated_pixelcnn import checkpointing
from gated_pixelcnn import conditioning
from gated_pixelcnn import datasets
from gated_pixelcnn import errors
from gated_pixelcnn import figures
from gated_pixelcnn import input_pipeline
from gated_pixelcnn import models
from gated_pixelcnn import optim
from gated_pixelcnn import parallel
from gated_pixelcnn import records
from gated_pixelcnn import steps
from gated_pixelcnn import tuning
from gated_pixelcnn import validation
from gated_pixelcnn import workdir as workdir_lib

P = jax.sharding.PartitionSpec
# Fetch metrics (and so block) at least this often: on small CPU machines,
# queueing many more steps with collectives aborts XLA's rendezvous.
MAX_STEPS_WITHOUT_SYNC = 32


class NonFiniteLossError(errors.UserError, FloatingPointError):
  """Training produced a NaN or infinite loss."""


class Trainer:
  """Model, optimizer, mesh and the jitted steps for one config."""

  def __init__(self, config, mesh: jax.sharding.Mesh | None = None,
               conditioning_run: conditioning.Run | None = None):
    self.config = config
    # The dataset's spec, and the model's (images subsampled by
    # config.subsample, e.g. the low-resolution model of multi-scale).
    self.data_spec = validation.validate_config(
        config, num_devices=mesh.size if mesh is not None else None)
    f = config.get('subsample', 1)
    H, W, C = self.data_spec.image_shape
    self.spec = dataclasses.replace(self.data_spec,
                                    image_shape=(H // f, W // f, C))
    self.mesh = mesh if mesh is not None else parallel.make_mesh()
    # How the convolutions compute: speed only. 'auto' is XLA's convolution
    # until `tune` measures the others (training does).
    self.conv_impl = config.get('conv_impl', 'auto')
    if self.conv_impl == 'auto':
      self.conv_impl = 'conv'
    self.model = models.create_model(config.model, conv_impl=self.conv_impl)
    self.metric = steps.metric_name(self.model)
    self.with_labels = bool(self.model.num_classes) or (
        self.model.objective == 'triplet')
    # The run this model is conditioned on, if any, loaded by the caller
    # (runs.make_trainer); checked here.
    self.conditioner = conditioning.Conditioner(config, self.spec.image_shape,
                                                conditioning_run)
    nll_mask = self.conditioner.nll_mask(self.spec.image_shape)
    self.tx, self.schedule = optim.create_optimizer(config)
    self.microbatches = parallel.num_microbatches(
        config, self.mesh.size, self.spec.image_shape,
        self.mesh.devices.flat[0].platform)
    self.batch_sharding = jax.sharding.NamedSharding(self.mesh, P('data'))
    replicated = self.replicated = jax.sharding.NamedSharding(self.mesh, P())
    self.nll_mask = nll_mask

    abstract = jax.eval_shape(self._init, jax.random.PRNGKey(0))
    self.state_sharding = jax.tree_util.tree_map(
        lambda x: parallel.param_sharding(self.mesh, x, config.shard_params,
                                 config.get('shard_params_min_size', 2**18)),
        abstract)
    self.state_sharding = self.state_sharding.replace(
        step=replicated, rng=replicated)
    self.abstract_state = jax.tree_util.tree_map(
        lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
        abstract, self.state_sharding)

    self.init = jax.jit(self._init, out_shardings=self.state_sharding)
    self._jit_steps()

  def _jit_steps(self) -> None:
    """self.train_step and self.eval_step of self.model."""
    self.train_step = jax.jit(
        functools.partial(steps.train_step, model=self.model, tx=self.tx,
                          schedule=self.schedule,
                          ema_decay=self.config.ema_decay,
                          microbatches=self.microbatches,
                          nll_mask=self.nll_mask),
        in_shardings=(self.state_sharding, self.batch_sharding),
        out_shardings=(self.state_sharding, self.replicated),
        donate_argnums=0)
    self.eval_step = jax.jit(
        functools.partial(steps.eval_step, model=self.model,
                          nll_mask=self.nll_mask),
        in_shardings=(self.state_sharding.params, self.batch_sharding),
        out_shardings=self.replicated)

  def tune(self) -> None:
    """Resolves ``config.conv_impl = 'auto'`` to the fastest convolution
    for this machine and shape (gated_pixelcnn.tuning: measured once,
    cached) and re-jits the steps with it. Multi-process runs keep XLA's
    convolution: every process must run the same program."""
    if (self.config.get('conv_impl', 'auto') != 'auto' or
        jax.process_count() > 1):
      return
    choice = tuning.conv_impl(
        self.config,
        lambda impl: models.create_model(self.config.model, conv_impl=impl),
        self.mesh, (self.config.batch_size, *self.spec.image_shape),
        self.microbatches)
    if choice != self.conv_impl:
      self.conv_impl = choice
      self.model = models.create_model(self.config.model, conv_impl=choice)
      self._jit_steps()

  def _init(self, rng) -> steps.TrainState:
    init_rng, state_rng = jax.random.split(rng)
    H, W, C = self.spec.image_shape
    batch = {'image': jnp.zeros((1, H, W, C), jnp.int32),
             'label': jnp.zeros((1,), jnp.int32)}
    if self.conditioner.example is not None:
      batch['cond'] = self.conditioner.example
    params = self.model.init(init_rng, batch['image'],
                             **steps.model_kwargs(self.model, batch))['params']
    ema = (jax.tree_util.tree_map(jnp.zeros_like, params)
           if self.config.ema_decay else None)
    return steps.TrainState(step=jnp.zeros((), jnp.int32), params=params,
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

  def eval_params(self, state: steps.TrainState):
    return steps.eval_params(state, self.config.ema_decay)

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
    scale = steps.metric_scale(self.model, self.spec.image_shape)
    return {self.metric: total / (count * scale), 'num_examples': count}


# ---------------------------------------------------------------- the loop


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str,
                       extra_hooks: Iterable[Callable[[int], None]] = (),
                       conditioning_run: conditioning.Run | None = None
                       ) -> dict[str, float]:
  """Trains ``config`` in ``workdir``, resuming from its newest checkpoint.

  Args:
    config: the experiment config (see configs/default.py).
    workdir: checkpoints go to WORKDIR/checkpoints, TensorBoard events to
      WORKDIR, the final eval metrics to WORKDIR/eval_results.json. Created
      if missing; refused if it is someone else's folder or another process
      is writing to it (gated_pixelcnn.workdir).
    extra_hooks: callables run with the step number after every step.
    conditioning_run: for a model conditioned on another run
      (config.conditioning.source), that run, loaded (runs.load_conditioning;
      modes.train loads it).

  Returns:
    The final eval metrics.
  """
  if config.get('pretrained'):
    raise errors.ConfigError(
        f'config.pretrained = {config.pretrained}: a pretrained model is not '
        'trained further; use it with --mode=eval, sample, complete, '
        'compress or decompress, or train with configs/default.py.')
  # A bad config fails here, before any writing.
  trainer = Trainer(config, conditioning_run=conditioning_run)
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
      records.write_eval_results(workdir, step, eval_metrics, config)
    return eval_metrics


def _train(config, workdir: str, trainer: Trainer, builder, manager,
           extra_hooks: Iterable[Callable[[int], None]]
           ) -> tuple[int, dict[str, float]]:
  """Restores or initialises the state and trains; returns the last step
  and the last eval metrics."""
  # clu's writers and periodic actions import TensorFlow (seconds): only
  # when training, not for --help, a bad flag or a job that needs no TF.
  from clu import metric_writers  # pylint: disable=g-import-not-at-top
  from clu import periodic_actions  # pylint: disable=g-import-not-at-top
  spec = trainer.spec
  with_labels = trainer.with_labels
  train_source = input_pipeline.open_split(builder, spec.train_split,
                                          per_process=False)
  restored = checkpointing.restore_latest(manager, workdir,
                                          trainer.abstract_state,
                                          expected_meta=records.state_config(
                                              config))
  if restored is None:
    state = trainer.init(jax.random.PRNGKey(config.seed))
    logging.info('Starting from scratch in %s.', workdir)
  else:
    state, meta = restored
    logging.info('Resumed from step %d in %s.%s', int(state.step), workdir,
                 records.digest_note(state))
    records.check_meta(meta, config)
  start_step = int(state.step)
  if start_step < config.num_train_steps:
    trainer.tune()
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
    writer.write_hparams(records.flat_hparams(config))
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
        'process_count': jax.process_count(),
        'data_order': records.DATA_ORDER, **records.data_order(config),
        **records.state_config(config)})

  def run_eval(step):
    nonlocal eval_metrics
    with report.timed('eval'):
      eval_metrics = trainer.evaluate_split(trainer.eval_params(state),
                                            builder)
    writer.write_scalars(step, records.eval_scalars(eval_metrics))
    writer.flush()
    if config.sample.during_training and figures.can_sample(trainer):
      with report.timed('sample'):
        grid = figures.samples_grid(
            trainer, figures.host_params(trainer.eval_params(state)),
            jax.random.fold_in(state.rng, step), builder)
        figures.write_grid(writer, workdir, step, 'samples', grid)

  step = start_step
  with parallel.Preemption() as preemption:
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
          stop = is_sync and parallel.any_process(preemption.requested)
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
                          'command to resume.%s', step,
                          records.digest_note(state))
          break
      if num_steps == start_step and not eval_metrics:
        run_eval(step)  # nothing to train: report the checkpoint's quality
    finally:
      writer.flush()
  return step, eval_metrics


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


