"""What a run guarantees under crashes, concurrent runs and hostile input:
one writer per workdir, a clean exit when a save fails, checkpoints checked
against their checksum on restore, a user's folder never written into, and
one clear line (not a traceback) for every mistake."""

import json
import logging
import os
import pathlib
import signal
import socket
import struct
import subprocess
import sys
import time
import zlib

from etils import epath
import jax
import numpy as np
import orbax.checkpoint as ocp
from PIL import Image
import pytest

from gated_pixelcnn import checkpointing
from gated_pixelcnn import compression
from gated_pixelcnn import datasets
from gated_pixelcnn import errors
from gated_pixelcnn import image_files
from gated_pixelcnn import input_pipeline
from gated_pixelcnn import modes
from gated_pixelcnn import train
from gated_pixelcnn import workdir
from tests import fake_data
from tests import helpers


def _listing(path):
  return sorted(os.listdir(path))


# ------------------------------------------------------------- the workdir


def test_a_file_where_a_folder_belongs_is_refused_before_training(
    fake_config, tmp_path):
  run = tmp_path / 'run'
  run.mkdir()
  (run / 'checkpoints').write_text('a file, not a folder')
  with pytest.raises(workdir.WorkdirError, match='checkpoints is a file'):
    train.train_and_evaluate(fake_config, str(run))
  assert _listing(run) == ['checkpoints']
  not_a_folder = tmp_path / 'notes.txt'
  not_a_folder.write_text('mine')
  with pytest.raises(workdir.WorkdirError, match='is a file, not a folder'):
    train.train_and_evaluate(fake_config, str(not_a_folder))
  assert not_a_folder.read_text() == 'mine'


def test_a_users_folder_is_never_written_into(fake_config, tmp_path):
  mine = tmp_path / 'mine'
  mine.mkdir()
  (mine / 'config.json').write_text('{"my": "own file"}')
  with pytest.raises(workdir.WorkdirError,
                     match='not a gated_pixelcnn workdir'):
    train.train_and_evaluate(fake_config, str(mine))
  assert _listing(mine) == ['config.json']
  assert (mine / 'config.json').read_text() == '{"my": "own file"}'
  (mine / 'checkpoints').mkdir()   # e.g. another framework's project folder
  (mine / 'checkpoints' / 'model.pt').write_text('weights')
  with pytest.raises(workdir.WorkdirError,
                     match='not a gated_pixelcnn workdir'):
    train.train_and_evaluate(fake_config, str(mine))
  assert _listing(mine) == ['checkpoints', 'config.json']
  # An empty folder becomes a workdir; so does one of a run older than the
  # marker (recognised by its checkpoints/).
  (tmp_path / 'empty').mkdir()
  fake_config.num_train_steps = 2
  train.train_and_evaluate(fake_config, str(tmp_path / 'empty'))
  assert (tmp_path / 'empty' / workdir.MARKER).exists()
  os.remove(tmp_path / 'empty' / workdir.MARKER)
  fake_config.num_train_steps = 4
  train.train_and_evaluate(fake_config, str(tmp_path / 'empty'))
  assert _listing(checkpointing.checkpoint_dir(tmp_path / 'empty')) == [
      '2', '4']


def test_relative_workdirs_work(fake_config, tmp_path, monkeypatch):
  """Orbax needs absolute paths: a relative --workdir (as in the quick
  start, workdirs/default) failed at the first save."""
  monkeypatch.chdir(tmp_path)
  fake_config.num_train_steps = 2
  train.train_and_evaluate(fake_config, os.path.join('runs', 'rel'))
  assert _listing(tmp_path / 'runs' / 'rel' / 'checkpoints') == ['2']
  metrics = modes.evaluate_checkpoint(fake_config, 'runs/rel')
  assert metrics['num_examples'] == 37


def test_a_path_checkpoints_cannot_use_is_refused_before_training(
    fake_config, tmp_path, monkeypatch):
  """A checkpoint that saves but does not read back (as TensorStore does
  with paths holding [ and ]) is found by the probe before training, not
  at the first restore."""
  def cannot_read_back(self, *args, **kwargs):
    raise ValueError('NOT_FOUND: Error opening "zarr" driver')
  monkeypatch.setattr(ocp.Checkpointer, 'restore', cannot_read_back)
  with pytest.raises(workdir.WorkdirError,
                     match=r'cannot be written to and read back.*NOT_FOUND'):
    train.train_and_evaluate(fake_config, str(tmp_path / 'run'))
  assert not (tmp_path / 'run' / 'checkpoints').exists()
  assert _listing(tmp_path / 'run') == [workdir.MARKER, workdir.LOCK]


def test_a_folder_that_cannot_be_created_is_one_clear_error(fake_config):
  with pytest.raises(workdir.WorkdirError, match='cannot be created or '
                     'written'):
    train.train_and_evaluate(fake_config, '/proc/gated_pixelcnn_run')


# ------------------------------------------------------------ one writer


def test_a_second_writer_is_refused_while_the_first_holds_the_workdir(
    fake_config, tmp_path):
  run = str(tmp_path / 'run')
  fake_config.num_train_steps = 2
  with workdir.writer(run):   # as another process's training run would
    with pytest.raises(workdir.WorkdirError,
                       match=rf'in use by another gated_pixelcnn process '
                       rf'\(pid {os.getpid()} on {socket.gethostname()}'):
      train.train_and_evaluate(fake_config, run)
    assert not (tmp_path / 'run' / 'checkpoints').exists()
  train.train_and_evaluate(fake_config, run)   # released: it runs


def test_jobs_run_alongside_training_without_touching_its_files(
    fake_config, tmp_path, caplog):
  """Evaluating or sampling while a run trains: the checkpoints are read,
  never moved, and the run's eval_results.json is left to it."""
  caplog.set_level(logging.INFO)
  run = str(tmp_path / 'run')
  fake_config.num_train_steps = 4
  train.train_and_evaluate(fake_config, run)          # checkpoints 2 and 4
  results = (tmp_path / 'run' / 'eval_results.json').read_text()
  helpers.corrupt(checkpointing.checkpoint_dir(run) / '4')
  with workdir.writer(run):   # a training run holds the workdir
    metrics = modes.evaluate_checkpoint(fake_config, run)
    grid = modes.sample_checkpoint(fake_config, run)
  assert metrics['num_examples'] == 37
  assert grid.endswith('_00000002.png')               # step 2: 4 unreadable
  assert 'in use by another gated_pixelcnn process' in caplog.text
  assert (tmp_path / 'run' / 'eval_results.json').read_text() == results
  assert _listing(checkpointing.checkpoint_dir(run)) == ['2', '4']
  assert not (tmp_path / 'run' / 'checkpoints_corrupt').exists()
  # Alone, the job moves the unreadable checkpoint aside and writes results.
  modes.evaluate_checkpoint(fake_config, run)
  assert _listing(checkpointing.checkpoint_dir(run)) == ['2']
  assert json.loads((tmp_path / 'run' / 'eval_results.json').read_text())[
      'step'] == 2


def test_two_training_commands_on_one_workdir(fake_config, tmp_path):
  """The second command exits at once with one line naming the first; the
  first trains on, stops on SIGTERM, and the same command resumes."""
  run = tmp_path / 'run'
  env = helpers.subprocess_env()
  long = ['--config.num_train_steps=100000',
          '--config.checkpoint_every_steps=100000',
          '--config.eval_every_steps=100000']
  first = subprocess.Popen(helpers.main_command(run, fake_config, *long),
                           cwd=helpers.ROOT, env=env, stdout=subprocess.DEVNULL,
                           stderr=subprocess.PIPE, text=True)
  try:
    seen = ''
    deadline = time.time() + 240
    while time.time() < deadline and 'train/bits_per_dim' not in seen:
      seen += first.stderr.readline()
    assert 'train/bits_per_dim' in seen, seen[-3000:]
    second = subprocess.run(helpers.main_command(run, fake_config, *long),
                            cwd=helpers.ROOT, env=env, capture_output=True,
                            text=True, timeout=240)
    assert second.returncode == 1
    assert f'in use by another gated_pixelcnn process (pid {first.pid}' in (
        second.stderr)
    assert 'Traceback' not in second.stderr
    assert first.poll() is None   # the first run is unharmed
    first.send_signal(signal.SIGTERM)
    _, err = first.communicate(timeout=240)
    assert first.returncode == 0, err[-3000:]
  finally:
    if first.poll() is None:
      first.kill()
  step = int(_listing(checkpointing.checkpoint_dir(run))[0])
  third = subprocess.run(
      helpers.main_command(run, fake_config,
                           f'--config.num_train_steps={step + 1}'),
      cwd=helpers.ROOT, env=env, capture_output=True, text=True, timeout=240)
  assert third.returncode == 0, third.stderr[-3000:]
  assert f'Resumed from step {step}' in third.stderr


def test_the_lock_of_a_killed_process_is_taken_over(tmp_path, caplog):
  run = str(tmp_path / 'run')
  killed = subprocess.run(
      [sys.executable, '-c',
       'import os, signal, sys\n'
       'from gated_pixelcnn import workdir\n'
       'with workdir.writer(sys.argv[1]):\n'
       '  os.kill(os.getpid(), signal.SIGKILL)\n', run],
      cwd=helpers.ROOT, env=helpers.subprocess_env(), capture_output=True,
      timeout=120)
  assert killed.returncode == -signal.SIGKILL
  assert json.loads((tmp_path / 'run' / workdir.LOCK).read_text())['pid']
  with workdir.writer(run):
    pass
  assert 'left locked by a process that is gone' in caplog.text
  assert (tmp_path / 'run' / workdir.LOCK).read_text() == ''  # released


class _Clock:
  """A clock the test moves: lock staleness without sleeping."""

  def __init__(self):
    self.now = 1e9

  def __call__(self):
    return self.now


def test_heartbeat_lock_for_object_stores(tmp_path, caplog, monkeypatch):
  """The lock of gs:// workdirs (no flock there), run on a local file with
  a clock the test moves; the beats are called directly."""
  path = epath.Path(tmp_path / 'lock')
  clock = _Clock()
  timing = dict(beat_s=3600, stale_s=600, settle_s=0, clock=clock)
  first = workdir.HeartbeatLock(path, **timing)
  first.acquire()
  second = workdir.HeartbeatLock(path, **timing)
  with pytest.raises(workdir.WorkdirError, match='in use'):
    second.acquire()
  clock.now += 500
  first.beat_once()                 # a live holder refreshes its heartbeat
  clock.now += 500                  # ... so 1,000 s on, it is not stale
  with pytest.raises(workdir.WorkdirError, match='in use'):
    second.acquire()
  # A store error while refreshing is retried, not taken for a takeover.
  read = first._read   # pylint: disable=protected-access
  monkeypatch.setattr(first, '_read', lambda: (_ for _ in ()).throw(
      OSError('503 Service Unavailable')))
  first.beat_once()
  assert not first.lost and 'trying again' in caplog.text
  monkeypatch.setattr(first, '_read', read)
  first.release()
  assert not path.exists()
  second.acquire()
  second.release()
  # A holder elsewhere that stopped beating is taken over once stale ...
  record = {'pid': 1, 'host': 'elsewhere', 'token': 'x', 'heartbeat': clock.now}
  path.write_text(json.dumps(record))
  with pytest.raises(workdir.WorkdirError, match='in use'):
    second.acquire()
  clock.now += 601
  second.acquire()
  # ... and the holder that lost it notices at its next beat.
  path.write_text(json.dumps(record))
  second.beat_once()
  assert second.lost
  with pytest.raises(workdir.WorkdirError):   # the loop's check
    workdir._HELD.append(second)  # pylint: disable=protected-access
    try:
      workdir.check_still_held()
    finally:
      workdir._HELD.remove(second)  # pylint: disable=protected-access
  second.release()
  # A holder on this machine whose process is gone, or that had this very
  # pid (a restarted container), is taken over at once; so is a record
  # without a readable heartbeat.
  gone = subprocess.Popen(['true'])
  gone.wait()
  for pid, beat in ((gone.pid, clock.now), (os.getpid(), clock.now),
                    (12345, None)):
    path.write_text(json.dumps({'pid': pid, 'host': socket.gethostname(),
                                'token': 'y', 'heartbeat': beat}))
    second.acquire()
    second.release()
  assert caplog.text.count('taking the workdir over') == 4
  lock = workdir._lock_for('gs://bucket/run')  # pylint: disable=protected-access
  assert isinstance(lock, workdir.HeartbeatLock)


# ------------------------------------------------------------ saving


_FAILING_SAVE = '''
import os, sys
from configs import test
from gated_pixelcnn import checkpointing, train
config = test.get_config()
config.manual_dir, config.data_dir, run = sys.argv[1:4]
config.num_train_steps = 6

def replace_checkpoints_by_a_file(step):
  if step == 3:   # after the save of step 2, before that of step 4
    folder = os.path.join(run, 'checkpoints')
    os.rename(folder, folder + '_moved')
    open(folder, 'w').close()

try:
  train.train_and_evaluate(config, run, [replace_checkpoints_by_a_file])
except checkpointing.CheckpointError as e:
  print('CheckpointError:', e)
  sys.exit(3)
'''


def test_a_failed_save_stops_the_run_and_the_process_exits(fake_config,
                                                             tmp_path):
  """Before: the save failed in Orbax's background thread and the process
  then waited forever at exit for that thread."""
  out = subprocess.run(
      [sys.executable, '-c', _FAILING_SAVE, fake_config.manual_dir,
       fake_config.data_dir, str(tmp_path / 'run')],
      cwd=helpers.ROOT, env=helpers.subprocess_env(), capture_output=True,
      text=True, timeout=180)
  assert out.returncode == 3, out.stderr[-3000:]
  assert 'saving a checkpoint in' in out.stdout
  assert 'Fix the cause' in out.stdout
  assert _listing(tmp_path / 'run' / 'checkpoints_moved') == ['2']


def test_a_failing_evaluation_does_not_lose_its_steps_checkpoint(
    fake_config, tmp_path, monkeypatch):
  fake_config.num_train_steps = 4
  fake_config.eval_every_steps = 4
  fake_config.checkpoint_every_steps = 4

  def corrupted_test_split(self, params, builder):
    raise datasets.DatasetError('the test split is corrupted')
  monkeypatch.setattr(train.Trainer, 'evaluate_split', corrupted_test_split)
  run = str(tmp_path / 'run')
  with pytest.raises(datasets.DatasetError, match='corrupted'):
    train.train_and_evaluate(fake_config, run)
  assert _listing(checkpointing.checkpoint_dir(run)) == ['4']


# ------------------------------------------------------- restoring


def test_state_checksum_sees_every_bit_and_no_sharding():
  rng = np.random.default_rng(0)
  tree = {'a': rng.normal(size=(8, 5)).astype(np.float32),
          'b': {'c': rng.integers(0, 9, (8,)).astype(np.int32),
                'd': rng.normal(size=(3,)).astype(jax.numpy.bfloat16)},
          'e': np.asarray(True)}
  base = checkpointing.state_checksum(tree)
  assert len(base) == 16
  for leaf in ('a', 'c', 'd'):
    for _ in range(20):
      flipped = jax.tree_util.tree_map(np.copy, tree)
      x = flipped[leaf] if leaf == 'a' else flipped['b'][leaf]
      bits = x.view({4: np.uint32, 2: np.uint16}[x.dtype.itemsize])
      bits.flat[rng.integers(x.size)] ^= np.asarray(
          1 << int(rng.integers(8 * x.dtype.itemsize)), bits.dtype)
      assert checkpointing.state_checksum(flipped) != base, leaf
  # Moving a value to another element or array changes it too.
  swapped = jax.tree_util.tree_map(np.copy, tree)
  swapped['a'][[0, 1]] = swapped['a'][[1, 0]]
  assert checkpointing.state_checksum(swapped) != base
  # The same values split over devices, or on one: the same checksum.
  if jax.device_count() > 1:
    mesh = jax.sharding.Mesh(np.asarray(jax.devices()), ('data',))
    split = jax.device_put(tree['a'], jax.sharding.NamedSharding(
        mesh, jax.sharding.PartitionSpec('data')))
    assert split.addressable_shards[0].data.shape[0] < 8
    assert checkpointing.state_checksum({**tree, 'a': split}) == base


def _silently_corrupt(config, run, step) -> None:
  """Flips one byte of a data file of checkpoint ``step`` where Orbax still
  restores it without error, with other values (as a failing disk would)."""
  trainer = train.Trainer(config)
  manager = checkpointing.create_manager(run, config.max_to_keep)
  args = ocp.args.Composite(
      state=ocp.args.StandardRestore(trainer.abstract_state))
  try:
    good = helpers.leaves(manager.restore(step, args=args)['state'])
    folder = pathlib.Path(checkpointing.checkpoint_dir(run)) / str(step)
    data = max((p for p in folder.rglob('*') if p.is_file() and
                'ocdbt.process_0' in p.parts), key=lambda p: p.stat().st_size)
    original = data.read_bytes()
    for offset in range(len(original) // 8, len(original), 97):
      flipped = bytearray(original)
      flipped[offset] ^= 0x10
      data.write_bytes(bytes(flipped))
      try:
        restored = helpers.leaves(manager.restore(step, args=args)['state'])
      except Exception:  # pylint: disable=broad-except
        continue
      if any(not np.array_equal(a, b) for a, b in zip(good, restored)):
        return
    pytest.fail('no byte of the data files restores silently')
  finally:
    manager.close()


def test_a_silently_corrupted_checkpoint_is_caught_and_skipped(
    fake_config, tmp_path, caplog):
  run = str(tmp_path / 'run')
  train.train_and_evaluate(fake_config, run)          # checkpoints 2 and 4
  _silently_corrupt(fake_config, run, 4)
  state, _ = helpers.restore(fake_config, run)
  assert int(state.step) == 2
  assert 'checkpoints/4 is unreadable' in caplog.text
  assert 'altered on disk' in caplog.text
  moved = os.listdir(tmp_path / 'run' / 'checkpoints_corrupt')
  assert len(moved) == 1 and moved[0].startswith('4-')


def test_resuming_with_another_model_names_the_fields(fake_config, tmp_path):
  run = str(tmp_path / 'run')
  fake_config.num_train_steps = 2
  fake_config.optimizer = 'rmsprop'
  train.train_and_evaluate(fake_config, run)
  fake_config.num_train_steps = 4
  fake_config.model.features = 16
  fake_config.optimizer = 'adam'
  with pytest.raises(checkpointing.CheckpointError,
                     match=r"model\.features = 8 there, 16 here.*optimizer = "
                     r"'rmsprop' there, 'adam' here"):
    train.train_and_evaluate(fake_config, run)
  assert _listing(checkpointing.checkpoint_dir(run)) == ['2']
  assert not (tmp_path / 'run' / 'checkpoints_corrupt').exists()
  # A checkpoint older than that record: the run's config.json says it.
  meta = checkpointing.checkpoint_dir(run) / '2' / 'meta' / 'metadata'
  record = json.loads(meta.read_text())
  for key in ('model', 'optimizer', 'ema', 'grad_clip', 'state_checksum'):
    del record[key]
  meta.write_text(json.dumps(record))
  with pytest.raises(checkpointing.CheckpointError,
                     match=r"model\.features = 8 there, 16 here"):
    train.train_and_evaluate(fake_config, run)
  # The compute dtype does not shape the state: resuming in bf16 is fine.
  fake_config.model.features = 8
  fake_config.optimizer = 'rmsprop'
  fake_config.model.dtype = 'bfloat16'
  train.train_and_evaluate(fake_config, run)


# -------------------------------------------------- hostile input files


def _png_header_only(width, height):
  """A PNG that claims width x height (8-bit gray) and holds no pixels."""
  def chunk(kind, data):
    return (struct.pack('>I', len(data)) + kind + data +
            struct.pack('>I', zlib.crc32(kind + data)))
  return (b'\x89PNG\r\n\x1a\n' +
          chunk(b'IHDR', struct.pack('>IIBBBBB', width, height, 8, 0, 0, 0,
                                     0)) +
          chunk(b'IDAT', zlib.compress(b'\0' * 64)) + chunk(b'IEND', b''))


def test_huge_images_are_refused_from_their_header(tmp_path):
  big = tmp_path / 'big.png'
  big.write_bytes(_png_header_only(12000, 12000))
  with pytest.raises(compression.CompressionError,
                     match='is 12000x12000 .*codes 28x28'):
    image_files.read_image(big, (28, 28, 1))
  bomb = tmp_path / 'bomb.png'
  bomb.write_bytes(_png_header_only(100000, 100000))
  with pytest.raises(compression.CompressionError, match='huge image'):
    image_files.read_image(bomb, (28, 28, 1))


def test_bad_input_paths_for_compress(fake_config, tmp_path):
  config = fake_config
  folder = tmp_path / 'in'
  folder.mkdir()
  Image.fromarray(np.zeros((28, 28), np.uint8)).save(
      os.path.join(os.fsencode(folder), b'\xff\xfe.png'))
  config.compress.input = str(folder)
  with pytest.raises(compression.CompressionError, match='not valid UTF-8'):
    image_files.load_inputs(config, (28, 28, 1))
  (tmp_path / 'a_file').write_text('x')
  config.compress.output = str(tmp_path / 'a_file' / 'sub' / 'out.gpx')
  with pytest.raises(compression.CompressionError,
                     match='which is a file, not a folder'):
    image_files.output(config, folder=False)


def test_bad_dataset_files(fake_config, tmp_path):
  source = tmp_path / 'src'
  fake_data.mnist_folder(source)
  bad = source / 'train-images-idx3-ubyte.gz'
  data = bytearray(bad.read_bytes())
  data[len(data) // 2:len(data) // 2 + 8] = b'\xff' * 8   # inside the stream
  bad.write_bytes(bytes(data))
  with pytest.raises(datasets.DatasetError,
                     match='train-images-idx3-ubyte.gz .*damaged'):
    datasets.read_idx(bad, 3)
  (tmp_path / 'data_file').write_text('x')
  fake_config.data_dir = str(tmp_path / 'data_file')
  with pytest.raises(datasets.DatasetError, match='is a file, not a folder'):
    input_pipeline.get_builder(fake_config)


# ------------------------------------------------ one line, exit status


def test_mistakes_are_one_line_with_the_right_exit_status(fake_config,
                                                          tmp_path):
  trained = tmp_path / 'trained'
  fake_config.num_train_steps = 2
  train.train_and_evaluate(fake_config, str(trained))
  (tmp_path / 'user').mkdir()
  (tmp_path / 'user' / 'config.json').write_text('{}')
  cases = [
      # (flags, exit status, message)
      (['--config.nosuchkey=3'], 2, "'nosuchkey', a key the config does not "
       'have'),
      (['--config=configs/no_such_config.py'], 2, 'cannot load the config '
       'file'),
      (['--config.model.dtype=float7'], 2, "dtype must be 'float32' or "
       "'bfloat16'"),
      (['--config.learning_rate=inf'], 2, 'learning_rate = inf'),
      (['--config.batch_size=abc'], 2, 'invalid literal'),
      (['--workdir=' + str(tmp_path / 'user')], 1, 'not a gated_pixelcnn '
       'workdir'),
      (['--workdir=' + str(trained), '--config.model.features=16'], 1,
       'model.features = 8 there, 16 here'),
      (['--workdir=' + str(tmp_path / 'nothing'), '--mode=eval'], 1,
       'holds no trained run'),
      (['--workdir=/proc/gated_pixelcnn_run'], 1, 'cannot be created or '
       'written'),
      (['unexpected'], 2, 'unexpected arguments'),
  ]
  for flags, status, message in cases:
    out = subprocess.run(
        helpers.main_command(tmp_path / 'default', fake_config, *flags),
        cwd=helpers.ROOT, env=helpers.subprocess_env(), capture_output=True,
        text=True, timeout=240)
    errors_printed = [line for line in out.stderr.splitlines()
                      if line.startswith('error: ')]
    assert out.returncode == status, (flags, out.stderr[-3000:])
    assert len(errors_printed) == 1 and message in errors_printed[0], (
        flags, out.stderr[-3000:])
    assert 'Traceback' not in out.stderr, (flags, out.stderr[-3000:])
    assert 'Event loop is closed' not in out.stderr, flags
  assert not (tmp_path / 'nothing').exists()
  assert _listing(tmp_path / 'user') == ['config.json']
  # The environment variable brings the traceback back.
  out = subprocess.run(
      helpers.main_command(tmp_path / 'default', fake_config,
                           '--config.learning_rate=inf'),
      cwd=helpers.ROOT, env=helpers.subprocess_env(GATED_PIXELCNN_TRACEBACK='1'),
      capture_output=True, text=True, timeout=240)
  assert out.returncode != 0 and 'Traceback' in out.stderr
  assert isinstance(errors.ConfigError('x'), ValueError)
