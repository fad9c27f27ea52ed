"""Train or evaluate Sequencer: `python main.py --config=configs/sequencer2d_s.py --workdir=DIR`.

Any config field can be overridden with `--config.field=value` (e.g. `--config.global_batch_size
=1024`). On several hosts, run the same command on every host; TPU pods, SLURM and Open MPI are
detected from their environment and `jax.distributed.initialize()` configures itself; elsewhere
set JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES and JAX_PROCESS_ID (or pass `--multihost`).
A bad config, dataset or checkpoint ends the run with a one-line message and exit status 1.
"""

from __future__ import annotations

import logging
import os
import sys

import tensorflow as tf
from absl import app, flags
from ml_collections import config_flags

from sequencer_jax import config_fields, distributed, train

_CONFIG = config_flags.DEFINE_config_file('config', None, 'Path to a config file in configs/.',
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Directory for checkpoints, logs and metrics.')
_MULTIHOST = flags.DEFINE_bool('multihost', False, 'Force jax.distributed.initialize().')
_INIT_TIMEOUT = flags.DEFINE_float('init_timeout_s', 300, 'How long a process waits for the '
                                   'others to join a multi-process run before it gives up.')
flags.mark_flags_as_required(['config', 'workdir'])


def _several_processes() -> bool:
  """Whether this process is one of several: a TPU pod slice, SLURM, Open MPI or JAX's variables."""
  env = os.environ
  return (len(env.get('TPU_WORKER_HOSTNAMES', '').split(',')) > 1
          or int(env.get('SLURM_NTASKS', '1')) > 1
          or int(env.get('OMPI_COMM_WORLD_SIZE', '1')) > 1
          or 'JAX_COORDINATOR_ADDRESS' in env)


def _config_path(argv: list[str]) -> str | None:
  """The file of `--config=FILE` or `--config=FILE:ARG`."""
  for i, arg in enumerate(argv):
    if arg.startswith('--config='):
      return arg.split('=', 1)[1].split(':', 1)[0]
    if arg == '--config' and i + 1 < len(argv):
      return argv[i + 1].split(':', 1)[0]
  return None


def parse_flags(argv: list[str]) -> list[str]:
  """absl's parsing, with an override of a field the config lacks named and explained."""
  try:
    return app.parse_flags_with_usage(argv)
  except AttributeError:  # ml_collections' bare "no such field".
    path = _config_path(argv)
    if path is None:
      raise
    try:
      config_fields.check_overrides(config_fields.load_config_file(path), argv)
    except config_fields.ConfigFieldError as e:
      sys.exit(f'error: {e}')
    raise


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {" ".join(argv[1:])}')
  # TensorFlow only reads and augments images; keep it off the accelerators.
  tf.config.set_visible_devices([], 'GPU')
  tf.config.set_visible_devices([], 'TPU')
  if _MULTIHOST.value or _several_processes():
    distributed.initialize(timeout_s=_INIT_TIMEOUT.value)
  logging.getLogger('sequencer_jax').setLevel(logging.INFO)
  logging.getLogger('absl').setLevel(logging.WARNING)  # Orbax's and clu's per-save chatter.
  try:
    train.train_and_evaluate(_CONFIG.value, _WORKDIR.value)
  except train.INPUT_ERRORS as e:
    sys.exit(f'error: {e}')


if __name__ == '__main__':
  app.run(main, flags_parser=parse_flags)
