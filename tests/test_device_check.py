"""bench/device_check.py --tiny: the code paths of the device check (every
correctness check, training throughput, sampling, the report and JSON) run
on the CPU, so that the script works as is on the first GPU it meets."""

import json
import subprocess
import sys

from tests import helpers


def test_device_check_tiny_runs_every_section(tmp_path):
  out = subprocess.run(
      [sys.executable, '-m', 'bench.device_check', '--tiny',
       f'--out={tmp_path}'], cwd=helpers.ROOT, env=helpers.subprocess_env(),
      capture_output=True, text=True, timeout=600, check=False)
  assert out.returncode == 0, (out.stdout + out.stderr)[-3000:]
  result = json.loads((tmp_path / 'device_check.json').read_text())
  assert result['tiny'] and result['environment']['platform'] == 'cpu'
  checks = result['checks']
  assert checks['causality'] == {**checks['causality'], 'passed': True,
                                 'leaks': 0, 'blind_spots': 0}
  assert checks['samplers']['differing'] == 0
  compressed = checks['compression']
  assert compressed['passed']
  # The file is about the model's NLL (64 tiny images: the header counts).
  nll, size = (compressed['model_bits_per_dim'],
               compressed['file_bits_per_dim'])
  assert nll <= size <= nll + 1
  names = [t['name'] for t in result['training']]
  assert names == ['cifar10 paper model, bfloat16',
                   'cifar10 paper model, float32', 'default model, float32']
  for row in result['training']:
    assert row['images_per_second'] > 0 and row['mfu'] > 0
    assert row['image'] == ([32, 32, 3] if 'cifar10' in row['name']
                            else [28, 28, 1])
  rows = result['sampling']['rows']
  assert [(r['method'], r['batch']) for r in rows] == [
      ('cached', 1), ('cached', 2), ('cached', 4), ('naive', 2)]
  assert result['sampling']['naive_over_cached'] > 0
  for text in ('exact causality', 'cached == naive', 'compression round '
               'trip', 'cifar10 paper model, bfloat16', 'naive / cached'):
    assert text in out.stdout
