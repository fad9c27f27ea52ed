"""What a run writes as it goes: the progress report's ETA (clu's ReportProgress) past a day, and
a failed write of metrics or TensorBoard events named as such."""

from __future__ import annotations

import builtins
import errno
import logging

import pytest
from clu import asynclib

from sequencer_jax import storage
from sequencer_jax.train.run_log import RunLog


def test_the_progress_report_gives_an_eta_of_days(tmp_path, caplog):
  run_log = RunLog(str(tmp_path))
  progress = run_log.progress(total_steps=200_000, every_steps=100)
  try:
    with caplog.at_level(logging.INFO, logger='absl'):
      for step in range(101):  # 100 steps in 90 s: 199,900 left at 1.11 steps/s, 49 h 58 min.
        progress(step, t=0.9 * step)
  finally:
    run_log.close()
  notes = [r.getMessage() for r in caplog.records if 'ETA' in r.getMessage()]
  assert len(notes) == 1 and '1.1 steps/s' in notes[0] and '(100/200000)' in notes[0], notes
  assert 'ETA: 2d1h58m' in notes[0], notes  # A %H:%M:%S clock would say 01:58:30.


def test_a_failed_metrics_write_is_named(tmp_path, monkeypatch):
  run_log = RunLog(str(tmp_path))
  try:
    def full(*args, **kwargs):
      raise OSError(errno.ENOSPC, 'No space left on device')
    monkeypatch.setattr(builtins, 'open', full)
    with pytest.raises(storage.WriteFailure, match=f'^metrics could not be written to '
                       f'{tmp_path}/metrics.jsonl: no space left on device$'):
      run_log.write(1, 'train', {'loss': 1.0})
  finally:
    monkeypatch.undo()
    run_log.close()


def test_a_failed_tensorboard_write_is_named(tmp_path, monkeypatch):
  """clu raises TensorFlow's failure at a later call, as an AsyncError caused by it."""
  run_log = RunLog(str(tmp_path))
  def failed(*args, **kwargs):
    try:
      raise RuntimeError(f'{tmp_path}/events.out.tfevents.1; Read-only file system\n\tFailed to '
                         f'flush 3 events')
    except RuntimeError as e:
      raise asynclib.AsyncError("Error '...' occurred ASYNCHRONOUSLY.") from e
  monkeypatch.setattr(run_log.writer, 'write_scalars', failed)
  with pytest.raises(storage.WriteFailure, match=f'^TensorBoard events could not be written to '
                     f'{tmp_path}: read-only file system$'):
    run_log.write(1, 'train', {'loss': 1.0})
  monkeypatch.undo()
  run_log.close()
