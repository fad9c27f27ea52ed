"""The package's layout rules: small modules and functions that say what they hold, a library that
imports none of the programs, test harnesses or config files around it, and layers that import
only downwards (loading, evaluating and the data never need the training package)."""

from __future__ import annotations

import ast
import pathlib

import pytest

import sequencer_jax

PACKAGE = pathlib.Path(sequencer_jax.__file__).parent
MODULES = sorted(PACKAGE.rglob('*.py'))
NOT_LIBRARY = ('tools', 'benchmarks', 'configs', 'tests', 'main', 'convert_torch_weights')
BELOW_TRAINING = ('models', 'weights', 'data', 'evaluation', 'labels', 'pretrained.py',
                  'sharding.py', 'errors.py', 'inference.py')
MAX_FUNCTION_LINES = 60


def _imports(path: pathlib.Path) -> set[str]:
  """The absolute module names `path` imports (`from a import b` counts as a and a.b)."""
  names = set()
  for node in ast.walk(ast.parse(path.read_text())):
    if isinstance(node, ast.Import):
      names |= {alias.name for alias in node.names}
    elif isinstance(node, ast.ImportFrom) and node.level == 0:
      names |= {node.module} | {f'{node.module}.{alias.name}' for alias in node.names}
  return names


@pytest.mark.parametrize('path', MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_each_module_is_short_and_opens_with_what_it_holds(path):
  text = path.read_text()
  assert len(text.splitlines()) <= 400, f'{path} has {len(text.splitlines())} lines'
  assert text.startswith('"""') and len(text.splitlines()[0]) > 10, f'{path}: no opening line'
  assert ast.get_docstring(ast.parse(text)), path


@pytest.mark.parametrize('path', MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_the_library_imports_no_program_harness_or_config(path):
  imported = set()
  for node in ast.walk(ast.parse(path.read_text())):
    if isinstance(node, ast.Import):
      imported |= {alias.name.split('.')[0] for alias in node.names}
    elif isinstance(node, ast.ImportFrom) and node.level == 0:
      imported.add(node.module.split('.')[0])
  assert not imported & set(NOT_LIBRARY), f'{path} imports {imported & set(NOT_LIBRARY)}'


@pytest.mark.parametrize('path', MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_no_function_is_longer_than_60_lines(path):
  long = [f'{node.name} ({node.end_lineno - node.lineno + 1} lines)'
          for node in ast.walk(ast.parse(path.read_text()))
          if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
          and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES]
  assert not long, f'{path}: {", ".join(long)}'


@pytest.mark.parametrize('path', [p for p in MODULES
                                  if p.relative_to(PACKAGE).parts[0] in BELOW_TRAINING],
                         ids=lambda p: str(p.relative_to(PACKAGE)))
def test_the_layers_below_training_never_import_it(path):
  upward = {name for name in _imports(path)
            if name == 'sequencer_jax.train' or name.startswith('sequencer_jax.train.')}
  assert not upward, f'{path} imports {sorted(upward)}'


def test_the_readme_names_work_from_the_top_package():
  for name in ('create_model', 'list_models', 'load_pretrained', 'save_model', 'model_info'):
    assert callable(getattr(sequencer_jax, name)), name
