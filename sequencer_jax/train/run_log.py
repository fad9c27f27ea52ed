"""What a run writes as it goes: console lines, metrics.jsonl, TensorBoard scalars, progress/ETA.

Process 0 writes; the other processes only log. Progress (steps/s, percent done, ETA in days,
hours and minutes) is clu's `ReportProgress`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from typing import Any

import jax
from clu import metric_writers, periodic_actions

from sequencer_jax import storage

log = logging.getLogger('sequencer_jax.train')


class RunLog:
  """Console lines and JSON lines from process 0; TensorBoard scalars through clu."""

  def __init__(self, workdir: str):
    self.main = jax.process_index() == 0
    self.writer = metric_writers.create_default_writer(workdir, just_logging=not self.main)
    self.workdir = os.path.abspath(workdir)
    self.jsonl = os.path.join(self.workdir, 'metrics.jsonl')

  def write(self, step: int, kind: str, scalars: dict[str, float]) -> None:
    """Writes `scalars` under `kind/` to TensorBoard and as one JSON line."""
    with self._writing_events():
      self.writer.write_scalars(step, {f'{kind}/{k}': v for k, v in scalars.items()})
    if self.main:
      with storage.writing('metrics', self.jsonl), open(self.jsonl, 'a') as f:
        f.write(json.dumps({'step': step, 'kind': kind, **scalars}) + '\n')

  def _writing_events(self) -> contextlib.AbstractContextManager[None]:
    """A failed write of TensorBoard events (clu raises it at a later call) named as such."""
    return storage.writing('TensorBoard events', self.workdir)

  def info(self, message: str, *args: Any) -> None:
    """A console line, from process 0 only."""
    if self.main:
      log.info(message, *args)

  def progress(self, total_steps: int, every_steps: int) -> periodic_actions.ReportProgress:
    """clu's progress report, to be called after every step: it logs steps/s, the percentage
    done and the ETA (from process 0), and writes steps_per_sec to TensorBoard."""
    return periodic_actions.ReportProgress(
        num_train_steps=total_steps, every_steps=every_steps, every_secs=None,
        writer=self.writer if self.main else None)

  def close(self) -> None:
    with self._writing_events():
      self.writer.flush()
      self.writer.close()
