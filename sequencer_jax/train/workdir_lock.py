"""The workdir lock: one training run writes into a workdir at a time.

A run holds `<workdir>/run.lock` from before its first write to its end (process 0 holds it for
a multi-process run). The file names the holder: host, process id, start time. Another start is
refused in one line that names the holder and changes nothing. A lock whose holder is gone is
taken over, with a log line:

* on the same machine (same host name and boot id), at once when the holder's process no longer
  exists (its id and its start time are compared, so a reused process id is not mistaken for it);
* from another machine, when the holder's lease ran out: the holder touches the file every
  `RENEW_S` seconds, and a lock untouched for `LEASE_S` seconds is stale.

The lock needs only an exclusive create, a read, an mtime update and a delete: no rename, no
hard link, which object storage mounted as a file system lacks. It is as exclusive as the file
system's exclusive create: atomic on local disks and NFS v3+; on object storage, a create
conditional on the object not existing (GCS's `ifGenerationMatch=0`). A lease compares the file's
mtime with this machine's clock: the hosts' clocks must agree to well within `LEASE_S` (NTP
does). See docs/design.md, "Workdir lock".
"""

from __future__ import annotations

import contextlib
import datetime
import json
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import jax
import numpy as np
from jax.experimental import multihost_utils

from sequencer_jax import storage

LOCK_FILE = 'run.lock'
RENEW_S = 30.0  # How often the holder touches the lock.
LEASE_S = 300.0  # Untouched this long, a lock held from another machine is stale.
_MESSAGE_BYTES = 2048  # The longest refusal process 0 sends the others.

log = logging.getLogger('sequencer_jax.train')


class WorkdirLockError(RuntimeError):
  """The workdir is held by another run, or this run's hold on it was taken away."""


def _boot_id() -> str:
  try:
    with open('/proc/sys/kernel/random/boot_id') as f:
      return f.read().strip()
  except OSError:
    return ''


def _process_start(pid: int) -> str:
  """The start time of process `pid` in clock ticks since boot ('' where /proc has none)."""
  try:
    with open(f'/proc/{pid}/stat') as f:
      return f.read().rsplit(')', 1)[1].split()[19]
  except (OSError, IndexError):
    return ''


def _alive(pid: int, start: str) -> bool:
  """Whether process `pid` exists and is the one that started at `start`."""
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:
    pass  # It exists, under another user.
  now = _process_start(pid)
  return not (start and now and now != start)


def _this_holder() -> dict[str, Any]:
  pid = os.getpid()
  return {'host': socket.gethostname(), 'pid': pid, 'process_start': _process_start(pid),
          'boot_id': _boot_id(), 'token': uuid.uuid4().hex,
          'started': datetime.datetime.now(datetime.timezone.utc).strftime(
              '%Y-%m-%d %H:%M:%S UTC')}


def describe(holder: dict[str, Any] | None) -> str:
  if not holder:
    return 'a run that has not finished writing its lock'
  return f'process {holder["pid"]} on host {holder["host"]}, started {holder["started"]}'


def _read(path: str) -> tuple[dict[str, Any] | None, float] | None:
  """The holder (None while its file is still being written) and the lock's mtime; None when
  there is no lock."""
  try:
    mtime = os.stat(path).st_mtime
    with open(path) as f:
      text = f.read()
  except FileNotFoundError:
    return None
  try:
    return json.loads(text), mtime
  except ValueError:
    return None, mtime


def _stale(holder: dict[str, Any] | None, mtime: float) -> str | None:
  """Why the lock's holder is gone, or None while it may still run."""
  if holder and holder['host'] == socket.gethostname() and holder['boot_id'] == _boot_id():
    if _alive(holder['pid'], holder['process_start']):
      return None
    return 'that process no longer exists'
  if holder and holder['host'] == socket.gethostname():
    return 'that host has restarted since'
  age = time.time() - mtime
  if age > LEASE_S:
    return f'its lease was last renewed {age:.0f} s ago, more than {LEASE_S:.0f} s'
  return None


def _in_use(workdir: str, path: str, holder: dict[str, Any] | None, mtime: float) -> str:
  age = max(0.0, time.time() - mtime)
  return (f'the workdir {workdir} is in use by another run: {describe(holder)} (its lock {path} '
          f'was renewed {age:.0f} s ago). Nothing was changed. Wait for that run to end, or give '
          f'this one another workdir; if that run is gone (its machine lost), start again after '
          f'{LEASE_S:.0f} s without renewal, when its lease runs out, or delete {path}')


class WorkdirLock:
  """A held workdir lock, renewed by a daemon thread until `release`."""

  def __init__(self, workdir: str):
    self.workdir = os.path.abspath(workdir)
    self.path = os.path.join(self.workdir, LOCK_FILE)
    self.holder = _this_holder()
    self.taken_by: dict[str, Any] | None = None  # Whoever took the lock away, once someone has.
    self._stop = threading.Event()
    self._acquire()
    self._renewal = threading.Thread(target=self._renew, name='workdir-lock', daemon=True)
    self._renewal.start()

  def _create(self) -> bool:
    """Writes the lock if there is none; False if there is one."""
    try:
      fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
      return False
    try:
      with os.fdopen(fd, 'w') as f:
        json.dump(self.holder, f)
    except OSError:  # A full disk: leave no empty lock behind.
      os.remove(self.path)
      raise
    return True

  def _acquire(self) -> None:
    try:
      with storage.writing('the workdir lock', self.path):
        self._take()
    except storage.WriteFailure as e:
      raise WorkdirLockError(f'the workdir {self.workdir} cannot be written: {e.reason}. Nothing '
                             f'was changed; {e.remedy} and start again') from None

  def _take(self) -> None:
    os.makedirs(self.workdir, exist_ok=True)
    for _ in range(3):  # A lock that vanishes between the create and the read: try again.
      if self._create():
        return
      found = _read(self.path)
      if found is None:
        continue
      holder, mtime = found
      why = _stale(holder, mtime)
      if why is None:
        raise WorkdirLockError(_in_use(self.workdir, self.path, holder, mtime))
      if _read(self.path) == found:  # Nobody took it over meanwhile.
        with contextlib.suppress(FileNotFoundError):
          os.remove(self.path)
        log.warning('took over the workdir lock %s from %s: %s', self.path, describe(holder),
                    why)
    raise WorkdirLockError(f'the workdir lock {self.path} kept changing hands; another start '
                           f'is taking it at the same time. Nothing was changed')

  def _renew(self) -> None:
    warned = False
    while not self._stop.wait(RENEW_S):
      found = _read(self.path)
      if found is None or found[0] is None or found[0].get('token') != self.holder['token']:
        self.taken_by = (found[0] or {}) if found else {}
        return
      try:
        os.utime(self.path)
      except OSError as e:
        if not warned:
          log.warning('the workdir lock %s could not be renewed (%s); another machine may take '
                      'it over after %.0f s', self.path, e, LEASE_S)
          warned = True

  def check(self) -> None:
    """Raises if another start has taken the lock over (this run's lease ran out)."""
    if self.taken_by is None:
      return
    how = (f'was taken over by {describe(self.taken_by)}' if self.taken_by
           else 'was deleted by someone else')
    raise WorkdirLockError(f'the workdir lock {self.path} {how} while this run held it; this run '
                           f'stopped before its next write')

  def release(self) -> None:
    """Stops renewing and removes the lock if it is still this run's."""
    self._stop.set()
    self._renewal.join()
    found = _read(self.path)
    if found and found[0] and found[0].get('token') == self.holder['token']:
      with contextlib.suppress(OSError):
        os.remove(self.path)


def _from_process_0(message: str) -> str:
  """Process 0's `message` on every process."""
  data = np.zeros(_MESSAGE_BYTES, np.uint8)
  encoded = message.encode()[:_MESSAGE_BYTES]
  data[:len(encoded)] = np.frombuffer(encoded, np.uint8)
  data = np.asarray(multihost_utils.broadcast_one_to_all(data))
  return data.tobytes().rstrip(b'\0').decode(errors='replace')


@contextlib.contextmanager
def hold(workdir: str) -> Iterator[WorkdirLock | None]:
  """Holds `workdir` for the block: process 0's lock (None on the other processes). A refusal
  is raised on every process."""
  lock, refusal = None, ''
  if jax.process_index() == 0:
    try:
      lock = WorkdirLock(workdir)
    except WorkdirLockError as e:
      refusal = str(e)
  if jax.process_count() > 1:
    refusal = _from_process_0(refusal)
  if refusal:
    raise WorkdirLockError(refusal)
  try:
    yield lock
  finally:
    if lock is not None:
      lock.release()
