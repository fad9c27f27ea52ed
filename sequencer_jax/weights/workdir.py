"""A training workdir read as a model: its model record and the parameters of one checkpoint.

The trainer writes `model.json` at the start of a run and orbax checkpoints into `checkpoints/`
(the newest few) and `best/` (the best by validation top-1). This module only reads them, with
read-only managers, so loading a trained model needs nothing of the training package.

The model of a run is its best checkpoint when it has one, else its newest: `load_pretrained`
and `export` both take it by default; `last` and `step` choose others.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from sequencer_jax.errors import CheckpointError
from sequencer_jax.weights.model_format import ModelFormatError, ModelRecord, failed_read_reason

MODEL_JSON = 'model.json'
CHECKPOINT_ITEMS = ('state', 'run', 'checksums')  # What every training checkpoint holds.


def damaged(directory: Any, step: int, reason: str) -> CheckpointError:
  """The error for checkpoint `step` of `directory`, with how to fall back to an earlier one."""
  return CheckpointError(
      f'checkpoint {step} in {directory} is damaged ({reason}). Nothing was changed; to resume '
      f'from the newest checkpoint before it, move it out of the way: '
      f'mv {directory}/{step} {directory}/{step}.damaged')


def unreadable_arrays(directory: Any, step: int, error: Exception) -> CheckpointError:
  """`damaged` for a restore that failed while reading the arrays."""
  return damaged(directory, step, f'its arrays cannot be read: {failed_read_reason(error)}')


def is_training_workdir(path: str) -> bool:
  """Whether `path` holds a training run (its model record, or its checkpoint directories)."""
  return any(os.path.exists(os.path.join(path, entry))
             for entry in (MODEL_JSON, 'checkpoints', 'best'))


def read_record(workdir: str) -> ModelRecord:
  """The model record the trainer wrote into `workdir`."""
  path = os.path.join(os.path.abspath(workdir), MODEL_JSON)
  if not os.path.isfile(path):
    raise ModelFormatError(f'{workdir} is a training workdir without {MODEL_JSON} (the model '
                           f'record every run writes at its start); it cannot be described')
  try:
    with open(path) as f:
      return ModelRecord.from_json(json.load(f), path)
  except (OSError, ValueError) as e:
    raise ModelFormatError(f'{path} cannot be read: {e}') from None


def _read_only_manager(directory: str) -> ocp.CheckpointManager:
  """A manager that only reads (orbax's notes about what read-only mode turns off are muted)."""
  handlers = {'state': ocp.PyTreeCheckpointHandler(), 'run': ocp.JsonCheckpointHandler(),
              'checksums': ocp.JsonCheckpointHandler()}
  absl_logger = logging.getLogger('absl')
  level = absl_logger.level
  absl_logger.setLevel(logging.ERROR)
  try:
    return ocp.CheckpointManager(directory, item_handlers=handlers,
                                 options=ocp.CheckpointManagerOptions(read_only=True))
  finally:
    absl_logger.setLevel(level)


def _validation_top1(directory: str, step: int) -> float | None:
  """The validation top-1 a best/ checkpoint was kept for (None when it recorded none)."""
  manager = _read_only_manager(directory)
  try:
    metrics = manager.metrics(step) or {}
  finally:
    manager.close()
  return float(metrics['top1']) if 'top1' in metrics else None


def complete_steps(directory: str) -> list[int]:
  """The steps of the complete checkpoints in `directory`, oldest first (none if missing)."""
  if not os.path.isdir(directory):
    return []
  manager = _read_only_manager(directory)
  try:
    return sorted(manager.all_steps())
  finally:
    manager.close()


def _read_params(directory: str, step: int, ema: bool) -> Any:
  """The (EMA) parameters of checkpoint `step` in `directory`, as numpy arrays."""
  manager = _read_only_manager(directory)
  try:
    tree = manager.item_metadata(step)['state']
    key = 'ema_params' if ema else 'params'
    if not tree.get(key):
      raise CheckpointError(f'checkpoint {step} in {directory} holds no EMA weights (the run '
                            f'had no ema_decay); take its raw weights without --ema')
    target = {key: jax.tree.map(lambda m: np.zeros(m.shape, m.dtype), tree[key])}
    as_numpy = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), target)
    try:
      restored = manager.restore(step, args=ocp.args.Composite(
          state=ocp.args.PyTreeRestore(item=target, restore_args=as_numpy,
                                       partial_restore=True)))
    except Exception as e:  # noqa: BLE001 - tensorstore raises bare Exceptions for bad bytes.
      raise unreadable_arrays(directory, step, e) from None
    return jax.device_get(restored['state'][key])
  finally:
    manager.close()


def _choose(root: str, last: bool, step: int | None) -> tuple[str, str, int]:
  """(directory, which, step): the run's model (see the module docstring), or the one asked."""
  checkpoints = os.path.join(root, 'checkpoints')
  if step is None and not last:
    best = complete_steps(os.path.join(root, 'best'))
    if best:
      return os.path.join(root, 'best'), 'best', best[-1]
  steps = complete_steps(checkpoints)
  if not steps:
    raise CheckpointError(f'{root} holds no checkpoint in checkpoints/ or best/: it is not a '
                          f'training workdir, or the run saved no checkpoint yet')
  if step is None:
    return checkpoints, 'newest', steps[-1]
  if step not in steps:
    raise CheckpointError(f'{checkpoints} has no checkpoint {step}; it has '
                          f'{", ".join(map(str, steps))}')
  return checkpoints, 'chosen', step


def read_trained_model(workdir: str, *, last: bool = False, step: int | None = None,
                       ema: bool = False) -> tuple[ModelRecord, Any]:
  """The record and parameters (numpy) of the run in `workdir`: its best checkpoint when it has
  one, else its newest; `last` takes the newest, `step` checkpoint `step` of checkpoints/, and
  `ema` the EMA parameters. The record's provenance names the workdir, step and weights, and
  for the best checkpoint the validation top-1 it was kept for (`validation_top1`)."""
  root = os.path.abspath(workdir)
  record = read_record(root)
  directory, which, step = _choose(root, last, step)
  params = _read_params(directory, step, ema)
  provenance = {'workdir': root, 'step': step, 'checkpoint': which,
                'weights': 'ema' if ema else 'raw'}
  top1 = _validation_top1(directory, step) if which == 'best' else None
  if top1 is not None:
    provenance['validation_top1'] = top1
  return dataclasses.replace(record, provenance=provenance), params
