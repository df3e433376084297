"""Every command that README.md and docs/ show starts (with --help): a renamed
module, a script whose folder shadows an installed module, or an import that
broke fails here instead of in a user's hands."""

import re
import subprocess
import sys

import pytest

from tests import runs

DOCS = [runs.ROOT / 'README.md', *sorted((runs.ROOT / 'docs').rglob('*.md'))]
COMMAND = re.compile(
    r'(python -m [\w.]+|python [\w/.-]+\.py|bash [\w/.-]+\.sh)')


def documented() -> list[str]:
  found = set()
  for doc in DOCS:
    found.update(COMMAND.findall(doc.read_text()))
  return sorted(found)


# Runs a documented Python command with --help, after importing JAX with the
# sys.path that command has (`python -m`: the current folder first; `python
# FILE`: the file's folder first), where a file named like a module JAX
# imports would shadow it.
_WITH_JAX = """
import os, runpy, sys
kind, target = sys.argv[1:3]
sys.argv = [target, '--help']
if kind == 'file':
  sys.path[0] = os.path.dirname(os.path.abspath(target))
import jax
jax.numpy.zeros(1).block_until_ready()
if kind == 'file':
  runpy.run_path(target, run_name='__main__')
else:
  runpy.run_module(target, run_name='__main__', alter_sys=True)
"""


def _starting(command: str) -> list[str]:
  """The documented command, asked for its help (shell scripts that would
  install or train are only parsed)."""
  program, target = command.split(' ', 1)
  if program == 'bash':
    if target.startswith('launch/'):
      return ['bash', target, '--help']
    return ['bash', '-n', target]
  if target.startswith('-m '):
    return [sys.executable, '-c', _WITH_JAX, 'module', target[3:]]
  return [sys.executable, '-c', _WITH_JAX, 'file', target]


def test_the_docs_show_the_commands_users_run():
  commands = documented()
  for expected in ('python -m gated_pixelcnn.main', 'bash scripts/train.sh',
                   'bash scripts/test.sh', 'python -m bench.train'):
    assert expected in commands


@pytest.mark.parametrize('command', documented())
def test_every_documented_command_starts(command):
  out = subprocess.run(_starting(command), cwd=runs.ROOT,
                       env=runs.subprocess_env(), capture_output=True,
                       text=True, timeout=240)
  text = out.stdout + out.stderr
  assert 'Traceback' not in text, text[-3000:]
  if _starting(command)[1] == '-n':
    assert out.returncode == 0, text
  else:
    # absl's --help exits with 1, argparse's and the launch scripts' with 0.
    assert out.returncode == 0 or (out.returncode == 1 and
                                   'Try --helpfull' in text), text[-3000:]


def test_bench_files_run_as_files_say_how_to_run_them():
  """Run as a file, bench/'s folder would go first on sys.path, where
  bench/compression.py shadows the `compression` module JAX imports."""
  out = subprocess.run([sys.executable, 'bench/compression.py', '--help'],
                       cwd=runs.ROOT, env=runs.subprocess_env(),
                       capture_output=True, text=True, timeout=120)
  assert out.returncode != 0
  assert 'python -m bench.compression' in out.stderr
  assert 'Traceback' not in out.stderr
