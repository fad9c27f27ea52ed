"""Storage faults, as a user meets them with `main.py`: a second run on a workdir in use, a holder
killed with SIGKILL, a disk that fills during a checkpoint, a read-only workdir; and the readers
(export, eval_only) beside a running one. Each run is the kill soak's tiny demo run (6 steps, a
checkpoint every step), compared bit for bit with the same run uninterrupted."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from typing import Any

import jax
import numpy as np
import pytest
from snapshot import snapshot

from sequencer_jax.data import synthetic
from sequencer_jax.train.workdir_lock import LOCK_FILE
from tools import kill_soak

pytestmark = pytest.mark.slow  # Every test here runs training processes.

STEPS = 6  # 2 epochs of 3 steps.
_INFO = re.compile(r'I\d{4} |I0000 .*oneDNN custom operations')  # absl's INFO lines.
_ONE_LINE = re.compile(
    r'^error: (checkpoint \d+|the best checkpoint \(step \d+\)|metrics|TensorBoard events) could '
    r'not be written to \S+: (?P<reason>[^;]+); (the newest complete checkpoint is (?P<newest>\d+)'
    r'|no checkpoint is complete yet); (?P<remedy>[^;]+) and start again to resume$')


@dataclasses.dataclass
class Run:
  """The tiny run's overrides and environment, a restorer of its checkpoints, and its
  uninterrupted workdir and final parameters."""

  changes: dict[str, Any]
  env: dict[str, str]
  restorer: kill_soak.Restorer
  reference: str
  uninterrupted: Any

  def train(self, workdir: str, check: bool = True,
            file_size_limit: int | None = None) -> subprocess.CompletedProcess:
    return _train(workdir, self.changes, self.env, check, file_size_limit)

  def start(self, workdir: str, log: Any) -> subprocess.Popen:
    with open(log, 'w') as f:
      return subprocess.Popen(kill_soak.train_command(workdir, self.changes), env=self.env,
                              stdout=f, stderr=subprocess.STDOUT)

  def equals_uninterrupted(self, workdir: str) -> bool:
    got = jax.device_get(self.restorer.restore(workdir, STEPS).params)
    return all(np.array_equal(x, y)
               for x, y in zip(jax.tree.leaves(got), jax.tree.leaves(self.uninterrupted)))


@pytest.fixture(scope='module')
def run(tmp_path_factory) -> Run:
  root = tmp_path_factory.mktemp('storage')
  dataset = str(root / 'data')
  synthetic.write_image_folder(dataset, train_per_class=8, val_per_class=3, size=16, seed=0)
  changes = kill_soak.soak_overrides(dataset, epochs=2)
  env = kill_soak.worker_environment(str(root / 'compilation_cache'))
  restorer = kill_soak.Restorer(kill_soak.soak_config(changes), steps_per_epoch=3)
  reference = str(root / 'uninterrupted')
  _train(reference, changes, env)
  return Run(changes, env, restorer, reference,
             jax.device_get(restorer.restore(reference, STEPS).params))


def _train(workdir, changes, env, check=True, file_size_limit=None):
  command = kill_soak.train_command(workdir, changes)
  if file_size_limit is not None:
    command = _with_file_size_limit(file_size_limit, command)
  done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
  if check and done.returncode:
    pytest.fail(f'the run failed (exit {done.returncode}):\n{done.stderr[-3000:]}')
  return done


def _wait_for(condition, process, what, timeout_s=180.0):
  deadline = time.monotonic() + timeout_s
  while not condition():
    assert process.poll() is None, f'the run ended before {what}'
    assert time.monotonic() < deadline, f'no {what} after {timeout_s} s'
    time.sleep(0.01)


def _error_lines(stderr: str) -> list[str]:
  """stderr's lines but the run's INFO lines (progress) and TensorFlow's start-up notes."""
  return [line for line in stderr.strip().splitlines()
          if not _INFO.match(line) and 'absl::InitializeLog' not in line]


def test_a_second_run_on_a_workdir_in_use_is_refused_and_the_first_is_undisturbed(run, tmp_path):
  workdir = str(tmp_path / 'run')
  first = run.start(workdir, tmp_path / 'first.log')
  try:
    _wait_for(lambda: kill_soak.checkpoint_entries(workdir)[0], first, 'checkpoint')
    os.kill(first.pid, signal.SIGSTOP)  # Holds still while the second one tries.
    try:
      before = snapshot(workdir)
      second = run.train(workdir, check=False)
      after = snapshot(workdir)
    finally:
      os.kill(first.pid, signal.SIGCONT)
    assert first.wait(timeout=300) == 0, (tmp_path / 'first.log').read_text()[-3000:]
  finally:
    if first.poll() is None:
      first.kill()
  lines = _error_lines(second.stderr)
  assert second.returncode == 1 and len(lines) == 1, second.stderr[-3000:]
  assert re.match(rf'error: the workdir {workdir} is in use by another run: process {first.pid} '
                  rf'on host \S+, started \d{{4}}-\d\d-\d\d \d\d:\d\d:\d\d UTC', lines[0]), lines
  assert after == before  # Nothing removed or changed, the first run's write in flight included.
  assert not os.path.exists(os.path.join(workdir, LOCK_FILE))  # Released at the first's end.
  assert run.equals_uninterrupted(workdir)


def test_a_killed_holders_lock_is_taken_over_and_the_run_resumes(run, tmp_path):
  workdir = str(tmp_path / 'run')
  first = run.start(workdir, tmp_path / 'first.log')
  try:
    _wait_for(lambda: kill_soak.checkpoint_entries(workdir)[0], first, 'checkpoint')
  finally:
    first.kill()
    first.wait()
  with open(os.path.join(workdir, LOCK_FILE)) as f:
    assert json.load(f)['pid'] == first.pid  # Left behind by the kill.
  second = run.train(workdir)
  assert (f'took over the workdir lock {workdir}/{LOCK_FILE} from process {first.pid}'
          in second.stderr), second.stderr[-3000:]
  assert 'that process no longer exists' in second.stderr
  assert re.search(r'resumed from \S+ at step [1-9]', second.stderr), second.stderr[-3000:]
  assert run.equals_uninterrupted(workdir)


@contextlib.contextmanager
def _small_filesystem(path, size: str):
  """A tmpfs of `size` at `path`; skips where mounting is not allowed."""
  path.mkdir()
  mounted = subprocess.run(['mount', '-t', 'tmpfs', '-o', f'size={size}', 'tmpfs', str(path)],
                           capture_output=True, text=True)
  if mounted.returncode:
    pytest.skip(f'cannot mount a small filesystem here: {mounted.stderr.strip()}')
  try:
    yield lambda new_size: subprocess.run(
        ['mount', '-o', f'remount,size={new_size}', str(path)], check=True)
  finally:
    subprocess.run(['umount', str(path)], check=True)


def _with_file_size_limit(limit: int, command: list[str]) -> list[str]:
  """`command` run where writes past `limit` bytes fail with EFBIG (SIGXFSZ ignored)."""
  return [sys.executable, '-c',
          'import os, resource, signal, sys; signal.signal(signal.SIGXFSZ, signal.SIG_IGN); '
          f'resource.setrlimit(resource.RLIMIT_FSIZE, ({limit}, {limit})); '
          'os.execv(sys.argv[1], sys.argv[1:])', *command]


def _check_write_failure(done, workdir, restorer, reason, remedy):
  """One line naming the failed write, exit 1, and every complete checkpoint intact."""
  lines = _error_lines(done.stderr)
  assert done.returncode == 1 and len(lines) == 1, done.stderr[-3000:]
  assert 'Traceback' not in done.stderr and 'Event loop is closed' not in done.stderr
  found = _ONE_LINE.match(lines[0])
  assert found, lines[0]
  assert (found['reason'], found['remedy']) == (reason, remedy)
  complete = kill_soak.checkpoint_entries(workdir)[0]
  assert found['newest'] == (str(complete[-1]) if complete else None), (lines[0], complete)
  assert complete[-1:] != [STEPS], 'the run finished: the fault never happened'
  for step in complete:
    restorer.restore(workdir, step)  # Checksums included.


def test_a_full_disk_during_a_checkpoint_is_one_line_and_loses_nothing(run, tmp_path):
  with _small_filesystem(tmp_path / 'small', '700k') as resize:
    workdir = str(tmp_path / 'small' / 'run')
    failed = run.train(workdir, check=False)
    _check_write_failure(failed, workdir, run.restorer, 'no space left on device', 'free space')
    resize('8m')  # Space freed.
    run.train(workdir)
    assert run.equals_uninterrupted(workdir)


def test_a_file_size_limit_during_a_checkpoint_is_one_line_and_loses_nothing(run, tmp_path):
  workdir = str(tmp_path / 'run')
  failed = run.train(workdir, check=False, file_size_limit=60_000)
  _check_write_failure(failed, workdir, run.restorer, 'file too large (a file-size limit was '
                       'reached)', 'raise the file-size limit')
  run.train(workdir)
  assert run.equals_uninterrupted(workdir)


def test_a_read_only_workdir_is_refused_before_anything_is_written(run, tmp_path):
  with _small_filesystem(tmp_path / 'ro', '1m'):
    workdir = tmp_path / 'ro' / 'run'
    workdir.mkdir()
    (workdir / 'notes.txt').write_text('kept')
    subprocess.run(['mount', '-o', 'remount,ro', str(tmp_path / 'ro')], check=True)
    done = run.train(str(workdir), check=False)
  lines = _error_lines(done.stderr)
  assert done.returncode == 1 and lines == [
      f'error: the workdir {workdir} cannot be written: read-only file system. Nothing was '
      f'changed; make it writable and start again'], done.stderr[-3000:]


def test_export_and_eval_only_read_a_held_workdir_without_its_lock(run, tmp_path):
  workdir = str(tmp_path / 'held')
  shutil.copytree(run.reference, workdir)
  with open(os.path.join(workdir, LOCK_FILE), 'w') as f:  # Held by a live process: this one.
    json.dump({'host': socket.gethostname(), 'pid': os.getpid(), 'process_start': '',
               'boot_id': '', 'token': 'live', 'started': '2026-12-01 08:00:00 UTC'}, f)
  before = snapshot(workdir)
  export = subprocess.run([sys.executable, '-m', 'sequencer_jax.export', workdir,
                           str(tmp_path / 'model')], env=run.env, capture_output=True, text=True,
                          timeout=300)
  assert export.returncode == 0, export.stderr[-3000:]
  assert snapshot(workdir) == before
  evaluated = _train(workdir, {**run.changes, 'eval_only': True, 'init_from': workdir}, run.env)
  assert 'final validation top-1' in evaluated.stdout
  after = snapshot(workdir)
  assert {k: v for k, v in after.items() if k in before} == {
      k: v for k, v in before.items() if k != 'metrics.jsonl'} | {
          'metrics.jsonl': after['metrics.jsonl']}  # Only its metrics were appended.
