"""Preemption: SIGTERM asks a run to save and stop at the next step boundary, on every process."""

from __future__ import annotations

import signal

import jax
from jax.experimental import multihost_utils


class Preemption:
  """Whether SIGTERM has asked for a stop, checked at each step boundary.

  One process: a Python handler sets a flag. Several: JAX's own SIGTERM notifier (installed by
  `jax.distributed.initialize`) tells every process, which all stop at the same step; a Python
  handler would replace it, so none is installed.
  """

  def __init__(self):
    self.requested = False
    self._several = jax.process_count() > 1
    if not self._several:
      self._previous = signal.signal(signal.SIGTERM, self._handle)

  def _handle(self, signum, frame):
    del signum, frame
    self.requested = True

  def reached(self, step: int) -> bool:
    if self._several:
      return multihost_utils.reached_preemption_sync_point(step)
    return self.requested

  def restore(self) -> None:
    if not self._several:
      signal.signal(signal.SIGTERM, self._previous)
