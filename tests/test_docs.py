"""Every command that README.md and docs/ show starts (with --help): a renamed
module, a script whose folder shadows an installed module, or an import that
broke fails here instead of in a user's hands. Every relative link and image
resolves, every #anchor names a heading, and README.md stays a short landing
page."""

import re
import subprocess
import sys

import pytest

from tests import helpers

DOCS = [helpers.ROOT / 'README.md',
        *sorted((helpers.ROOT / 'docs').rglob('*.md'))]
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
  out = subprocess.run(_starting(command), cwd=helpers.ROOT,
                       env=helpers.subprocess_env(), capture_output=True,
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
                       cwd=helpers.ROOT, env=helpers.subprocess_env(),
                       capture_output=True, text=True, timeout=120)
  assert out.returncode != 0
  assert 'python -m bench.compression' in out.stderr
  assert 'Traceback' not in out.stderr


# [text](target) and ![alt](target), with an optional "title" after target.
LINK = re.compile(r'!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+"[^"]*")?\s*\)')
FENCE = re.compile(r'^(```|~~~).*?^\1[^\n]*$', re.M | re.S)
INLINE_CODE = re.compile(r'(`+)[^`]*?\1')
HEADING = re.compile(r'^#{1,6}[ \t]+(.+?)[ \t]*#*[ \t]*$', re.M)
README_MAX_LINES = 220


def _prose(text: str) -> str:
  """The text without fenced code blocks, and inline code as a word: what
  GitHub renders as links and headings."""
  return INLINE_CODE.sub('code', FENCE.sub('', text))


def _slug(heading: str) -> str:
  """GitHub's anchor for a heading: lowercase, punctuation but '-' and '_'
  dropped, each space a '-'."""
  text = re.sub(r'`([^`]*)`', r'\1', heading.strip()).lower()
  return re.sub(r'[^\w\- ]', '', text).replace(' ', '-')


def anchors(path) -> set[str]:
  """The anchors of a markdown file's headings (a repeated one gets -1,
  -2, ... as on GitHub)."""
  found, seen = set(), {}
  for heading in HEADING.findall(FENCE.sub('', path.read_text())):
    slug = _slug(heading)
    count = seen.get(slug, 0)
    seen[slug] = count + 1
    found.add(f'{slug}-{count}' if count else slug)
  return found


def links(doc) -> list[str]:
  return LINK.findall(_prose(doc.read_text()))


def test_the_link_pattern_and_slugs():
  text = ('See [a](b.md#c-d), ![x](img.png "t"), `[no](code.md)`,\n'
          '```\n[no](fenced.md)\n```\n[e](http://f) [g](#h)')
  assert LINK.findall(_prose(text)) == ['b.md#c-d', 'img.png',
                                        'http://f', '#h']
  assert _slug("Scale out: pods, many hosts, preemption") == (
      'scale-out-pods-many-hosts-preemption')
  assert _slug("The paper's `comparison` at small_scale") == (
      'the-papers-comparison-at-small_scale')


def test_the_docs_have_links_to_check():
  """README.md links its pages and pictures, so the checks below see them."""
  targets = links(helpers.ROOT / 'README.md')
  assert any(t.startswith('docs/') and t.endswith('.md') for t in targets)
  assert any(t.startswith('docs/') and t.endswith('.png') for t in targets)


@pytest.mark.parametrize('doc', DOCS, ids=lambda d: str(
    d.relative_to(helpers.ROOT)))
def test_every_relative_link_and_anchor_resolves(doc):
  broken = []
  for target in links(doc):
    if re.match(r'(https?:|mailto:)', target, re.I):
      continue
    path, _, anchor = target.partition('#')
    resolved = (doc.parent / path).resolve() if path else doc
    if not resolved.exists():
      broken.append(f'{target}: no file {resolved}')
    elif (anchor and resolved.suffix == '.md'
          and anchor not in anchors(resolved)):
      broken.append(f'{target}: no heading #{anchor} in {resolved.name}')
  assert not broken, '\n'.join(broken)


def test_readme_is_a_landing_page():
  lines = (helpers.ROOT / 'README.md').read_text().splitlines()
  assert len(lines) <= README_MAX_LINES, (
      f'README.md has {len(lines)} lines; move details to docs/')
