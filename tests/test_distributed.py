"""Scale-out: 32-device meshes, several processes under jax.distributed,
FSDP, preemption. Simulated on CPU: fake devices and localhost processes."""

import json
import os
import pathlib
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
from gated_pixelcnn import train

ROOT = pathlib.Path(__file__).resolve().parents[1]
ENV = {**os.environ, 'JAX_PLATFORMS': 'cpu', 'CUDA_VISIBLE_DEVICES': ''}
ENV.pop('XLA_FLAGS', None)


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
  return [sys.executable, '-m', 'gated_pixelcnn.main',
          '--config=configs/test.py', f'--workdir={workdir}',
          f'--config.manual_dir={config.manual_dir}',
          f'--config.data_dir={config.data_dir}',
          '--config.eval_every_steps=100000', *flags]


def _start_processes(workdir, config, log_dir, name, *flags):
  """Two processes with 4 CPU devices each, coordinator on 127.0.0.1."""
  port = _free_port()
  procs, logs = [], []
  for i in range(2):
    log = log_dir / f'{name}-{i}.log'
    with open(log, 'w') as f:
      procs.append(subprocess.Popen(
          _command(workdir, config, '--config.cpu_devices=4', '--distributed',
                   f'--coordinator_address=127.0.0.1:{port}',
                   '--num_processes=2', f'--process_id={i}', *flags),
          cwd=ROOT, env=ENV, stdout=subprocess.DEVNULL, stderr=f))
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


def _final_state(config, workdir):
  trainer = train.Trainer(config)  # the 8 devices of this test process
  manager = checkpointing.create_manager(str(workdir), config.max_to_keep)
  state, meta = checkpointing.restore_latest(manager, str(workdir),
                                             trainer.abstract_state)
  manager.close()
  return state, meta


def test_two_processes_preempted_resume_and_match_one_process(
    fake_config, tmp_path):
  """Two processes (jax.distributed, 127.0.0.1 coordinator, 4 fake devices
  each) train; SIGTERM reaches one of them; both stop at the same step,
  save one checkpoint together and exit 0. Restarted, both resume at that
  step with the same state and finish with the params one process with 8
  devices reaches uninterrupted."""
  input_pipeline.get_builder(fake_config)  # prepare the data once, here
  run = tmp_path / 'two'
  procs, logs = _start_processes(
      run, fake_config, tmp_path, 'first', '--config.num_train_steps=100000',
      '--config.checkpoint_every_steps=100000')
  deadline = time.time() + 300
  while time.time() < deadline and 'train/bits_per_dim' not in (
      logs[0].read_text()):
    assert all(p.poll() is None for p in procs), logs[0].read_text()[-4000:]
    time.sleep(0.5)
  procs[1].send_signal(signal.SIGTERM)  # only the second process is told
  texts = _wait(procs, logs)
  stops = [re.findall(r'Stopped at step (\d+) on request', t) for t in texts]
  assert stops[0] == stops[1] and len(stops[0]) == 1, stops
  stop = int(stops[0][0])
  assert os.listdir(checkpointing.checkpoint_dir(run)) == [str(stop)]
  assert 'JAX process 1/2' in texts[1]

  # Restart both: the same step and the same state on both.
  procs, logs = _start_processes(run, fake_config, tmp_path, 'second',
                                 f'--config.num_train_steps={stop + 2}')
  texts = _wait(procs, logs)
  resumed = [re.findall(r'Resumed from step (\d+) .*digest (\w+)\)', t)
             for t in texts]
  assert resumed[0] == resumed[1] and len(resumed[0]) == 1, resumed
  assert int(resumed[0][0][0]) == stop

  # One process with 8 devices, uninterrupted.
  single = tmp_path / 'one'
  out = subprocess.run(
      _command(single, fake_config, '--config.cpu_devices=8',
               f'--config.num_train_steps={stop + 2}'),
      cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=300)
  assert out.returncode == 0, out.stderr[-4000:]
  a, meta_a = _final_state(fake_config, run)
  b, meta_b = _final_state(fake_config, single)
  assert int(a.step) == int(b.step) == stop + 2
  assert (meta_a['process_count'], meta_b['process_count']) == (2, 1)
  for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-5,
                               atol=1e-6)
  results = [json.loads((d / 'eval_results.json').read_text())
             for d in (run, single)]
  assert results[0]['eval/bits_per_dim'] == pytest.approx(
      results[1]['eval/bits_per_dim'], rel=1e-5)


# ---------------------------------------------------------------- FSDP


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
  state, _ = _final_state(fake_config, tmp_path / 'shardTrue')
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
