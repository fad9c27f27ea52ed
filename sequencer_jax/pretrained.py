"""`load_pretrained(source)`: a model from wherever its weights are, described by its record.

A source is a model directory (written by the converter or by export), a training workdir (its
best checkpoint when it has one, else its newest: `weights/workdir.py`), a PyTorch
`.pth`/`.bin`/`.safetensors` file in either key layout (converted in memory, nothing written),
or `hf-hub:<owner>/<name>` read from the local Hugging Face cache.
"""

from __future__ import annotations

import os
from typing import Any, NamedTuple

import jax.numpy as jnp

from sequencer_jax.models import Sequencer
from sequencer_jax.errors import CheckpointError
from sequencer_jax.weights import hub, torch_files, torch_keys, workdir
from sequencer_jax.models.registry import name_for_arch
from sequencer_jax.weights.model_format import (ModelFormatError, ModelRecord, default_class_names,
                                                is_model_directory, read_model_directory)

TORCH_SUFFIXES = ('.pth', '.pt', '.bin', '.tar', '.safetensors')
SOURCES = ('a model directory, a training workdir, a .pth/.bin/.safetensors file, or '
           'hf-hub:<owner>/<name> (e.g. hf-hub:timm/sequencer2d_s.in1k)')


class SourceError(ValueError):
  """A model source that cannot be loaded; the message names it and says why."""


class Pretrained(NamedTuple):
  """A loaded model: the module, its variables ({'params': ...}) and what its record says."""

  model: Sequencer
  variables: dict[str, Any]
  record: ModelRecord


def _from_torch_file(path: str, source: str) -> tuple[ModelRecord, Any]:
  """A registered model with its data config, or any other architecture its keys describe."""
  arch, classes, params = torch_keys.read_arch_and_params(torch_files.read_state_dict(path))
  name = name_for_arch(arch)
  if name is not None:
    return ModelRecord.registered(name, classes, converted_from=source), params
  return ModelRecord(arch, classes, default_class_names(classes),
                     provenance={'converted_from': source}), params


def _from_hub(source: str) -> tuple[ModelRecord, Any]:
  weights, config = hub.cached_files(source)
  record, params = _from_torch_file(weights, source)
  data_config, names = hub.read_hub_config(config, record.num_classes)
  return ModelRecord(record.arch, record.num_classes, names or record.class_names,
                     data_config or record.data_config,
                     {'converted_from': source, 'file': weights}), params


def _resolve(source: str, ema: bool) -> tuple[ModelRecord, Any]:
  path = os.path.abspath(os.path.expanduser(source))
  run = os.path.isdir(path) and not is_model_directory(path) and workdir.is_training_workdir(path)
  if ema and not run:
    raise SourceError(f'{source}: only a training workdir holds EMA weights beside the raw '
                      f'ones; export them with `python -m sequencer_jax.export WORKDIR DST --ema`')
  if source.startswith(hub.HUB_PREFIX):
    return _from_hub(source)
  if run:
    return workdir.read_trained_model(path, ema=ema)
  if os.path.isdir(path):
    if is_model_directory(path):
      return read_model_directory(path)
    raise SourceError(f'{source} is a directory that is neither a model directory (model/ and '
                      f'params/) nor a training workdir; a model source is {SOURCES}')
  if os.path.isfile(path) and path.endswith(TORCH_SUFFIXES):
    return _from_torch_file(path, path)
  what = 'is not a model file' if os.path.exists(path) else 'does not exist'
  raise SourceError(f'{source} {what}; a model source is {SOURCES}')


def resolve(source: str, *, ema: bool = False) -> tuple[ModelRecord, Any]:
  """The record and parameters (host arrays) of `source`; see the module docstring."""
  try:
    return _resolve(str(source), ema)
  except (ModelFormatError, torch_keys.ConversionError, CheckpointError,
          hub.HubCacheError) as e:
    raise SourceError(str(e)) from None


def load_pretrained(source: str, *, ema: bool = False, dtype: Any = jnp.float32,
                    **model_kwargs: Any) -> Pretrained:
  """Loads `source`: returns `(model, {'params': params}, record)`.

  `ema` takes a training workdir's EMA weights. `model_kwargs` (drop rates, rnn_impl, ...) go
  to the module; the architecture and the number of classes come from the source.
  """
  record, params = resolve(source, ema=ema)
  return Pretrained(record.build(dtype=dtype, **model_kwargs), {'params': params}, record)
