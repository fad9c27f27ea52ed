"""The workdir lock: held, refused while held, taken over from a dead or silent holder, lost.

Holders are written as the lock file of another run would be: another process id on this host
(alive or exited), another host with a fresh or an old lease, an unfinished file.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import socket
import subprocess
import sys
import time

import pytest

from sequencer_jax.train import workdir_lock
from sequencer_jax.train.workdir_lock import LOCK_FILE, WorkdirLock, WorkdirLockError, hold


def _holder(**changes):
  holder = {'host': socket.gethostname(), 'pid': os.getpid(),
            'process_start': workdir_lock._process_start(os.getpid()),
            'boot_id': workdir_lock._boot_id(), 'token': 'theirs',
            'started': '2026-12-01 08:00:00 UTC'}
  return {**holder, **changes}


def _write_lock(workdir, holder, age_s=0.0):
  """A lock file of `holder`, last renewed `age_s` seconds ago; returns its bytes."""
  path = workdir / LOCK_FILE
  workdir.mkdir(exist_ok=True)
  path.write_text(json.dumps(holder) if isinstance(holder, dict) else holder)
  os.utime(path, (time.time() - age_s,) * 2)
  return path.read_bytes()


def _exited_pid():
  process = subprocess.Popen([sys.executable, '-c', 'pass'])
  process.wait()
  return process.pid


def test_a_held_lock_names_its_holder_and_is_removed_on_release(tmp_path):
  lock = WorkdirLock(str(tmp_path / 'run'))  # Creates the workdir.
  written = json.loads((tmp_path / 'run' / LOCK_FILE).read_text())
  assert (written['host'], written['pid']) == (socket.gethostname(), os.getpid())
  assert written['started'].endswith(' UTC') and written['token'] == lock.holder['token']
  lock.check()  # Still this run's.
  lock.release()
  assert os.listdir(tmp_path / 'run') == []


def test_a_second_start_is_refused_in_one_line_and_changes_nothing(tmp_path):
  lock = WorkdirLock(str(tmp_path))
  before = (tmp_path / LOCK_FILE).read_bytes()
  try:
    with pytest.raises(WorkdirLockError) as refused:
      WorkdirLock(str(tmp_path))
    message = str(refused.value)
    assert '\n' not in message
    assert (f'the workdir {tmp_path} is in use by another run: process {os.getpid()} on host '
            f'{socket.gethostname()}, started {lock.holder["started"]}') in message
    assert 'if that run is gone' in message and f'delete {tmp_path / LOCK_FILE}' in message
    assert (tmp_path / LOCK_FILE).read_bytes() == before
  finally:
    lock.release()


@pytest.mark.parametrize('holder, age_s, why', [
    ({'pid': 'exited'}, 0, 'that process no longer exists'),
    ({'process_start': '1'}, 0, 'that process no longer exists'),  # Its id was reused.
    ({'boot_id': 'an earlier boot'}, 0, 'that host has restarted since'),
    ({'host': 'elsewhere'}, workdir_lock.LEASE_S + 5, 'its lease was last renewed'),
    ('', workdir_lock.LEASE_S + 5, 'its lease was last renewed'),  # Its writer died mid-write.
])
def test_a_lock_whose_holder_is_gone_is_taken_over_with_a_log_line(holder, age_s, why, tmp_path,
                                                                   caplog):
  if holder == {'pid': 'exited'}:
    holder = {'pid': _exited_pid()}
  _write_lock(tmp_path, _holder(**holder) if isinstance(holder, dict) else holder, age_s)
  with caplog.at_level(logging.WARNING, logger='sequencer_jax.train'):
    lock = WorkdirLock(str(tmp_path))
  try:
    assert json.loads((tmp_path / LOCK_FILE).read_text())['token'] == lock.holder['token']
    assert f'took over the workdir lock {tmp_path / LOCK_FILE}' in caplog.text
    assert why in caplog.text
  finally:
    lock.release()


@pytest.mark.parametrize('holder, described', [
    ({'host': 'elsewhere', 'pid': 7}, 'process 7 on host elsewhere, started 2026-12-01'),
    ('', 'a run that has not finished writing its lock'),
])
def test_a_live_lease_from_another_host_is_refused(holder, described, tmp_path):
  before = _write_lock(tmp_path, _holder(**holder) if isinstance(holder, dict) else holder,
                       age_s=workdir_lock.LEASE_S - 30)
  with pytest.raises(WorkdirLockError, match=f'in use by another run: {described}'):
    WorkdirLock(str(tmp_path))
  assert (tmp_path / LOCK_FILE).read_bytes() == before


def test_the_holder_renews_its_lease_and_stops_when_its_lock_is_taken(tmp_path, monkeypatch):
  monkeypatch.setattr(workdir_lock, 'RENEW_S', 0.05)
  lock = WorkdirLock(str(tmp_path))
  path = tmp_path / LOCK_FILE
  os.utime(path, (time.time() - 100,) * 2)
  deadline = time.monotonic() + 10
  while time.time() - path.stat().st_mtime > 50 and time.monotonic() < deadline:
    time.sleep(0.02)
  assert time.time() - path.stat().st_mtime < 50  # Renewed.
  theirs = _write_lock(tmp_path, _holder(host='elsewhere', pid=7))  # Taken over meanwhile.
  while lock.taken_by is None and time.monotonic() < deadline:
    time.sleep(0.02)
  with pytest.raises(WorkdirLockError, match='was taken over by process 7 on host elsewhere'):
    lock.check()
  lock.release()
  assert path.read_bytes() == theirs  # Another run's lock is never removed.


def test_a_deleted_lock_stops_the_holder(tmp_path, monkeypatch):
  monkeypatch.setattr(workdir_lock, 'RENEW_S', 0.05)
  lock = WorkdirLock(str(tmp_path))
  os.remove(tmp_path / LOCK_FILE)
  deadline = time.monotonic() + 10
  while lock.taken_by is None and time.monotonic() < deadline:
    time.sleep(0.02)
  with pytest.raises(WorkdirLockError, match='was deleted by someone else while this run held'):
    lock.check()
  lock.release()


@pytest.mark.parametrize('code, words', [
    (errno.EROFS, 'read-only file system. Nothing was changed; make it writable'),
    (errno.ENOSPC, 'no space left on device. Nothing was changed; free space'),
    (errno.EACCES, 'permission denied. Nothing was changed; give this user write access'),
])
def test_a_workdir_that_cannot_be_written_is_refused_in_one_line(code, words, tmp_path,
                                                                 monkeypatch):
  def refuse(*args, **kwargs):
    raise OSError(code, os.strerror(code))
  monkeypatch.setattr(workdir_lock.os, 'open', refuse)
  with pytest.raises(WorkdirLockError,
                     match=f'^the workdir {tmp_path} cannot be written: {words} and start again$'):
    WorkdirLock(str(tmp_path))


def test_hold_holds_for_the_block_on_one_process(tmp_path):
  with hold(str(tmp_path)) as lock:
    assert lock is not None and (tmp_path / LOCK_FILE).exists()
  assert not (tmp_path / LOCK_FILE).exists()
