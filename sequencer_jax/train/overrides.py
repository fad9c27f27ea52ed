"""Checks `--config.a.b=value` overrides against a config, naming the valid fields on a mistake.

ml_collections reports an unknown field as a bare `AttributeError: "'b'"`; `check_overrides`
says which override is wrong and lists the fields that exist where it pointed.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from typing import Any

import ml_collections


class ConfigFieldError(ValueError):
  """An override names a field that the config does not have."""


def load_config_file(path: str) -> ml_collections.ConfigDict:
  """`get_config()` of the config file `path` (as `--config=path` loads it)."""
  spec = importlib.util.spec_from_file_location('_config_file', path)
  if spec is None or spec.loader is None:
    raise ConfigFieldError(f'cannot load the config file {path}')
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def unknown_field_message(config: ml_collections.ConfigDict, dotted: str) -> str | None:
  """None if `dotted` (e.g. 'optim.lr') names a field of `config`, else what is wrong."""
  node, seen = config, []
  for part in dotted.split('.'):
    if not isinstance(node, ml_collections.ConfigDict):
      return (f'--config.{dotted}: {".".join(seen)} is a value, not a group of fields')
    if part not in node:
      where = f'config.{".".join(seen)}' if seen else 'the config'
      valid = ', '.join(sorted(node.keys())) or 'none'
      return (f'--config.{dotted}: {where} has no field {part!r}; its fields: {valid}')
    node = node[part]
    seen.append(part)
  return None


def apply_overrides(config: ml_collections.ConfigDict, overrides: dict[str, Any]) -> None:
  """Sets each dotted field of `overrides` (e.g. {'optim.lr': 1e-3}) in `config`, checked."""
  for dotted, value in overrides.items():
    message = unknown_field_message(config, dotted)
    if message:
      raise ConfigFieldError(message)
    *path, last = dotted.split('.')
    node = config
    for part in path:
      node = node[part]
    node[last] = value


def check_overrides(config: ml_collections.ConfigDict, argv: Sequence[str],
                    flag: str = 'config') -> None:
  """Raises ConfigFieldError for the first `--<flag>.x=...` in `argv` naming no field."""
  prefixes = (f'--{flag}.', f'-{flag}.')
  for arg in argv:
    if arg.startswith(prefixes):
      dotted = arg.split('.', 1)[1].split('=', 1)[0]
      message = unknown_field_message(config, dotted)
      if message:
        raise ConfigFieldError(message)
