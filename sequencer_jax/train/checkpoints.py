"""Training checkpoints (the whole train state): orbax managers in `<workdir>/checkpoints`, `/best`.

`checkpoints/` keeps the newest `keep` train states (step, parameters, optimiser state, EMA,
RNG), saved asynchronously; `best/` keeps the single state with the best top-1 so far. Each
checkpoint also holds a JSON record of the run it belongs to, so that a workdir holding another
run (another model, dataset or batch) is refused instead of silently resumed. Orbax writes into a
temporary directory and renames it only once complete, so a crash mid-write never leaves a
checkpoint that a restart would pick up. Bytes changed after the write (a bad disk, a copy cut
short) are caught too: each checkpoint records a checksum of every array, compared on restore.
The data position needs no saving: the input pipeline is a pure function of the step.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from sequencer_jax.weights.model_format import failed_read_reason

_ITEMS = ('state', 'run', 'checksums')


class CheckpointError(ValueError):
  """A training checkpoint that is damaged or belongs to another run; nothing was changed."""


@jax.jit
def _checksums(state: Any) -> list[jax.Array]:
  def checksum(x: jax.Array) -> jax.Array:
    if jnp.issubdtype(x.dtype, jax.dtypes.prng_key):
      x = jax.random.key_data(x)
    bits = jax.lax.bitcast_convert_type(x, jnp.dtype(f'uint{x.dtype.itemsize * 8}'))
    return jnp.sum(bits.astype(jnp.uint32), dtype=jnp.uint32)  # Wraps around: fine for a check.
  return [checksum(x) for x in jax.tree.leaves(state)]


def checksums(state: Any) -> list[int]:
  """A wrapping uint32 sum of the bits of each array of `state`."""
  return [int(c) for c in jax.device_get(_checksums(state))]


def _damaged(directory: Any, step: int, reason: str) -> CheckpointError:
  return CheckpointError(
      f'checkpoint {step} in {directory} is damaged ({reason}). Nothing was changed; to resume '
      f'from the newest checkpoint before it, move it out of the way: '
      f'mv {directory}/{step} {directory}/{step}.damaged')


def _unreadable_arrays(directory: Any, step: int, error: Exception) -> CheckpointError:
  return _damaged(directory, step, f'its arrays cannot be read: {failed_read_reason(error)}')


class TrainCheckpoints:
  """Saves and restores train states of the run described by `record`.

  `restore` refuses a checkpoint of another run (its record differs) or a damaged one, and
  changes nothing. `read_only` opens for restoring only (no directories created, no leftovers of
  cut writes removed).
  """

  def __init__(self, workdir: str, record: dict[str, Any], keep: int, *,
               read_only: bool = False):
    self.record = record
    root = os.path.abspath(workdir)
    # A write cut short leaves a temporary directory, never a step: removed at the next start.
    writable = {'create': True, 'cleanup_tmp_directories': True}
    common = {'enable_async_checkpointing': True,
              **({'read_only': True} if read_only else writable)}
    # Each manager syncs processes at barriers named after it: with one shared name, a save to
    # best/ while a save to checkpoints/ is finishing collides ("Barrier ... is already ongoing").
    self.latest = ocp.CheckpointManager(
        os.path.join(root, 'checkpoints'), item_names=_ITEMS,
        options=ocp.CheckpointManagerOptions(
            max_to_keep=keep, multiprocessing_options=ocp.options.MultiprocessingOptions(
                barrier_sync_key_prefix='checkpoints'), **common))
    self.best = ocp.CheckpointManager(
        os.path.join(root, 'best'), item_names=_ITEMS,
        options=ocp.CheckpointManagerOptions(
            max_to_keep=1, best_fn=lambda metrics: metrics['top1'], best_mode='max',
            keep_checkpoints_without_metrics=False, multiprocessing_options=(
                ocp.options.MultiprocessingOptions(barrier_sync_key_prefix='best')), **common))

  def _args(self, state: Any) -> ocp.args.Composite:
    return ocp.args.Composite(state=ocp.args.StandardSave(state),
                              run=ocp.args.JsonSave(self.record),
                              checksums=ocp.args.JsonSave(checksums(state)))

  def save(self, step: int, state: Any) -> None:
    """Starts an asynchronous save of `state` as step `step` (a no-op if already saved)."""
    if step not in self.latest.all_steps():
      self.latest.save(step, args=self._args(state), force=True)

  def save_best(self, step: int, state: Any, top1: float) -> None:
    """Keeps `state` in best/ if `top1` beats the best kept there."""
    self.best.save(step, args=self._args(state), metrics={'top1': float(top1)}, force=True)

  def latest_step(self) -> int | None:
    return self.latest.latest_step()

  def restore(self, abstract_state: Any, step: int | None = None) -> Any:
    """The state at `step` (default: the newest), laid out as `abstract_state`'s shardings,
    after checking the run record and the checksums."""
    step = self.latest.latest_step() if step is None else step
    directory = self.latest.directory
    try:
      record = self.latest.restore(step, args=ocp.args.Composite(
          run=ocp.args.JsonRestore()))['run']
    except (FileNotFoundError, KeyError, ValueError) as e:
      raise _damaged(directory, step, f'its run record cannot be read: {e}') from None
    if record != self.record:
      diff = {k: (record.get(k), v) for k, v in self.record.items() if record.get(k) != v}
      raise CheckpointError(
          f'{directory} holds another run (checkpoint vs this config: {diff}); use a new '
          f'workdir, or point init_from at that checkpoint to start a new run from it')
    target = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), abstract_state)
    try:
      restored = self.latest.restore(step, args=ocp.args.Composite(
          state=ocp.args.StandardRestore(target), checksums=ocp.args.JsonRestore()))
    except Exception as e:  # noqa: BLE001 - tensorstore raises bare Exceptions for bad bytes.
      raise _unreadable_arrays(directory, step, e) from None
    found = checksums(restored['state'])
    if found != restored['checksums']:
      bad = sum(a != b for a, b in zip(found, restored['checksums']))
      raise _damaged(directory, step, f'{bad} of {len(found)} arrays differ from what was written')
    return restored['state']

  def wait(self) -> None:
    """Blocks until every save started has been written."""
    self.latest.wait_until_finished()
    self.best.wait_until_finished()

  def close(self) -> None:
    """Waits for the saves started, then releases the managers."""
    self.wait()
    self.latest.close()
    self.best.close()


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


def read_trained_params(workdir: str, *, step: int | None = None, best: bool = False,
                        ema: bool = False) -> tuple[int, Any]:
  """`(step, parameters)` of one training checkpoint of `workdir`, on the host.

  The newest checkpoint by default, `step` from checkpoints/, or (`best`) the one in best/;
  `ema` takes the EMA parameters instead. Only the parameters are read.
  """
  root = os.path.abspath(workdir)
  directory = os.path.join(root, 'best' if best else 'checkpoints')
  if not os.path.isdir(directory):
    raise CheckpointError(f'{root} has no {os.path.basename(directory)}/ directory: it is not '
                          f'a training workdir, or the run saved no checkpoint yet')
  manager = _read_only_manager(directory)
  try:
    steps = sorted(manager.all_steps())
    if not steps:
      raise CheckpointError(f'{directory} holds no checkpoint')
    if step is None:
      step = steps[-1]
    elif step not in steps:
      raise CheckpointError(f'{directory} has no checkpoint {step}; it has '
                            f'{", ".join(map(str, steps))}')
    tree = manager.item_metadata(step)['state']
    key = 'ema_params' if ema else 'params'
    if not tree.get(key):
      raise CheckpointError(f'checkpoint {step} in {directory} holds no EMA weights (the run '
                            f'had no ema_decay); export its raw weights without --ema')
    target = {key: jax.tree.map(lambda m: np.zeros(m.shape, m.dtype), tree[key])}
    as_numpy = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), target)
    try:
      restored = manager.restore(step, args=ocp.args.Composite(
          state=ocp.args.PyTreeRestore(item=target, restore_args=as_numpy,
                                       partial_restore=True)))
    except Exception as e:  # noqa: BLE001 - tensorstore raises bare Exceptions for bad bytes.
      raise _unreadable_arrays(directory, step, e) from None
    return step, jax.device_get(restored['state'][key])
  finally:
    manager.close()
