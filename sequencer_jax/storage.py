"""Storage faults in words: why a write failed (no space, quota, read-only, permission), and the
noise of orbax's background threads after one kept off stderr.

A failed write reaches us in three shapes: an `OSError` (Python's own writes, etils), a TensorStore
status (`RESOURCE_EXHAUSTED: Error writing local file ... [os_error_code='28']`, orbax's arrays)
and a TensorFlow status ("...; No space left on device", TensorBoard events, raised by clu as an
`AsyncError` from it). `write_failure` reads the reason from any of them, or from an exception
they caused. Device memory is never one of them: XLA's out-of-memory status names no OS error.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import re
import sys
import warnings
from collections.abc import Iterator
from typing import Any

# The write failures a user can fix, in the words the one-line messages use.
REASONS = {errno.ENOSPC: 'no space left on device', errno.EDQUOT: 'disk quota exceeded',
           errno.EROFS: 'read-only file system', errno.EACCES: 'permission denied',
           errno.EPERM: 'operation not permitted',
           errno.EFBIG: 'file too large (a file-size limit was reached)'}
# What each reason asks of the user before starting again.
REMEDIES = {errno.ENOSPC: 'free space', errno.EDQUOT: 'free space or raise the quota',
            errno.EROFS: 'make it writable', errno.EACCES: 'give this user write access',
            errno.EPERM: 'give this user write access', errno.EFBIG: 'raise the file-size limit'}
_NOISY_LOGGERS = ('absl', 'asyncio')  # Where orbax's and clu's failed writes are logged.
_TENSORSTORE_CODE = re.compile(r"os_error_code='(\d+)'")
# Python's warning, at exit, for an orbax array write that never started (`quiet_io_failures`).
_UNSTARTED_WRITE = (r"coroutine 'async_serialize_from_host\.<locals>\.write_fragment' "
                    'was never awaited')


class WriteFailure(OSError):
  """`what` could not be written to `where`; its errno is `code`, a key of `REASONS`."""

  def __init__(self, what: str, where: str, code: int):
    super().__init__(code, f'{what} could not be written to {where}: {REASONS[code]}')

  def __str__(self) -> str:
    return self.strerror

  @property
  def reason(self) -> str:
    return REASONS[self.errno]

  @property
  def remedy(self) -> str:
    return REMEDIES[self.errno]


def _own_code(error: BaseException) -> int | None:
  if isinstance(error, OSError) and error.errno in REASONS:  # WriteFailure included.
    return error.errno
  return _code_in_text(str(error))


def _code_in_text(text: str) -> int | None:
  """The errno a TensorStore or TensorFlow status names, if one of `REASONS`."""
  found = _TENSORSTORE_CODE.search(text)
  if found and int(found.group(1)) in REASONS:
    return int(found.group(1))
  lowered = text.lower()
  for code in REASONS:  # TensorFlow's statuses carry strerror's words.
    if os.strerror(code).lower() in lowered:
      return code
  return None


def write_failure(error: BaseException) -> int | None:
  """The errno (a key of `REASONS`) of the storage failure behind `error`, or None."""
  seen: set[int] = set()
  pending = [error]
  while pending:
    e = pending.pop()
    if e is None or id(e) in seen:
      continue
    seen.add(id(e))
    code = _own_code(e)
    if code is not None:
      return code
    pending += [e.__cause__, e.__context__, *getattr(e, 'exceptions', ())]
  return None


@contextlib.contextmanager
def writing(what: str, where: str) -> Iterator[None]:
  """Turns a storage failure inside the block into `WriteFailure(what, where, ...)`."""
  try:
    yield
  except WriteFailure:
    raise
  except Exception as e:  # noqa: BLE001 - orbax, TensorStore and clu raise bare Exceptions.
    code = write_failure(e)
    if code is None:
      raise
    raise WriteFailure(what, where, code) from None


def _is_orphaned_io_report(report: Any) -> bool:
  """An orbax read or write still in flight after another failed, completing into the event
  loop orbax already closed."""
  return (isinstance(report.exc_value, RuntimeError)
          and str(report.exc_value) == 'Event loop is closed')


class _DropStorageFailureRecords(logging.Filter):
  """Orbax's and clu's background threads log each failed write with its traceback, and asyncio
  each of orbax's tasks whose failure nobody awaited once the first had failed."""

  def filter(self, record: logging.LogRecord) -> bool:
    failed = record.exc_info and record.exc_info[1] is not None and write_failure(
        record.exc_info[1]) is not None
    return not (failed or (record.levelno >= logging.ERROR
                           and _code_in_text(record.getMessage()) is not None))


def quiet_io_failures() -> None:
  """Keeps a failed orbax read or write from filling stderr; the one line that names it is the
  caller's to print.

  When one array of an orbax save or restore fails, orbax closes its event loop while TensorStore
  still completes the others: each completion reports "Event loop is closed" as an unraisable
  exception, the writes not yet started are collected at exit as coroutines "never awaited" (a
  RuntimeWarning), and the failing threads log their tracebacks. Only those reports, that warning
  and, for storage failures, those log records are dropped. Installed once per process.
  """
  warnings.filterwarnings('ignore', _UNSTARTED_WRITE, RuntimeWarning)  # Added once: deduplicated.
  for name in _NOISY_LOGGERS:
    logger = logging.getLogger(name)
    if not any(isinstance(f, _DropStorageFailureRecords) for f in logger.filters):
      logger.addFilter(_DropStorageFailureRecords())
  previous = sys.unraisablehook
  if getattr(previous, 'drops_orphaned_io', False):
    return

  def hook(report: Any) -> None:
    if not _is_orphaned_io_report(report):
      previous(report)

  hook.drops_orphaned_io = True
  sys.unraisablehook = hook
