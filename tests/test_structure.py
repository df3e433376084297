"""The package's imports go one way (docs/api.md, Code map): no module
imports, even inside a function, one that imports it back, and nothing
below the jobs loads runs or starts jobs."""

import ast
import pathlib

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / 'gated_pixelcnn'


def _imports() -> dict[str, set[str]]:
  """{module: the package modules it imports anywhere in its file}."""
  names = {p.stem for p in PACKAGE.glob('*.py')}
  graph = {}
  for path in PACKAGE.glob('*.py'):
    deps = set()
    for node in ast.walk(ast.parse(path.read_text())):
      if isinstance(node, ast.ImportFrom) and node.module == 'gated_pixelcnn':
        deps |= {a.name for a in node.names if a.name in names}
      elif isinstance(node, ast.ImportFrom) and (node.module or '').startswith(
          'gated_pixelcnn.'):
        deps.add(node.module.split('.')[1])
      elif isinstance(node, ast.Import):
        deps |= {a.name.split('.')[1] for a in node.names
                 if a.name.startswith('gated_pixelcnn.')}
    graph[path.stem] = deps - {path.stem}
  return graph


def _reachable(graph, start: str) -> set[str]:
  seen, todo = set(), [start]
  while todo:
    for dep in graph[todo.pop()]:
      if dep not in seen:
        seen.add(dep)
        todo.append(dep)
  return seen


def test_the_imports_have_no_cycle():
  graph = _imports()
  cycles = sorted(m for m in graph if m in _reachable(graph, m))
  assert not cycles, f'modules on an import cycle: {cycles}'


def test_training_never_imports_the_jobs():
  graph = _imports()
  above = {'runs', 'modes', 'main', 'export', 'image_files', 'compression',
           'pretrained'}
  for module in ('train', 'steps', 'parallel', 'records', 'conditioning',
                 'validation', 'models', 'sampling', 'figures'):
    assert not _reachable(graph, module) & above, module


def test_the_graph_sees_function_level_imports():
  # The parser is what the two tests above rely on: a lazy import counts.
  graph = _imports()
  assert 'train' in graph['runs'] and 'runs' in graph['modes']
  assert graph['models'] >= {'gated', 'pixelrnn', 'conditional'}
