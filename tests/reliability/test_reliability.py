"""Crash safety and a real multi-process run: SIGKILL at random moments and during checkpoint
writes (a short version of `python -m tools.kill_soak`); two processes joined with
jax.distributed on 127.0.0.1, preempted by SIGTERM, resumed, and compared with one process of
four devices; two processes refused on a workdir in use; a peer that never arrives. Every wait
has a deadline."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest
from tiny_run import restore_params, tiny_config, write_dataset

from sequencer_jax.train import distributed, workdir_lock
from tools import kill_soak

pytestmark = pytest.mark.slow  # Every test here runs processes and waits for them.

TESTS = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # The workers and helpers.


def test_sigkill_at_random_moments_never_loses_or_picks_a_partial_checkpoint(tmp_path):
  """Two kills (one during a checkpoint write, one at a random moment), then the run finishes.
  The comparison with an uninterrupted run is left to the full soak; exact resume is tested with
  SIGTERM in test_train.py."""
  report = kill_soak.run_soak(str(tmp_path / 'soak'), kills=2, epochs=3, train_per_class=8,
                              max_delay_s=12.0, seed=0, compare=False, timeout_s=300)
  print(report.summary())
  assert report.ok, report.summary()
  assert report.kills == 2 and report.kills_during_checkpoint_write >= 1, report.summary()
  assert report.partial_checkpoints_found >= 1, report.summary()  # A write was really cut.
  assert report.resumes_checked >= 1, report.summary()
  assert report.final_step == 9, report.summary()
  assert max(report.steps_lost) <= 2, report.summary()


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


@pytest.fixture(scope='module')
def cache_dir(tmp_path_factory):
  """A compilation cache on disk, shared by the worker processes: restarts skip compiling."""
  return str(tmp_path_factory.mktemp('compilation_cache'))


def _environment(devices: int, cache_dir: str) -> dict[str, str]:
  return kill_soak.worker_environment(cache_dir, devices=devices, python_path=(TESTS,))


def _run_all(commands: list[list[str]], env: dict[str, str], logs: list[str],
             timeout_s: float = 300) -> None:
  """Runs the commands together; a failure or the deadline stops them all, with their logs."""
  processes = []
  for command, log in zip(commands, logs):
    with open(log, 'w') as f:
      processes.append(subprocess.Popen(command, env=env, stdout=f, stderr=subprocess.STDOUT))
  deadline = time.monotonic() + timeout_s
  try:
    while any(p.poll() is None for p in processes):
      failed = any(p.returncode not in (None, 0) for p in processes)
      if failed or time.monotonic() > deadline:
        break
      time.sleep(0.1)
  finally:
    for p in processes:
      if p.poll() is None:
        p.kill()
        p.wait()
  codes = [p.returncode for p in processes]
  if codes != [0] * len(processes):
    tails = '\n'.join(f'--- {log} (exit {code}):\n{open(log).read()[-2500:]}'
                      for log, code in zip(logs, codes))
    pytest.fail(f'exit codes {codes} (timeout {timeout_s} s)\n{tails}')


def _two_processes(tmp_path, cache_dir, dataset, workdir, phase, sigterm_after=None):
  port = str(_free_port())
  commands = [[sys.executable, os.path.join(TESTS, 'multiprocess_worker.py'),
               str(tmp_path / f'{phase}_{i}.json'), dataset, workdir, str(i), port]
              + ([str(sigterm_after)] if sigterm_after is not None else []) for i in range(2)]
  _run_all(commands, _environment(2, cache_dir), [str(tmp_path / f'{phase}_{i}.log') for i in range(2)])
  return [json.load(open(tmp_path / f'{phase}_{i}.json')) for i in range(2)]


def test_two_processes_equal_one_process_with_four_devices(tmp_path, cache_dir):
  """2 processes x 2 CPU devices, each reading its own share: SIGTERM to process 1 after step 2
  stops both at the same step with a checkpoint; both resume from it, finish and evaluate. The
  final parameters equal those of 1 process x 4 devices fed the same global batches (1e-5
  relative: the cross-process sums are ordered differently); the top-1 is the same."""
  dataset = write_dataset(str(tmp_path / 'patterns'))
  workdir = str(tmp_path / 'two')
  _two_processes(tmp_path, cache_dir, dataset, workdir, 'preempted', sigterm_after=2)
  stopped = sorted(int(s) for s in os.listdir(os.path.join(workdir, 'checkpoints')))
  assert 2 <= stopped[-1] < 6, f'the preemption did not stop the run early: {stopped}'
  results = _two_processes(tmp_path, cache_dir, dataset, workdir, 'resumed')
  assert [r['process_count'] for r in results] == [2, 2]
  log = open(tmp_path / 'resumed_0.log').read()
  assert f'at step {stopped[-1]}' in log, log[-2000:]

  reference = str(tmp_path / 'one')
  _run_all([[sys.executable, os.path.join(TESTS, 'multiprocess_worker.py'),
             str(tmp_path / 'reference.json'), dataset, reference, 'reference']],
           _environment(4, cache_dir), [str(tmp_path / 'reference.log')])
  want = json.load(open(tmp_path / 'reference.json'))['metrics']
  for got in results:
    assert got['metrics']['images'] == want['images'] == 18
    assert got['metrics']['top1'] == want['top1']
    np.testing.assert_allclose(got['metrics']['loss'], want['loss'], rtol=1e-5)
  config = tiny_config(dataset)
  for a, b in zip(jax.tree.leaves(restore_params(reference, config, 6)),
                  jax.tree.leaves(restore_params(workdir, config, 6))):
    np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-6)


def test_two_processes_on_a_workdir_in_use_are_both_refused(tmp_path, cache_dir):
  """Process 0 finds the lock of a live run (this one) and refuses; process 1 gets its line."""
  dataset = write_dataset(str(tmp_path / 'patterns'))
  workdir = tmp_path / 'held'
  workdir.mkdir()
  holder = {'host': socket.gethostname(), 'pid': os.getpid(), 'process_start': '',
            'boot_id': workdir_lock._boot_id(), 'token': 'live',
            'started': '2026-12-01 08:00:00 UTC'}
  (workdir / workdir_lock.LOCK_FILE).write_text(json.dumps(holder))
  results = _two_processes(tmp_path, cache_dir, dataset, str(workdir), 'refused')
  want = f'the workdir {workdir} is in use by another run: process {os.getpid()} on host'
  assert [r['error'].startswith(want) for r in results] == [True, True], results
  assert os.listdir(workdir) == [workdir_lock.LOCK_FILE]


def test_a_peer_that_never_arrives_ends_with_a_clear_message(cache_dir):
  code = ('import sys; from sequencer_jax.train import distributed\n'
          f'distributed.initialize(timeout_s=3, coordinator_address="127.0.0.1:{_free_port()}", '
          'num_processes=2, process_id=0)\n'
          'print("joined")\n')
  start = time.monotonic()
  result = subprocess.run([sys.executable, '-c', code], env=_environment(1, cache_dir),
                          capture_output=True,
                          text=True, timeout=120, check=False)
  assert result.returncode == distributed.EXIT_PEERS_MISSING, result.stderr[-2000:]
  assert 'joined' not in result.stdout
  assert ('process 0 of 2 waited 3 s at the coordinator 127.0.0.1:' in result.stderr
          and 'not every process arrived' in result.stderr), result.stderr[-2000:]
  assert time.monotonic() - start < 60
