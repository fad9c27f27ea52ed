"""Joining a multi-process run (`jax.distributed`), with every wait bounded and explained.

JAX's coordinator aborts a process whose peers do not all register within its timeout, with a
message that blames "another task" that died. `initialize` bounds that wait itself: past
`timeout_s` it prints which process waited for how many, at which address, and what to check,
then exits with `EXIT_PEERS_MISSING`. A peer that dies later is detected by the coordination
service's heartbeats, after `heartbeat_timeout_s`.
"""

from __future__ import annotations

import os
import sys
import threading

import jax

EXIT_PEERS_MISSING = 3


def _describe(value: object, variable: str) -> str:
  if value is not None:
    return str(value)
  return os.environ.get(variable, f'auto-detected ({variable} unset)')


def missing_peers_message(timeout_s: float, coordinator_address: str | None,
                          num_processes: int | None, process_id: int | None) -> str:
  """What a process says when the others did not join within `timeout_s`."""
  address = _describe(coordinator_address, 'JAX_COORDINATOR_ADDRESS')
  count = _describe(num_processes, 'JAX_NUM_PROCESSES')
  index = _describe(process_id, 'JAX_PROCESS_ID')
  return (f'jax.distributed: process {index} of {count} waited {timeout_s:g} s at the '
          f'coordinator {address}, and not every process arrived. Start the same command on '
          f'every host, each with its own process id, the same number of processes and the same '
          f'coordinator address (process 0\'s host, reachable from all); or raise the wait with '
          f'--init_timeout_s.\n')


def initialize(*, timeout_s: float = 300, heartbeat_timeout_s: int = 100,
               coordinator_address: str | None = None, num_processes: int | None = None,
               process_id: int | None = None) -> None:
  """`jax.distributed.initialize`, exiting with a clear message if the peers do not all arrive
  within `timeout_s`. Arguments left None are detected by JAX (TPU pods, SLURM, Open MPI, or the
  JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID variables)."""
  joined = threading.Event()

  def watchdog() -> None:
    if not joined.wait(timeout_s):
      sys.stderr.write(missing_peers_message(timeout_s, coordinator_address, num_processes,
                                             process_id))
      sys.stderr.flush()
      os._exit(EXIT_PEERS_MISSING)  # JAX's own abort would follow, with a misleading message.

  threading.Thread(target=watchdog, name='distributed-init-watchdog', daemon=True).start()
  # JAX's own deadline stays further out, so that the message above comes first.
  try:
    jax.distributed.initialize(coordinator_address, num_processes, process_id,
                               initialization_timeout=int(timeout_s) + 60,
                               heartbeat_timeout_seconds=heartbeat_timeout_s)
  finally:
    joined.set()  # Joined, or failed for another reason that JAX reports itself.
