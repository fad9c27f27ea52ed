"""Storage faults in words: every shape a failed write takes is read as its reason, anything else
(device memory included) is not, and only the failed I/O's noise is kept off stderr."""

from __future__ import annotations

import errno
import logging
import sys
import types
import warnings

import jax
import pytest

from sequencer_jax import storage

_TENSORSTORE = ('RESOURCE_EXHAUSTED: Error writing local file "/w/checkpoints/3.orbax-checkpoint-'
                'tmp/state/d/0": Failed to write 48525 bytes to file 5: Disk quota exceeded '
                "[os_error_code='122']")
_TENSORFLOW = ('{{function_node __wrapped__WriteSummary}} /w/events.out.tfevents.1; Read-only '
               'file system\n\tFailed to flush 11 events to /w/events.out.tfevents.1')


def _caused(outer, inner):
  try:
    try:
      raise inner
    except Exception as e:
      raise outer from e
  except Exception as e:  # noqa: BLE001
    return e


@pytest.mark.parametrize('error, code', [
    (OSError(errno.ENOSPC, 'No space left on device'), errno.ENOSPC),
    (PermissionError(errno.EACCES, 'Permission denied'), errno.EACCES),
    (ValueError(_TENSORSTORE), errno.EDQUOT),
    (_caused(Exception("Error '...' occurred ASYNCHRONOUSLY."), RuntimeError(_TENSORFLOW)),
     errno.EROFS),
    (ExceptionGroup('save', [ValueError('other'), OSError(errno.EFBIG, 'File too large')]),
     errno.EFBIG),
    (jax.errors.JaxRuntimeError(_TENSORSTORE), errno.EDQUOT),
    # Device memory, and failures that are not the storage's, are none of them.
    (jax.errors.JaxRuntimeError('RESOURCE_EXHAUSTED: Out of memory while trying to allocate '
                                '1.2GiB'), None),
    (OSError(errno.ENOENT, 'No such file or directory'), None),
    (ValueError('RESOURCE_EXHAUSTED: something else'), None),
])
def test_write_failure_reads_the_reason_of_every_shape(error, code):
  assert storage.write_failure(error) == code


def test_writing_names_what_failed_and_leaves_other_errors_alone():
  with pytest.raises(storage.WriteFailure) as failed:
    with storage.writing('metrics', '/w/metrics.jsonl'):
      raise OSError(errno.ENOSPC, 'No space left on device')
  assert str(failed.value) == ('metrics could not be written to /w/metrics.jsonl: no space left '
                               'on device')
  assert (failed.value.errno, failed.value.remedy) == (errno.ENOSPC, 'free space')
  with pytest.raises(KeyError):
    with storage.writing('metrics', '/w/metrics.jsonl'):
      raise KeyError('not storage')


def test_quiet_io_failures_drops_only_the_failed_io_reports(monkeypatch):
  seen = []
  monkeypatch.setattr(sys, 'unraisablehook', seen.append)
  absl_logger = logging.getLogger('absl')
  for name in ('absl', 'asyncio'):
    monkeypatch.setattr(logging.getLogger(name), 'filters', [])
  storage.quiet_io_failures()
  storage.quiet_io_failures()  # Installs each filter once.
  orphan = types.SimpleNamespace(exc_value=RuntimeError('Event loop is closed'))
  other = types.SimpleNamespace(exc_value=RuntimeError('something else'))
  sys.unraisablehook(orphan)
  sys.unraisablehook(other)
  assert seen == [other]
  assert len(absl_logger.filters) == len(logging.getLogger('asyncio').filters) == 1

  def record(message, error=None, level=logging.ERROR):
    exc_info = (type(error), error, None) if error else None
    return logging.LogRecord('absl', level, 'orbax/x.py', 1, message, (), exc_info)
  keep = absl_logger.filters[0].filter
  assert not keep(record('Save Finalize thread failed.', OSError(errno.ENOSPC, 'no space')))
  assert not keep(record(f'_SignalingThread.run() raised an exception: {_TENSORSTORE}'))
  assert keep(record('Save Finalize thread failed.', ValueError('a bug')))
  assert keep(record('a warning about Permission denied', level=logging.WARNING))


def async_serialize_from_host():
  """An unstarted write, named as orbax's are (serialization.py, module level)."""
  async def write_fragment():
    pass
  return write_fragment()


def test_quiet_io_failures_drops_only_the_unstarted_orbax_writes_warning():
  """The warning Python gives, as the coroutine is collected, for a write orbax never started
  because another failed; any other coroutine never awaited still warns."""
  async def other():
    pass

  with warnings.catch_warnings(record=True) as caught:  # Restores the filters after.
    warnings.simplefilter('always')
    storage.quiet_io_failures()  # Its filter goes in front.
    unstarted, unawaited = async_serialize_from_host(), other()
    del unstarted, unawaited  # Collected unawaited, as at exit.
  assert [str(w.message) for w in caught] == [
      "coroutine 'test_quiet_io_failures_drops_only_the_unstarted_orbax_writes_warning.<locals>."
      "other' was never awaited"]
