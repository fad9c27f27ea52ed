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

import os
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp

from sequencer_jax import storage
from sequencer_jax.errors import CheckpointError
from sequencer_jax.train.workdir_lock import WorkdirLock
from sequencer_jax.weights.workdir import CHECKPOINT_ITEMS, damaged, unreadable_arrays


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


class TrainCheckpoints:
  """Saves and restores train states of the run described by `record`.

  `restore` refuses a checkpoint of another run (its record differs) or a damaged one, and
  changes nothing. `read_only` opens for restoring only (no directories created, no leftovers of
  cut writes removed). A write that fails for want of space, quota or permission is raised as a
  `storage.WriteFailure` naming its checkpoint. `lock`, the run's hold on the workdir, is checked
  before each save.
  """

  def __init__(self, workdir: str, record: dict[str, Any], keep: int, *,
               read_only: bool = False, lock: WorkdirLock | None = None):
    self.record, self.lock = record, lock
    self.failed = False  # Whether a write has failed.
    self._in_flight: dict[int, int] = {}  # id(manager) -> the step of its save in flight.
    root = os.path.abspath(workdir)
    if not read_only:
      storage.quiet_io_failures()
    # A write cut short leaves a temporary directory, never a step: removed at the next start.
    writable = {'create': True, 'cleanup_tmp_directories': True}
    common = {'enable_async_checkpointing': True,
              **({'read_only': True} if read_only else writable)}
    # Each manager syncs processes at barriers named after it: with one shared name, a save to
    # best/ while a save to checkpoints/ is finishing collides ("Barrier ... is already ongoing").
    self.latest = ocp.CheckpointManager(
        os.path.join(root, 'checkpoints'), item_names=CHECKPOINT_ITEMS,
        options=ocp.CheckpointManagerOptions(
            max_to_keep=keep, multiprocessing_options=ocp.options.MultiprocessingOptions(
                barrier_sync_key_prefix='checkpoints'), **common))
    self.best = ocp.CheckpointManager(
        os.path.join(root, 'best'), item_names=CHECKPOINT_ITEMS,
        options=ocp.CheckpointManagerOptions(
            max_to_keep=1, best_fn=lambda metrics: metrics['top1'], best_mode='max',
            keep_checkpoints_without_metrics=False, multiprocessing_options=(
                ocp.options.MultiprocessingOptions(barrier_sync_key_prefix='best')), **common))

  def _args(self, state: Any) -> ocp.args.Composite:
    return ocp.args.Composite(state=ocp.args.StandardSave(state),
                              run=ocp.args.JsonSave(self.record),
                              checksums=ocp.args.JsonSave(checksums(state)))

  def _check_lock(self) -> None:
    if self.lock is not None:
      self.lock.check()

  def _what(self, manager: ocp.CheckpointManager, step: int | None) -> str:
    if manager is self.best:
      return f'the best checkpoint (step {step})'
    return f'checkpoint {step}'

  def _write(self, manager: ocp.CheckpointManager, step: int | None,
             action: Callable[[], Any]) -> Any:
    """`action()`, with a storage failure raised as a `WriteFailure` naming checkpoint `step`."""
    try:
      with storage.writing(self._what(manager, step), str(manager.directory)):
        return action()
    except storage.WriteFailure:
      self.failed = True
      raise

  def _finish(self, manager: ocp.CheckpointManager) -> None:
    """Waits for `manager`'s save in flight."""
    self._write(manager, self._in_flight.pop(id(manager), None), manager.wait_until_finished)

  def save(self, step: int, state: Any) -> None:
    """Starts an asynchronous save of `state` as step `step` (a no-op if already saved)."""
    if step in self.latest.all_steps():
      return
    self._check_lock()
    self._finish(self.latest)
    self._write(self.latest, step, lambda: self.latest.save(step, args=self._args(state),
                                                            force=True))
    self._in_flight[id(self.latest)] = step

  def save_best(self, step: int, state: Any, top1: float) -> None:
    """Keeps `state` in best/ if `top1` beats the best kept there."""
    self._check_lock()
    self._finish(self.best)
    if self._write(self.best, step, lambda: self.best.save(
        step, args=self._args(state), metrics={'top1': float(top1)}, force=True)):
      self._in_flight[id(self.best)] = step

  def latest_step(self) -> int | None:
    return self.latest.latest_step()

  def restore(self, abstract_state: Any, step: int | None = None) -> Any:
    """The state at `step` (default: the newest), laid out as `abstract_state`'s shardings (a
    tree of arrays or of `jax.ShapeDtypeStruct`s with shardings), after checking the run record
    and the checksums."""
    step = self.latest.latest_step() if step is None else step
    directory = self.latest.directory
    try:
      record = self.latest.restore(step, args=ocp.args.Composite(
          run=ocp.args.JsonRestore()))['run']
    except (FileNotFoundError, KeyError, ValueError) as e:
      raise damaged(directory, step, f'its run record cannot be read: {e}') from None
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
      raise unreadable_arrays(directory, step, e) from None
    found = checksums(restored['state'])
    if found != restored['checksums']:
      bad = sum(a != b for a, b in zip(found, restored['checksums']))
      raise damaged(directory, step, f'{bad} of {len(found)} arrays differ from what was written')
    return restored['state']

  def wait(self) -> None:
    """Blocks until every save started has been written."""
    self._finish(self.latest)
    self._finish(self.best)

  def close(self) -> None:
    """Waits for the saves started, then releases the managers. Once a write has failed, the
    same fault met again on the way out is not raised a second time."""
    failed_before = self.failed
    try:
      self.wait()
    except storage.WriteFailure:
      if not failed_before:
        raise
    finally:
      for manager in (self.latest, self.best):
        try:
          manager.close()
        except Exception:  # noqa: BLE001 - orbax re-raises its threads' errors.
          if not self.failed:
            raise
