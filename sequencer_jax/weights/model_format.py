"""This project's model format: an orbax directory holding `params` and a self-describing `model`.

The `model` record (JSON) holds everything needed to use the weights without being told: the
full architecture (every `SequencerArch` field) and its registered name if it has one, the
number of classes and their names, the evaluation data config (timm's `pretrained_cfg` fields)
and where the weights came from. Orbax writes into a temporary directory and renames it when
complete, so a crash never leaves a half-written model under the final name.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from sequencer_jax import storage
from sequencer_jax.labels import imagenet1k_names
from sequencer_jax.models import DataConfig, Sequencer, SequencerArch, abstract_params, model_info
from sequencer_jax.models.registry import list_models, name_for_arch

FORMAT_VERSION = 2  # Written into every model record, and checked on load.
READABLE_VERSIONS = (1, 2)  # Version 1 records named a registered model and a class count.


class ModelFormatError(ValueError):
  """A model directory that is missing, incomplete, of another format version or not ours."""


def failed_read_reason(error: Exception) -> str:
  """The first line of a failed orbax/TensorStore read, without its long spec dump.

  Call it where a restore failed: it also silences that restore's orphaned reads.
  """
  storage.quiet_io_failures()
  return str(error).splitlines()[0].split(' See full TensorStore details')[0][:300]


def default_class_names(num_classes: int) -> tuple[str, ...] | None:
  """ImageNet-1k's names for a 1000-class head (every released Sequencer's), else unknown."""
  return imagenet1k_names() if num_classes == 1000 else None


@dataclasses.dataclass(frozen=True)
class ModelRecord:
  """What a model directory says about its weights."""

  arch: SequencerArch
  num_classes: int
  class_names: tuple[str, ...] | None = None  # Index = class id; None when unknown.
  data_config: DataConfig = DataConfig()
  provenance: Mapping[str, Any] = dataclasses.field(default_factory=dict)

  def __post_init__(self) -> None:
    if self.class_names is not None:
      object.__setattr__(self, 'class_names', tuple(str(n) for n in self.class_names))
      if len(self.class_names) != self.num_classes:
        raise ValueError(f'{len(self.class_names)} class names for {self.num_classes} classes')

  @property
  def name(self) -> str | None:
    """The registered model with exactly this architecture, if any."""
    return name_for_arch(self.arch)

  @classmethod
  def registered(cls, name: str, num_classes: int, *,
                 class_names: Sequence[str] | None = None,
                 **provenance: Any) -> ModelRecord:
    """The record of registered model `name` with its eval data config; a 1000-class head
    gets ImageNet-1k's class names unless `class_names` are given."""
    info = model_info(name)
    names = default_class_names(num_classes) if class_names is None else tuple(class_names)
    return cls(info.arch, num_classes, names, info.data_config, provenance)

  def build(self, **model_kwargs: Any) -> Sequencer:
    """The module (`model_kwargs`: dtype, drop rates, rnn_impl, ...)."""
    return Sequencer(self.arch, num_classes=self.num_classes, **model_kwargs)

  def to_json(self) -> dict[str, Any]:
    arch = {k: list(v) if isinstance(v, tuple) else v
            for k, v in dataclasses.asdict(self.arch).items()}
    return {'format_version': FORMAT_VERSION, 'name': self.name, 'arch': arch,
            'num_classes': self.num_classes,
            'class_names': None if self.class_names is None else list(self.class_names),
            'pretrained_cfg': self.data_config.to_pretrained_cfg(),
            'provenance': dict(self.provenance)}

  @classmethod
  def from_json(cls, record: Mapping[str, Any], where: str) -> ModelRecord:
    """Reads a record of any readable version; `where` names its directory in errors."""
    version = record.get('format_version')
    if version not in READABLE_VERSIONS:
      raise ModelFormatError(f'{where} is a model directory of format version {version}; this '
                             f'code reads versions {", ".join(map(str, READABLE_VERSIONS))}')
    try:
      if version == 1:
        if record.get('name') not in list_models():
          raise ModelFormatError(f'{where} names an unknown model {record.get("name")!r}')
        return cls.registered(record['name'], int(record['num_classes']),
                              converted_from='a format version 1 directory')
      return cls(SequencerArch(**record['arch']), int(record['num_classes']),
                 record.get('class_names'),
                 DataConfig.from_pretrained_cfg(record.get('pretrained_cfg') or {}),
                 record.get('provenance') or {})
    except (KeyError, TypeError, ValueError) as e:
      if isinstance(e, ModelFormatError):
        raise
      raise ModelFormatError(f'{where}: its model record is not valid: {e}') from None


def save_model(path: str, record: ModelRecord, params: Any) -> None:
  """Writes `params` described by `record` to the new directory `path` (never overwritten)."""
  path = os.path.abspath(path)
  if os.path.exists(path):
    raise FileExistsError(f'{path} already exists; refusing to overwrite it')
  params = jax.tree.map(np.asarray, params)
  with ocp.Checkpointer(ocp.CompositeCheckpointHandler()) as ckptr:
    ckptr.save(path, args=ocp.args.Composite(params=ocp.args.StandardSave(params),
                                             model=ocp.args.JsonSave(record.to_json())))


def is_model_directory(path: str) -> bool:
  """Whether `path` looks like a directory written by `save_model`."""
  return all(os.path.isdir(os.path.join(path, item)) for item in ('model', 'params'))


def read_model_record(path: str) -> ModelRecord:
  """The record of a model directory written by `save_model`."""
  path = os.path.abspath(path)
  if not is_model_directory(path):
    raise ModelFormatError(f'{path} is not a sequencer_jax model directory (it needs `model` '
                           f'and `params` entries)')
  try:
    with ocp.Checkpointer(ocp.CompositeCheckpointHandler()) as ckptr:
      record = ckptr.restore(path, args=ocp.args.Composite(model=ocp.args.JsonRestore()))['model']
  except Exception as e:  # noqa: BLE001 - orbax and TensorStore raise several types.
    raise ModelFormatError(f'{path}: its model record cannot be read, the directory is damaged: '
                           f'{failed_read_reason(e)}') from None
  return ModelRecord.from_json(record, path)


def read_model_directory(path: str) -> tuple[ModelRecord, Any]:
  """The record and the parameters (NumPy) of a model directory."""
  record = read_model_record(path)
  target = jax.tree.map(lambda x: np.zeros(x.shape, x.dtype), abstract_params(record.build()))
  try:
    with ocp.Checkpointer(ocp.CompositeCheckpointHandler()) as ckptr:
      params = ckptr.restore(os.path.abspath(path), args=ocp.args.Composite(
          params=ocp.args.StandardRestore(target)))['params']
  except Exception as e:  # noqa: BLE001 - tensorstore raises bare Exceptions for bad bytes.
    raise ModelFormatError(f'{path}: the parameters do not match its architecture with '
                           f'{record.num_classes} classes, or are damaged: '
                           f'{failed_read_reason(e)}') from None
  return record, params
