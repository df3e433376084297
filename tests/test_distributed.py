"""Scale-out: 32-device meshes, several processes under jax.distributed,
FSDP, preemption. Simulated on CPU: fake devices and localhost processes."""

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from gated_pixelcnn import checkpointing
from gated_pixelcnn import distributed
from gated_pixelcnn import input_pipeline
from gated_pixelcnn import records
from gated_pixelcnn import train
from tests import helpers
from tests.conftest import requires_devices

ROOT = helpers.ROOT
ENV = helpers.subprocess_env()


def test_imagenet64_config_on_32_devices_matches_one_device():
  """configs/imagenet64.py (batch 128, RMSProp) with a 2-layer model on
  16x16 subsampled images: the batch is split 4 rows per device over 32
  devices, and loss, gradient norm and params equal one device's."""
  out = subprocess.run([sys.executable, '-m', 'tests.mesh32_check'],
                       cwd=ROOT, env=ENV, capture_output=True, text=True,
                       timeout=600)
  assert out.returncode == 0, out.stderr[-3000:]
  result = json.loads(out.stdout.strip().splitlines()[-1])
  many, one = result['many'], result['one']
  assert result['devices'] == many['mesh'] == 32 and one['mesh'] == 1
  assert many['image_shape'] == one['image_shape'] == [16, 16, 3]
  assert many['rows_per_device'] == [4] and one['rows_per_device'] == [128]
  np.testing.assert_allclose(many['losses'], one['losses'], rtol=1e-5)
  np.testing.assert_allclose(many['grad_norms'], one['grad_norms'],
                             rtol=1e-4)
  assert result['max_param_rel_diff'] < 1e-5, result
  # The updates themselves (params - init, ~1e-3) agree too.
  assert result['max_update_rel_diff'] < 1e-3, result


# ------------------------------------------------------ several processes


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def _command(workdir, config, *flags):
  """test_train's main.py command, with evaluation only at the end."""
  return helpers.main_command(workdir, config,
                              '--config.eval_every_steps=100000', *flags)


def _start_processes(workdir, config, log_dir, name, *flags):
  """Two processes with 4 CPU devices each, coordinator on 127.0.0.1."""
  port = _free_port()
  # Bind the coordinator to 127.0.0.1 too (JAX's default, [::], needs IPv6).
  env = {**ENV, 'JAX_COORDINATOR_BIND_ADDRESS': f'127.0.0.1:{port}'}
  procs, logs = [], []
  for i in range(2):
    log = log_dir / f'{name}-{i}.log'
    with open(log, 'w') as f:
      procs.append(subprocess.Popen(
          _command(workdir, config, '--config.cpu_devices=4', '--distributed',
                   f'--coordinator_address=127.0.0.1:{port}',
                   '--num_processes=2', f'--process_id={i}', *flags),
          cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=f))
    logs.append(log)
  return procs, logs


def _wait(procs, logs, timeout=300):
  try:
    for p in procs:
      p.wait(timeout=timeout)
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
  texts = [log.read_text() for log in logs]
  for p, text in zip(procs, texts):
    assert p.returncode == 0, text[-4000:]
  return texts


def _wait_for(log, text, procs, timeout=300):
  deadline = time.time() + timeout
  while time.time() < deadline and text not in log.read_text():
    assert all(p.poll() is None for p in procs), log.read_text()[-4000:]
    time.sleep(0.2)
  assert text in log.read_text(), log.read_text()[-4000:]


def _stopped(texts):
  """(step, [digest of each process]) of 'Stopped at step N on request'."""
  found = [re.findall(r'Stopped at step (\d+) on request.*digest (\w+)\)', t)
           for t in texts]
  assert all(len(f) == 1 for f in found), found
  steps = {int(f[0][0]) for f in found}
  assert len(steps) == 1, found  # the same step on both
  return steps.pop(), [f[0][1] for f in found]


def _resumed(texts):
  found = [re.findall(r'Resumed from step (\d+) .*digest (\w+)\)', t)
           for t in texts]
  assert all(len(f) == 1 for f in found), found
  return [int(f[0][0]) for f in found], [f[0][1] for f in found]


def test_two_processes_preempted_resume_and_match_one_process(
    fake_config, tmp_path):
  """Two processes (jax.distributed, 127.0.0.1 coordinator, 4 fake devices
  each) train; SIGTERM reaches one of them, mid-run and then again during
  the next start-up (before the loop: the signal must not be lost); each
  time both stop at the same step, save one checkpoint and exit 0, and the
  restarted pair resumes there with the state both held when they stopped.
  They finish with the params of one process with 8 devices trained
  uninterrupted."""
  input_pipeline.get_builder(fake_config)  # prepare the data once, here
  run = tmp_path / 'two'
  endless = ('--config.num_train_steps=100000',
             '--config.checkpoint_every_steps=100000')
  # 1. SIGTERM to process 1 while training.
  procs, logs = _start_processes(run, fake_config, tmp_path, 'first', *endless)
  _wait_for(logs[0], 'train/bits_per_dim', procs)
  procs[1].send_signal(signal.SIGTERM)
  texts = _wait(procs, logs)
  stop, digests = _stopped(texts)
  assert digests[0] == digests[1]
  assert os.listdir(checkpointing.checkpoint_dir(run)) == [str(stop)]
  assert 'JAX process 1/2' in texts[1]

  # 2. Restart both; SIGTERM to process 1 during start-up, before it has
  # restored the checkpoint: both resume at `stop` with the state they
  # saved, then stop at the first step.
  procs, logs = _start_processes(run, fake_config, tmp_path, 'second',
                                 *endless)
  _wait_for(logs[1], 'JAX process 1/2', procs)
  procs[1].send_signal(signal.SIGTERM)
  texts = _wait(procs, logs)
  steps, resumed = _resumed(texts)
  assert steps == [stop, stop] and resumed == digests
  assert _stopped(texts)[0] == stop + 1

  # 3. Restart both to the end.
  procs, logs = _start_processes(run, fake_config, tmp_path, 'third',
                                 f'--config.num_train_steps={stop + 3}')
  texts = _wait(procs, logs)
  steps, resumed = _resumed(texts)
  assert steps == [stop + 1, stop + 1] and resumed[0] == resumed[1]

  # One process with 8 devices, uninterrupted.
  single = tmp_path / 'one'
  out = subprocess.run(
      _command(single, fake_config, '--config.cpu_devices=8',
               f'--config.num_train_steps={stop + 3}'),
      cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=300)
  assert out.returncode == 0, out.stderr[-4000:]
  a, meta_a = helpers.restore(fake_config, str(run))
  b, meta_b = helpers.restore(fake_config, str(single))
  assert int(a.step) == int(b.step) == stop + 3
  assert (meta_a['process_count'], meta_b['process_count']) == (2, 1)
  for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-5,
                               atol=1e-6)
  results = [json.loads((d / 'eval_results.json').read_text())
             for d in (run, single)]
  assert results[0]['eval/bits_per_dim'] == pytest.approx(
      results[1]['eval/bits_per_dim'], rel=1e-5)


# ---------------------------------------------------------------- FSDP


@requires_devices(2)
def test_fsdp_training_end_to_end(fake_config, tmp_path):
  """shard_params on: train, checkpoint, resume, evaluate and sample with
  split parameters; the same result as replicated parameters."""
  fake_config.shard_params_min_size = 0
  fake_config.sample.during_training = True
  results = {}
  for shard in (False, True):
    fake_config.shard_params = shard
    workdir = str(tmp_path / f'shard{shard}')
    fake_config.num_train_steps = 2
    train.train_and_evaluate(fake_config, workdir)
    fake_config.num_train_steps = 4  # resumed from the checkpoint of step 2
    results[shard] = train.train_and_evaluate(fake_config, workdir)
    assert os.listdir(os.path.join(workdir, 'samples'))
  assert results[True]['bits_per_dim'] == pytest.approx(
      results[False]['bits_per_dim'], rel=1e-5)
  state, _ = helpers.restore(fake_config, str(tmp_path / 'shardTrue'))
  assert any('data' in x.sharding.spec
             for x in jax.tree_util.tree_leaves(state.params))


# ------------------------------------------------------------ bad input


def test_distributed_flags_are_checked_before_starting(monkeypatch):
  with pytest.raises(distributed.DistributedError, match='needs a port'):
    distributed.initialize('127.0.0.1', 2, 0)
  with pytest.raises(distributed.DistributedError, match='0..num_processes'):
    distributed.initialize('127.0.0.1:1234', 2, 2)
  with pytest.raises(distributed.DistributedError, match='>= 1'):
    distributed.initialize('127.0.0.1:1234', 0, 0)
  monkeypatch.setenv(distributed.ENV_FLAG, '1')
  assert distributed.requested(False)
  monkeypatch.setenv(distributed.ENV_FLAG, 'yes please')
  with pytest.raises(distributed.DistributedError, match='use 1 or 0'):
    distributed.requested(False)
  monkeypatch.delenv(distributed.ENV_FLAG)
  assert not distributed.requested(False) and distributed.requested(True)


def test_process_flags_without_distributed_are_a_usage_error(fake_config,
                                                             tmp_path):
  out = subprocess.run(
      _command(tmp_path / 'run', fake_config, '--process_id=1'),
      cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=120)
  assert out.returncode != 0
  assert 'need --distributed' in out.stderr
  assert not (tmp_path / 'run').exists()


def test_data_prepared_on_only_some_hosts_is_a_clear_error(fake_config,
                                                           monkeypatch):
  """Each host reads its own data_dir: if only some have the prepared data
  (a copy on each disk that is not complete everywhere), every process
  stops with the processes named, instead of some waiting in a collective
  that the others never reach."""
  builder = input_pipeline.get_builder(fake_config)
  monkeypatch.setattr(jax, 'process_count', lambda: 3)
  monkeypatch.setattr(
      input_pipeline.multihost_utils, 'process_allgather',
      lambda x: np.asarray([True, False, bool(x)]))
  with pytest.raises(input_pipeline.datasets.DatasetError,
                     match=r'on processes \[1\] of 3.*launch/tpu.sh data'):
    input_pipeline.get_builder(fake_config)
  # After process 0 prepared a data_dir that the others do not see.
  monkeypatch.setattr(
      input_pipeline.multihost_utils, 'process_allgather',
      lambda x: np.asarray([True, True, True]))
  assert input_pipeline._prepared_on_every_process(builder, 'mnist')  # pylint: disable=protected-access
  monkeypatch.setattr(
      input_pipeline.multihost_utils, 'process_allgather',
      lambda x: np.asarray([True, False, False]))
  with pytest.raises(input_pipeline.datasets.DatasetError,
                     match=r'processes \[1, 2\] of 3.*not a folder all hosts'):
    input_pipeline._prepared_on_every_process(builder, 'mnist', after=True)  # pylint: disable=protected-access


def test_checkpoint_of_the_older_per_process_data_order_warns(fake_config,
                                                              caplog):
  records.check_meta({'process_count': 2, 'seed': fake_config.seed},
                     fake_config)
  assert 'older per-process data order' in caplog.text
  caplog.clear()
  records.check_meta({'process_count': 2, 'data_order': records.DATA_ORDER},
                     fake_config)
  assert 'data order' not in caplog.text
