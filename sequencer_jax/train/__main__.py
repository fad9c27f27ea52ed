"""The training command: `python main.py --config=configs/sequencer2d_s.py --workdir=DIR`, or
`python -m sequencer_jax.train` with the same flags.

Any config field can be overridden with `--config.field=value` (e.g. `--config.global_batch_size
=1024`). On several hosts, run the same command on every host; TPU pods, SLURM and Open MPI are
detected from their environment and `jax.distributed.initialize()` configures itself; elsewhere
set JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES and JAX_PROCESS_ID (or pass `--multihost`).
A bad config, dataset, checkpoint or workdir ends the run with a one-line message and exit
status 1. At the end it prints the final validation accuracy and where the TensorBoard logs are.
"""

from __future__ import annotations

import logging
import os
import sys

import jax
from absl import app, flags
from ml_collections import config_flags

from sequencer_jax.data import cpu_only
from sequencer_jax.train import distributed, loop, overrides

_CONFIG = config_flags.DEFINE_config_file('config', None, 'Path to a config file in configs/.',
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Directory for checkpoints, logs and metrics.')
_MULTIHOST = flags.DEFINE_bool('multihost', False, 'Force jax.distributed.initialize().')
_INIT_TIMEOUT = flags.DEFINE_float('init_timeout_s', 300, 'How long a process waits for the '
                                   'others to join a multi-process run before it gives up.')


def several_processes() -> bool:
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
      overrides.check_overrides(overrides.load_config_file(path), argv)
    except overrides.ConfigFieldError as e:
      sys.exit(f'error: {e}')
    raise


def _show_progress_notes() -> None:
  """Our INFO lines and clu's progress notes (steps/s, ETA) on the console; absl's other INFO
  lines (orbax's and clu's per-save chatter) and JAX's backend probing stay hidden."""
  logging.getLogger('sequencer_jax').setLevel(logging.INFO)
  logging.getLogger('jax').setLevel(logging.WARNING)
  progress_notes = os.path.join('clu', 'platform', '')
  absl_logger = logging.getLogger('absl')
  absl_logger.setLevel(logging.INFO)
  absl_logger.addFilter(lambda record: record.levelno >= logging.WARNING
                        or progress_notes in record.pathname)


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {" ".join(argv[1:])}')
  cpu_only.keep_tensorflow_on_the_cpu()
  if _MULTIHOST.value or several_processes():
    distributed.initialize(timeout_s=_INIT_TIMEOUT.value)
  _show_progress_notes()
  config, workdir = _CONFIG.value, _WORKDIR.value
  try:
    metrics = loop.train_and_evaluate(config, workdir)
  except loop.INPUT_ERRORS as e:
    sys.exit(f'error: {e}')
  if jax.process_index() == 0 and metrics:
    print(f'final validation top-1: {100 * metrics["top1"]:.1f}% '
          f'({metrics["images"]} images); TensorBoard logs: '
          f'tensorboard --logdir {os.path.abspath(workdir)}', flush=True)


def run() -> None:
  """The console script's entry point."""
  flags.mark_flags_as_required(['config', 'workdir'])
  app.run(main, flags_parser=parse_flags)


if __name__ == '__main__':
  run()
