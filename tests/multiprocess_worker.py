"""One process of tests/reliability/test_reliability.py: trains the tiny run, writes its metrics
(or the one-line error it was refused with).

  python multiprocess_worker.py OUT DATASET WORKDIR PROCESS_ID PORT [SIGTERM_AFTER]
      one of two processes joined with jax.distributed on 127.0.0.1:PORT; process 1 sends itself
      SIGTERM after step SIGTERM_AFTER, and both slow down afterwards so that JAX's preemption
      notice reaches them before the run ends.
  python multiprocess_worker.py OUT DATASET WORKDIR reference
      a single process fed the same global batches: each one is process 0's share followed by
      process 1's, as the two processes' arrays are laid out over their 4 devices.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import time

import numpy as np

from sequencer_jax.train import distributed


class _SharesOfTwo:
  """The batches of two processes' shares, concatenated: the 2-process run's global batches."""

  def __init__(self, parts):
    self.parts = parts
    self.skipped: list[str] = []

  @property
  def images(self) -> int:
    return sum(p.images for p in self.parts)

  @property
  def host_resized(self) -> int:
    return sum(p.host_resized for p in self.parts)

  def __iter__(self):
    for halves in zip(*self.parts):
      yield {k: np.concatenate([h[k] for h in halves]) for k in halves[0]}


def _slow_after_sigterm(train_step, process_id: int, sigterm_after: int) -> None:
  make = train_step.make_train_step

  def make_train_step(*args, **kwargs):
    update = make(*args, **kwargs)

    def step(state, batch):
      state, metrics = update(state, batch)
      done = int(state.step)
      if done == sigterm_after and process_id == 1:
        os.kill(os.getpid(), signal.SIGTERM)
      if done >= sigterm_after:
        time.sleep(1.0)
      return state, metrics
    return step

  train_step.make_train_step = make_train_step


def main(argv: list[str]) -> None:
  out, dataset, workdir, role = argv[1:5]
  logging.basicConfig(level=logging.WARNING, format='%(asctime)s %(name)s %(message)s', force=True)
  logging.getLogger('sequencer_jax').setLevel(logging.INFO)
  if role != 'reference':
    distributed.initialize(timeout_s=60, heartbeat_timeout_s=30,
                           coordinator_address=f'127.0.0.1:{argv[5]}', num_processes=2,
                           process_id=int(role))
  import jax
  jax.config.update('jax_default_matmul_precision', 'highest')
  from tiny_run import tiny_config

  from sequencer_jax.data import pipeline
  from sequencer_jax.train import loop
  from sequencer_jax.train import step as train_step

  assert jax.device_count() == 4, jax.devices()
  if role == 'reference':
    real = pipeline.train_batches
    pipeline.train_batches = lambda source, **kw: _SharesOfTwo(
        [real(source, **{**kw, 'process_index': i, 'process_count': 2}) for i in range(2)])
  elif len(argv) > 6:
    _slow_after_sigterm(train_step, int(role), int(argv[6]))
  try:
    result = {'metrics': loop.train_and_evaluate(tiny_config(dataset), workdir)}
  except loop.INPUT_ERRORS as e:  # Refused: the message each process stopped with.
    result = {'error': str(e)}
  with open(out, 'w') as f:
    json.dump({**result, 'process_count': jax.process_count()}, f)


if __name__ == '__main__':
  main(sys.argv)
