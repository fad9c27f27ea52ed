"""Crash soak: SIGKILL a training run again and again, restart it, and check every restart.

  python -m tools.kill_soak --kills 20 --dir /tmp/sequencer-soak   (from the repository root)

Each round starts `main.py` (configs/demo.py, shrunk to a tiny model on a generated dataset) and
kills it with SIGKILL, either at a random moment (start-up, restore, compilation, a step) or
while a checkpoint is being written. After each kill it inspects the workdir: every complete
checkpoint must restore (checksums included) to the step it is named after; temporary
directories are partial checkpoints; a checkpoint may only disappear by the keep-newest-k
rotation. The next start must resume from the newest complete checkpoint. After the last kill
the run finishes, and its final parameters are compared with an uninterrupted run's. Prints the
counts: kills, resumes, steps lost per kill, partial and corrupt checkpoints found.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from typing import Any

import jax
import ml_collections
import numpy as np

from sequencer_jax import sharding
from sequencer_jax.data import synthetic
from sequencer_jax.errors import CheckpointError
from sequencer_jax.train import overrides
from sequencer_jax.train.checkpoints import TrainCheckpoints
from sequencer_jax.train.config import build_model, build_optimizer, run_record
from sequencer_jax.train.state import create_train_state

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEMO_CONFIG = os.path.join(REPO, 'configs', 'demo.py')
_RESUMED = re.compile(r'resumed from \S+ at step (\d+)')


def soak_overrides(dataset: str, epochs: int) -> dict[str, Any]:
  """configs/demo.py shrunk: a 2-block model on 16-pixel images, a checkpoint every step."""
  return {'data.dataset': dataset, 'data.image_size': 16, 'data.canvas_size': 16,
          'model.arch.layers': (1, 1),
          'model.arch.embed_dims': (16, 32), 'model.arch.hidden_sizes': (4, 8),
          'global_batch_size': 16, 'eval_batch_size': 16, 'optim.epochs': epochs,
          'optim.warmup_epochs': 1, 'log_every_steps': 1, 'checkpoint_every_steps': 1,
          'keep_checkpoints': 3, 'eval_every_epochs': 2}


def soak_config(changes: dict[str, Any]) -> ml_collections.ConfigDict:
  """configs/demo.py with `changes` applied."""
  config = overrides.load_config_file(DEMO_CONFIG)
  overrides.apply_overrides(config, changes)
  return config


def train_command(workdir: str, changes: dict[str, Any]) -> list[str]:
  """`main.py` on configs/demo.py with `changes`, training into `workdir`."""
  return [sys.executable, os.path.join(REPO, 'main.py'), f'--config={DEMO_CONFIG}',
          f'--workdir={workdir}'] + [f'--config.{k}={v}' for k, v in changes.items()]


def worker_environment(cache_dir: str, *, devices: int = 1,
                       python_path: tuple[str, ...] = ()) -> dict[str, str]:
  """The environment of a CPU worker process with `devices` simulated devices; compilations
  cached on disk in `cache_dir`, so that restarts skip them."""
  return dict(os.environ, JAX_PLATFORMS='cpu', TF_CPP_MIN_LOG_LEVEL='3',
              XLA_FLAGS=f'--xla_force_host_platform_device_count={devices}',
              JAX_COMPILATION_CACHE_DIR=cache_dir, JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS='0',
              JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES='0',
              PYTHONPATH=os.pathsep.join((REPO, *python_path)))


def checkpoint_entries(workdir: str) -> tuple[list[int], list[str]]:
  """(complete steps, partial entries) in <workdir>/checkpoints."""
  directory = os.path.join(workdir, 'checkpoints')
  names = os.listdir(directory) if os.path.isdir(directory) else []
  return sorted(int(n) for n in names if n.isdigit()), sorted(n for n in names if not n.isdigit())


def _metrics_size(workdir: str) -> int:
  path = os.path.join(workdir, 'metrics.jsonl')
  return os.path.getsize(path) if os.path.exists(path) else 0


def _last_logged_step(workdir: str, offset: int) -> int:
  """The last training step logged to metrics.jsonl after byte `offset` (0 if none)."""
  path = os.path.join(workdir, 'metrics.jsonl')
  if not os.path.exists(path):
    return 0
  steps = [0]
  with open(path) as f:
    f.seek(offset)
    for line in f:
      try:
        entry = json.loads(line)
      except json.JSONDecodeError:  # A line cut short by the kill.
        continue
      if entry.get('kind') == 'train':
        steps.append(entry['step'])
  return steps[-1]


class Restorer:
  """Restores checkpoints of the soak's run in this process, checking each one."""

  def __init__(self, config: ml_collections.ConfigDict, steps_per_epoch: int):
    model = build_model(config)
    optimizer, _ = build_optimizer(config, steps_per_epoch)
    self.abstract_state, _ = create_train_state(
        model, optimizer, image_size=config.data.image_size, seed=config.seed,
        mesh=sharding.make_mesh())
    self.record = run_record(config)

  def restore(self, workdir: str, step: int) -> Any:
    checkpoints = TrainCheckpoints(workdir, self.record, keep=1_000, read_only=True)
    try:
      state = checkpoints.restore(self.abstract_state, step)
    finally:
      checkpoints.close()
    if int(state.step) != step:
      raise CheckpointError(f'checkpoint {step} holds step {int(state.step)}')
    if not all(np.isfinite(x).all() for x in jax.tree.leaves(jax.device_get(state.params))):
      raise CheckpointError(f'checkpoint {step} holds non-finite parameters')
    return state


@dataclasses.dataclass
class SoakReport:
  kills_requested: int
  kills: int = 0
  kills_during_checkpoint_write: int = 0
  resumes_checked: int = 0
  wrong_resumes: list[str] = dataclasses.field(default_factory=list)
  steps_lost: list[int] = dataclasses.field(default_factory=list)
  partial_checkpoints_found: int = 0
  corrupt_checkpoints: list[str] = dataclasses.field(default_factory=list)
  lost_checkpoints: list[str] = dataclasses.field(default_factory=list)
  final_step: int = 0
  final_equals_uninterrupted: bool | None = None

  @property
  def ok(self) -> bool:
    return (self.kills == self.kills_requested and not self.wrong_resumes
            and not self.corrupt_checkpoints and not self.lost_checkpoints
            and self.final_equals_uninterrupted is not False)

  def summary(self) -> str:
    lost = self.steps_lost or [0]
    return '\n'.join([
        f'kills: {self.kills} of {self.kills_requested} requested '
        f'({self.kills_during_checkpoint_write} while a checkpoint was being written)',
        f'resumes checked: {self.resumes_checked}, from the wrong checkpoint: '
        f'{len(self.wrong_resumes)} {self.wrong_resumes or ""}',
        f'steps lost per kill: {self.steps_lost} (max {max(lost)}, mean '
        f'{np.mean(lost):.2f})',
        f'partial checkpoints found after kills: {self.partial_checkpoints_found}',
        f'corrupt checkpoints: {len(self.corrupt_checkpoints)} {self.corrupt_checkpoints or ""}',
        f'checkpoints lost (outside the keep-newest rotation): {len(self.lost_checkpoints)} '
        f'{self.lost_checkpoints or ""}',
        f'final step: {self.final_step}; final parameters equal to an uninterrupted run: '
        f'{self.final_equals_uninterrupted}',
        f'verdict: {"PASS" if self.ok else "FAIL"}'])


def _run(command: list[str], env: dict[str, str], log_path: str, *, kill_after: float | None,
         kill_at_write: int | None, workdir: str, timeout_s: float) -> tuple[bool, bool]:
  """Runs `command`; kills it after `kill_after` seconds, or when it has started writing its
  `kill_at_write`-th checkpoint. Returns (killed, a checkpoint write was in progress)."""
  with open(log_path, 'w') as log_file:
    process = subprocess.Popen(command, env=env, stdout=log_file, stderr=subprocess.STDOUT)
  start, writes_seen = time.monotonic(), set()
  try:
    while process.poll() is None:
      elapsed = time.monotonic() - start
      if elapsed > timeout_s:
        raise TimeoutError(f'{" ".join(command)} ran for over {timeout_s} s; see {log_path}')
      if kill_after is not None and elapsed >= kill_after:
        break
      if kill_at_write is not None:
        writes_seen.update(checkpoint_entries(workdir)[1])
        if len(writes_seen) >= kill_at_write:
          break
      time.sleep(0.001)
    else:
      if process.returncode != 0:
        with open(log_path) as f:
          raise RuntimeError(f'the run failed (exit {process.returncode}):\n{f.read()[-3000:]}')
      return False, False
    writing = bool(checkpoint_entries(workdir)[1])
    process.send_signal(signal.SIGKILL)
    process.wait()
    return True, writing or bool(checkpoint_entries(workdir)[1])
  finally:
    if process.poll() is None:
      process.kill()
      process.wait()


def run_soak(soak_dir: str, *, kills: int, epochs: int, train_per_class: int = 40,
             max_delay_s: float = 25.0, seed: int = 0, compare: bool = True,
             timeout_s: float = 600.0) -> SoakReport:
  """Kills and restarts a run `kills` times under `soak_dir` (which must not exist)."""
  os.makedirs(soak_dir)
  rng = random.Random(seed)
  dataset = os.path.join(soak_dir, 'data')
  synthetic.write_image_folder(dataset, train_per_class=train_per_class, val_per_class=3,
                               size=16, seed=seed)
  changes = soak_overrides(dataset, epochs)
  config = soak_config(changes)
  steps_per_epoch = train_per_class * config.model.num_classes // config.global_batch_size
  restorer = Restorer(config, steps_per_epoch)
  env = worker_environment(os.path.join(soak_dir, 'compilation_cache'))
  workdir = os.path.join(soak_dir, 'killed')
  report = SoakReport(kills_requested=kills)
  previous: list[int] = []
  expected_resume: int | None = None
  for round_index in range(kills + 1):
    last_round = round_index == kills
    mid_write = round_index % 2 == 0
    log_path = os.path.join(soak_dir, f'start_{round_index:02d}.log')
    log_offset = _metrics_size(workdir)
    killed, writing = _run(
        train_command(workdir, changes), env, log_path,
        kill_after=None if last_round or mid_write else rng.uniform(0, max_delay_s),
        kill_at_write=None if last_round or not mid_write else rng.randint(1, 3),
        workdir=workdir, timeout_s=timeout_s)
    with open(log_path) as f:
      resumed = _RESUMED.search(f.read())
    if expected_resume is not None and (resumed or not killed):
      report.resumes_checked += 1
      got = int(resumed.group(1)) if resumed else 0
      if got != expected_resume:
        report.wrong_resumes.append(f'start {round_index}: resumed at {got}, newest complete '
                                    f'checkpoint {expected_resume}')
    if not killed:
      break
    report.kills += 1
    report.kills_during_checkpoint_write += writing
    complete, partial = checkpoint_entries(workdir)
    report.partial_checkpoints_found += len(partial)
    for step in complete:
      try:
        restorer.restore(workdir, step)
      except CheckpointError as e:
        report.corrupt_checkpoints.append(f'after kill {report.kills}: {e}')
    # Only the keep-newest rotation may remove a checkpoint: what is gone must be older than
    # everything that is left.
    report.lost_checkpoints += [f'after kill {report.kills}: step {s}' for s in previous
                                if s not in complete and (not complete or s > complete[0])]
    report.steps_lost.append(max(0, _last_logged_step(workdir, log_offset)
                                 - (complete[-1] if complete else 0)))
    previous = complete
    expected_resume = complete[-1] if complete else 0
    print(f'kill {report.kills} ({"during a checkpoint write" if writing else "random moment"})'
          f': complete {complete}, partial {partial}', flush=True)
  report.final_step = checkpoint_entries(workdir)[0][-1]
  if compare:
    reference = os.path.join(soak_dir, 'uninterrupted')
    _run(train_command(reference, changes), env, os.path.join(soak_dir, 'uninterrupted.log'),
         kill_after=None, kill_at_write=None, workdir=reference, timeout_s=timeout_s)
    want = restorer.restore(reference, report.final_step).params
    got = restorer.restore(workdir, report.final_step).params
    report.final_equals_uninterrupted = all(
        np.array_equal(a, b) for a, b in zip(jax.tree.leaves(jax.device_get(want)),
                                             jax.tree.leaves(jax.device_get(got))))
  return report


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--dir', required=True, help='A new directory for the soak.')
  parser.add_argument('--kills', type=int, default=20)
  parser.add_argument('--epochs', type=int, default=8)
  parser.add_argument('--seed', type=int, default=0)
  args = parser.parse_args()
  if os.path.exists(args.dir):
    sys.exit(f'{args.dir} already exists; give a new directory')
  report = run_soak(args.dir, kills=args.kills, epochs=args.epochs, seed=args.seed)
  print(report.summary())
  sys.exit(0 if report.ok else 1)


if __name__ == '__main__':
  main()
