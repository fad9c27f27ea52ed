"""This project's model format: an orbax directory holding `params` and a `model` record.

The `model` record (JSON) names the registered architecture and the number of classes, so
`load_pretrained(path)` rebuilds the right module without being told. Orbax writes into a
temporary directory and renames it when complete, so a crash never leaves a half-written
checkpoint under the final name.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from sequencer_jax.models import Sequencer, abstract_params, create_model, list_models

FORMAT_VERSION = 1  # Written into every model record, and checked on load.


class ModelFormatError(ValueError):
  """A model directory that is missing, incomplete, of another format version or not ours."""


def short_reason(error: Exception) -> str:
  """The first line of an orbax/TensorStore error, without its long spec dump."""
  return str(error).splitlines()[0].split(' See full TensorStore details')[0][:300]


def save_model(path: str, name: str, num_classes: int, params: Any) -> None:
  """Writes `params` of the registered model `name` to the new directory `path`."""
  path = os.path.abspath(path)
  if os.path.exists(path):
    raise FileExistsError(f'{path} already exists; refusing to overwrite it')
  if name not in list_models():
    raise ModelFormatError(f'unknown model {name!r}; valid names: {", ".join(list_models())}')
  record = {'name': name, 'num_classes': int(num_classes), 'format_version': FORMAT_VERSION}
  params = jax.tree.map(np.asarray, params)
  with ocp.Checkpointer(ocp.CompositeCheckpointHandler()) as ckptr:
    ckptr.save(path, args=ocp.args.Composite(params=ocp.args.StandardSave(params),
                                             model=ocp.args.JsonSave(record)))


def read_model_record(path: str) -> dict[str, Any]:
  """The `model` record of a checkpoint written by `save_model`."""
  path = os.path.abspath(path)
  if not os.path.isdir(path):
    raise ModelFormatError(f'{path} is not a checkpoint directory')
  if not os.path.isdir(os.path.join(path, 'model')) or not os.path.isdir(
      os.path.join(path, 'params')):
    raise ModelFormatError(f'{path} is not a sequencer_jax model checkpoint (it needs `model` '
                           f'and `params` entries); convert PyTorch weights with '
                           f'convert_torch_weights.py first')
  try:
    with ocp.Checkpointer(ocp.CompositeCheckpointHandler()) as ckptr:
      record = ckptr.restore(path, args=ocp.args.Composite(model=ocp.args.JsonRestore()))['model']
  except Exception as e:  # noqa: BLE001 - orbax and TensorStore raise several types.
    raise ModelFormatError(f'{path}: its model record cannot be read, the directory is damaged: '
                           f'{short_reason(e)}') from None
  if record.get('format_version') != FORMAT_VERSION:
    raise ModelFormatError(f'{path} is a model directory of format version '
                           f'{record.get("format_version")}; this code reads version '
                           f'{FORMAT_VERSION}')
  if record.get('name') not in list_models():
    raise ModelFormatError(f'{path} names an unknown model {record.get("name")!r}')
  return record


def load_pretrained(path: str, *, dtype: Any = jnp.float32,
                    **model_kwargs: Any) -> tuple[Sequencer, dict[str, Any]]:
  """Loads a converted or trained checkpoint: returns `(model, {'params': params})`.

  `model_kwargs` (drop rates, ...) are passed to `create_model`; the architecture and the number
  of classes come from the checkpoint.
  """
  record = read_model_record(path)
  model = create_model(record['name'], num_classes=record['num_classes'], dtype=dtype,
                       **model_kwargs)
  target = abstract_params(model)
  try:
    with ocp.Checkpointer(ocp.CompositeCheckpointHandler()) as ckptr:
      params = ckptr.restore(os.path.abspath(path), args=ocp.args.Composite(
          params=ocp.args.StandardRestore(target)))['params']
  except Exception as e:  # noqa: BLE001 - tensorstore raises bare Exceptions for bad bytes.
    raise ModelFormatError(f'{path}: the parameters do not match {record["name"]} with '
                           f'{record["num_classes"]} classes, or are damaged: '
                           f'{short_reason(e)}') from None
  return model, {'params': params}
