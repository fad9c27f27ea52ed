"""The package's layout rules: small modules that say what they hold, and a library that imports
none of the programs, test harnesses or config files around it."""

from __future__ import annotations

import ast
import pathlib

import pytest

import sequencer_jax

PACKAGE = pathlib.Path(sequencer_jax.__file__).parent
MODULES = sorted(PACKAGE.rglob('*.py'))
NOT_LIBRARY = ('tools', 'benchmarks', 'configs', 'tests', 'main', 'convert_torch_weights')


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


def test_the_readme_names_work_from_the_top_package():
  for name in ('create_model', 'list_models', 'load_pretrained', 'save_model', 'model_info'):
    assert callable(getattr(sequencer_jax, name)), name
