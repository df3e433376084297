"""Training end to end: steps, data parallelism, exact resume, exact eval."""

import json
import os
import signal
import subprocess
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gated_pixelcnn import checkpointing
from gated_pixelcnn import input_pipeline
from gated_pixelcnn import likelihood
from gated_pixelcnn import modes
from gated_pixelcnn import optim
from gated_pixelcnn import parallel
from gated_pixelcnn import train
from gated_pixelcnn import validation

from tests import helpers
from tests.conftest import requires_devices


def test_train_and_evaluate_on_generated_data(fake_config, tmp_path):
  workdir = str(tmp_path / 'run')
  metrics = train.train_and_evaluate(fake_config, workdir)
  assert metrics['num_examples'] == 37
  assert 0 < metrics['bits_per_dim'] < 8.5
  results = json.loads((tmp_path / 'run' / 'eval_results.json').read_text())
  assert results['step'] == 4
  assert results['eval/bits_per_dim'] == pytest.approx(metrics['bits_per_dim'])
  assert sorted(os.listdir(checkpointing.checkpoint_dir(workdir))) == ['2', '4']
  assert {'train/bits_per_dim', 'train/grad_norm', 'train/learning_rate',
          'eval/bits_per_dim'} <= helpers.tags(workdir)


def test_train_on_offline_fashion_mnist(fake_config, fashion_mnist_tfds_dir,
                                       tmp_path):
  fake_config.manual_dir = None  # the Debian default
  fake_config.data_dir = str(fashion_mnist_tfds_dir)
  fake_config.num_train_steps = 2
  fake_config.eval_batch_size = 1000
  metrics = train.train_and_evaluate(fake_config, str(tmp_path / 'run'))
  assert metrics['num_examples'] == 10_000
  assert 6 < metrics['bits_per_dim'] < 8.5


def _fixed_batch(trainer, seed=0, batch_size=8):
  rng = np.random.default_rng(seed)
  images = np.clip(np.arange(28)[None, None, :, None] * 8 +
                   rng.integers(0, 30, (batch_size, 28, 28, 1)), 0, 255)
  return trainer.global_batch({'image': images.astype(np.uint8)})


def test_ema_is_the_weighted_average_from_the_first_step(fake_config):
  """The evaluated average is sum_i d^(t-i) params_i / sum_i d^(t-i) over
  the steps taken, with no weight left on the initialisation: after one
  step it is that step's params."""
  d = 0.9
  fake_config.ema_decay = d
  fake_config.optimizer = 'adam'
  trainer = train.Trainer(fake_config)
  state = trainer.init(jax.random.PRNGKey(0))
  assert all(np.array_equal(a, b) for a, b in zip(
      helpers.leaves(trainer.eval_params(state)), helpers.leaves(state.params)))
  batch = _fixed_batch(trainer)
  history = []
  for t in range(1, 6):
    state, _ = trainer.train_step(state, batch)
    history.append(helpers.leaves(state.params))
    weights = [d ** (t - i) for i in range(1, t + 1)]
    for k, got in enumerate(helpers.leaves(trainer.eval_params(state))):
      expected = sum(w * h[k] for w, h in zip(weights, history)) / sum(
          weights)
      np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-7)
  # The average differs from the last params (it is an average) ...
  assert not np.allclose(helpers.leaves(trainer.eval_params(state))[0],
                         history[-1][0], rtol=0, atol=1e-7)


@pytest.mark.parametrize('schedule', ['constant', 'cosine', 'wsd'])
def test_learning_rate_schedules(fake_config, schedule):
  fake_config.lr_schedule = schedule
  fake_config.num_train_steps = 1000
  fake_config.warmup_steps = 100
  fake_config.decay_fraction = 0.25
  _, lr = optim.create_optimizer(fake_config)
  peak = fake_config.learning_rate
  assert float(lr(0)) == 0 and float(lr(50)) == pytest.approx(peak / 2)
  assert float(lr(100)) == pytest.approx(peak)
  at_end = {'constant': peak, 'cosine': 0.0, 'wsd': 0.0}[schedule]
  assert float(lr(1000)) == pytest.approx(at_end, abs=1e-9)
  if schedule == 'wsd':   # constant until the last quarter, then linear
    assert float(lr(750)) == pytest.approx(peak)
    assert float(lr(875)) == pytest.approx(peak / 2)


def test_loss_decreases_on_a_fixed_batch(fake_config):
  fake_config.learning_rate = 1e-2
  trainer = train.Trainer(fake_config)
  state = trainer.init(jax.random.PRNGKey(0))
  batch = _fixed_batch(trainer)
  losses = []
  for _ in range(20):
    state, metrics = trainer.train_step(state, batch)
    losses.append(float(metrics['bits_per_dim']))
  assert losses[-1] < losses[0] - 0.7, losses
  assert int(state.step) == 20


def _split_arrays(tree):
  """Leaves that are split over the mesh: each device holds a part."""
  return [x for x in jax.tree_util.tree_leaves(tree)
          if x.addressable_shards[0].data.shape != x.shape]


@requires_devices(2)
@pytest.mark.parametrize('shard_params', [False, True])
def test_all_devices_match_one(fake_config, shard_params):
  """Data parallel over all devices (8 by default), with parameters
  replicated or split FSDP style (every array with an axis divisible by the
  device count: the threshold is lowered for the tiny model), gives the
  loss and update of one device."""
  n = jax.device_count()
  fake_config.shard_params = shard_params
  fake_config.shard_params_min_size = 0
  results = []
  for devices in (jax.devices()[:1], jax.devices()):
    trainer = train.Trainer(fake_config, mesh=parallel.make_mesh(devices))
    state = trainer.init(jax.random.PRNGKey(0))
    state, metrics = trainer.train_step(state, _fixed_batch(trainer))
    assert trainer.batch_sharding.mesh.size == len(devices)
    if shard_params and len(devices) == n:
      # Params and RMSProp's statistics are really split (1/n per device).
      for tree in (state.params, state.opt_state):
        split = _split_arrays(tree)
        assert len(split) >= 5, jax.tree_util.tree_map(
            lambda x: x.sharding.spec, tree)
        for x in split:
          assert 'data' in x.sharding.spec
          assert x.addressable_shards[0].data.size * n == x.size
    else:
      assert not _split_arrays(state)
    results.append((float(metrics['bits_per_dim']), helpers.leaves(state.params)))
  (loss1, params1), (loss_n, params_n) = results
  assert loss_n == pytest.approx(loss1, rel=1e-5)
  for a, b in zip(params1, params_n):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize('devices,microbatches', [
    (1, 4), pytest.param(2, 2, marks=requires_devices(2))])
def test_microbatches_give_the_same_update(fake_config, devices, microbatches):
  """Gradient accumulation over micro-batches == one step on the batch."""
  results = []
  for m in (1, microbatches):
    fake_config.microbatches = m
    trainer = train.Trainer(fake_config,
                            mesh=parallel.make_mesh(jax.devices()[:devices]))
    state = trainer.init(jax.random.PRNGKey(0))
    state, metrics = trainer.train_step(state, _fixed_batch(trainer))
    results.append((float(metrics['bits_per_dim']),
                    float(metrics['grad_norm']), helpers.leaves(state.params)))
  (loss1, norm1, params1), (loss_m, norm_m, params_m) = results
  assert loss_m == pytest.approx(loss1, rel=1e-5)
  assert norm_m == pytest.approx(norm1, rel=1e-4)
  for a, b in zip(params1, params_m):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize('devices,shape,platform,microbatches,expected', [
    (2, (28, 28), 'cpu', 0, 2),    # 16 images of 784 pixels: 2 parts of 8
    (1, (28, 28), 'cpu', 0, 4),
    (2, (64, 64), 'cpu', 0, 8),    # 2 images of 4,096 pixels per part
    (2, (16, 16), 'cpu', 0, 1),
    (2, (28, 28), 'tpu', 0, 1),
    (2, (28, 28), 'cpu', 4, 4),
])
def test_auto_microbatches(fake_config, devices, shape, platform,
                           microbatches, expected):
  fake_config.batch_size = 32
  fake_config.microbatches = microbatches
  assert parallel.num_microbatches(fake_config, devices, shape,
                                   platform) == expected


def test_microbatches_must_divide_the_device_batch(fake_config):
  fake_config.microbatches = 3
  with pytest.raises(ValueError, match='microbatches = 3 must'):
    train.Trainer(fake_config)


def test_shard_params_splits_large_arrays(fake_config):
  fake_config.shard_params = True
  mesh = jax.sharding.AbstractMesh((8,), ('data',))   # any device count
  big = jax.ShapeDtypeStruct((3, 5, 64, 1024), jnp.float32)
  small = jax.ShapeDtypeStruct((7,), jnp.float32)
  P = jax.sharding.PartitionSpec
  assert parallel.param_sharding(mesh, big, True).spec == P(None, None, None,
                                                            'data')
  assert parallel.param_sharding(mesh, small, True).spec == P()
  assert parallel.param_sharding(mesh, big, False).spec == P()


class _Crash(Exception):
  pass


def _crash_at(step_to_crash):
  def hook(step):
    if step == step_to_crash:
      raise _Crash(f'simulated crash after step {step}')
  return hook




def test_resume_is_bit_identical(fake_config, tmp_path):
  fake_config.num_train_steps = 6
  fake_config.checkpoint_every_steps = 3
  fake_config.eval_every_steps = 100
  fake_config.lr_schedule = 'cosine'
  fake_config.warmup_steps = 2
  fake_config.ema_decay = 0.9
  straight, resumed = str(tmp_path / 'straight'), str(tmp_path / 'resumed')
  train.train_and_evaluate(fake_config, straight)
  # Killed during step 5: the last checkpoint is step 3.
  with pytest.raises(_Crash):
    train.train_and_evaluate(fake_config, resumed, [_crash_at(5)])
  assert sorted(os.listdir(checkpointing.checkpoint_dir(resumed))) == ['3']
  train.train_and_evaluate(fake_config, resumed)
  a, meta_a = helpers.restore(fake_config, straight)
  b, meta_b = helpers.restore(fake_config, resumed)
  assert int(a.step) == int(b.step) == 6
  assert meta_a == meta_b and meta_a['process_count'] == 1
  for x, y in zip(helpers.leaves(a), helpers.leaves(b)):
    assert x.dtype == y.dtype and np.array_equal(x, y)  # bit-identical


def test_eval_equals_independent_per_image_sum(fake_config, tmp_path):
  fake_config.eval_batch_size = 16  # 37 test images: 16 + 16 + 5 (padded)
  trainer = train.Trainer(fake_config)
  state = trainer.init(jax.random.PRNGKey(1))
  builder = input_pipeline.get_builder(fake_config)
  source = input_pipeline.open_split(builder, 'test')
  metrics = trainer.evaluate(state.params, source, 37, 16)
  assert metrics['num_examples'] == 37
  total = 0.0
  for i in range(len(source)):
    image = jnp.asarray(source[i]['image'][None], jnp.int32)
    logits = trainer.model.apply({'params': state.params}, image)
    total -= float(likelihood.log_prob(logits, image)[0])
  expected = total / (37 * 28 * 28 * np.log(2))
  assert metrics['bits_per_dim'] == pytest.approx(expected, rel=1e-6)


# ---------------------------------------------------------------- bad input


@pytest.mark.parametrize('key,value,message', [
    ('batch_size', 12, 'divisible by the number of devices'),
    ('learning_rate', 0.0, 'learning_rate'),
    ('optimizer', 'sgd', "optimizer 'sgd'"),
    ('lr_schedule', 'linear', 'lr_schedule'),
    ('dataset', 'nope', "unknown dataset 'nope'"),
    ('sample.method', 'beam', "sample.method 'beam'"),
    ('sample.temperature', -1.0, 'sample.temperature'),
])
def test_bad_config_values(fake_config, key, value, message):
  node, _, leaf = key.rpartition('.')
  (fake_config[node] if node else fake_config)[leaf] = value
  with pytest.raises(ValueError, match=message):
    validation.validate_config(fake_config, num_devices=8)


@pytest.mark.parametrize('cores,cpu_devices,expected', [
    (2, 0, 2), (1, 0, 1), (3, 0, 2), (6, 0, 4), (64, 0, 8), (2, 5, 5),
])
def test_cpu_device_count(fake_config, cores, cpu_devices, expected):
  # fake_config: batch_size 8, eval_batch_size 256.
  fake_config.cpu_devices = cpu_devices
  assert parallel.cpu_device_count(fake_config, cores) == expected


def test_cpu_devices_after_backend_start_is_a_warning_not_a_crash(
    fake_config):
  n = jax.device_count()  # backends are up
  fake_config.cpu_devices = 3
  parallel.configure_cpu_devices(fake_config)
  assert jax.device_count() == n
  fake_config.cpu_devices = -2
  with pytest.raises(ValueError, match='cpu_devices = -2'):
    parallel.configure_cpu_devices(fake_config)


def test_cached_sampling_needs_the_gated_model(fake_config):
  fake_config.model.name = 'pixelcnn'
  with pytest.raises(ValueError, match="sample.method='naive'"):
    train.Trainer(fake_config)
  fake_config.sample.method = 'naive'
  train.Trainer(fake_config)


def test_model_incompatible_with_images(fake_config):
  fake_config.model.num_channels = 3
  fake_config.model.features = 9
  fake_config.model.head_features = 9
  with pytest.raises(ValueError, match='1 channel'):
    train.Trainer(fake_config)
  fake_config.model.num_channels = 1
  fake_config.model.num_classes = 7
  with pytest.raises(ValueError, match='num_classes = 7'):
    train.Trainer(fake_config)




def test_corrupt_newest_checkpoint_falls_back_with_warning(
    fake_config, tmp_path, caplog):
  workdir = str(tmp_path / 'run')
  train.train_and_evaluate(fake_config, workdir)      # checkpoints 2 and 4
  helpers.corrupt(checkpointing.checkpoint_dir(workdir) / '4')
  fake_config.num_train_steps = 6
  train.train_and_evaluate(fake_config, workdir)
  assert 'checkpoints/4 is unreadable' in caplog.text
  moved = os.listdir(tmp_path / 'run' / 'checkpoints_corrupt')
  assert len(moved) == 1 and moved[0].startswith('4-')
  state, _ = helpers.restore(fake_config, workdir)
  assert int(state.step) == 6


def test_changed_batch_size_on_resume_warns(fake_config, tmp_path, caplog):
  workdir = str(tmp_path / 'run')
  fake_config.num_train_steps = 2
  train.train_and_evaluate(fake_config, workdir)
  fake_config.batch_size = 16
  fake_config.num_train_steps = 3
  train.train_and_evaluate(fake_config, workdir)
  assert 'written with batch_size=8, this run has 16' in caplog.text


def test_all_checkpoints_corrupt_is_a_clear_error(fake_config, tmp_path):
  workdir = str(tmp_path / 'run')
  fake_config.num_train_steps = 2
  train.train_and_evaluate(fake_config, workdir)
  helpers.corrupt(checkpointing.checkpoint_dir(workdir) / '2')
  with pytest.raises(checkpointing.CheckpointError,
                     match=r'(?s)checkpoints/2: .*Move these folders'):
    train.train_and_evaluate(fake_config, workdir)
  assert os.listdir(checkpointing.checkpoint_dir(workdir)) == ['2']


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(
    fake_config, tmp_path):
  workdir = str(tmp_path / 'run')
  fake_config.num_train_steps = 2
  train.train_and_evaluate(fake_config, workdir)
  fake_config.num_train_steps = 8
  fake_config.learning_rate = 1e30
  with pytest.raises(train.NonFiniteLossError,
                     match='last good checkpoint is step 2'):
    train.train_and_evaluate(fake_config, workdir)
  assert os.listdir(checkpointing.checkpoint_dir(workdir)) == ['2']


def test_eval_mode_without_checkpoint(fake_config, tmp_path):
  with pytest.raises(checkpointing.CheckpointError, match='no checkpoint'):
    modes.evaluate_checkpoint(fake_config, str(tmp_path / 'empty'))




def test_sigterm_saves_and_exits_cleanly_then_resumes(fake_config, tmp_path):
  workdir = tmp_path / 'run'
  env = helpers.subprocess_env()
  proc = subprocess.Popen(
      helpers.main_command(workdir, fake_config, '--config.num_train_steps=100000',
            '--config.checkpoint_every_steps=100000',
            '--config.eval_every_steps=100000'),
      cwd=helpers.ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
      text=True)
  deadline = time.time() + 240
  seen = ''
  while time.time() < deadline and 'train/bits_per_dim' not in seen:
    seen += proc.stderr.readline()
  assert 'train/bits_per_dim' in seen, seen[-3000:]
  proc.send_signal(signal.SIGTERM)
  _, err = proc.communicate(timeout=240)
  assert proc.returncode == 0, err[-3000:]
  steps = [int(s) for s in os.listdir(checkpointing.checkpoint_dir(workdir))]
  assert len(steps) == 1 and 0 < steps[0] < 100000
  assert f'Stopped at step {steps[0]} on request' in err
  # Rerunning the same command resumes from there.
  out = subprocess.run(
      helpers.main_command(workdir, fake_config,
                           f'--config.num_train_steps={steps[0] + 2}'),
      cwd=helpers.ROOT, env=env, capture_output=True, text=True, timeout=240)
  assert out.returncode == 0, out.stderr[-3000:]
  assert f'Resumed from step {steps[0]}' in out.stderr
  # main.py trains data-parallel over one CPU device per core.
  devices = parallel.cpu_device_count(fake_config, parallel.num_cores())
  assert f'CpuDevice(id={devices - 1})' in out.stderr
  assert f'CpuDevice(id={devices})' not in out.stderr
  results = json.loads((workdir / 'eval_results.json').read_text())
  assert results['step'] == steps[0] + 2
