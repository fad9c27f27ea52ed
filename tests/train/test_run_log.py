"""What a run writes as it goes: the progress report's ETA (clu's ReportProgress) past a day."""

from __future__ import annotations

import logging

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
