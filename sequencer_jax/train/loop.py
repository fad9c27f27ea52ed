"""The training loop: `train_and_evaluate(config, workdir)` runs a whole experiment.

The same code runs on one CPU, a GPU host, several GPU hosts and TPU pod slices: every process
runs this function with the same config; each reads its own share of the data; one jitted step
runs over a mesh of all devices. Resume order: the newest complete checkpoint in the workdir,
else `config.init_from`, else a fresh initialisation. See configs/default.py for every field.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import time
from typing import Any

import jax
import ml_collections
import numpy as np

from sequencer_jax import pretrained, sharding, storage
from sequencer_jax.data import pipeline, sources
from sequencer_jax.errors import CheckpointError, DatasetError
from sequencer_jax.models import Sequencer, abstract_params, replace_head
from sequencer_jax.train import optim, start, step as train_step
from sequencer_jax.train.checkpoints import TrainCheckpoints
from sequencer_jax.train.config import (ConfigError, build_model, build_optimizer,
                                        device_augment, run_record, schedule_config,
                                        train_augment)
from sequencer_jax.train.evaluations import Evaluations, scalars
from sequencer_jax.train.preemption import Preemption
from sequencer_jax.train.run_log import RunLog, log
from sequencer_jax.train.state import TrainState, abstract_train_state, create_train_state
from sequencer_jax.train.workdir_lock import WorkdirLockError, hold
from sequencer_jax.weights.workdir import complete_steps


class TrainingError(RuntimeError):
  """Training cannot go on; the message says why and what was kept."""


# Errors in a run's inputs (config, data, checkpoints, workdir), each with a message that says
# what is wrong: main.py prints the message alone.
INPUT_ERRORS = (TrainingError, ConfigError, CheckpointError, DatasetError, WorkdirLockError)


def init_params(config: ml_collections.ConfigDict, model: Sequencer, *,
                replace_head_ok: bool = True) -> Any | None:
  """Parameters from `config.init_from` (any model source: a model directory, a training workdir,
  a PyTorch file, a hub id), with the head replaced when num_classes differs (the new head is
  zero, as timm leaves it; refused with `replace_head_ok=False`, for evaluation); None when
  there is nothing to load."""
  if not config.init_from:
    return None
  path = config.init_from
  try:
    record, params = pretrained.resolve(path)
  except pretrained.SourceError as e:
    raise TrainingError(f'init_from: {e}') from None
  if record.arch != model.arch:
    raise TrainingError(f'init_from {path} holds another architecture than this config\'s model '
                        f'({config.model.name} with overrides {config.model.arch.to_dict()})')
  if record.num_classes != model.num_classes:
    if not replace_head_ok:
      raise TrainingError(f'init_from {path} has {record.num_classes} classes but '
                          f'model.num_classes is {model.num_classes}; set model.num_classes to '
                          f'{record.num_classes} to evaluate it')
    log.info('init_from %s: %d classes -> %d, the head starts at zero', path,
             record.num_classes, model.num_classes)
    params = replace_head(params, model.num_classes)
  return params


def _evaluate_state(evaluations: Evaluations, state: Any, params_sharding: Any,
                    config: ml_collections.ConfigDict, logger: RunLog, when: str,
                    write: bool = True) -> dict[str, Any]:
  """Runs every named evaluation on the raw parameters and, when the run keeps them, on the EMA
  parameters (logged as `eval/<name>` and `eval_ema/<name>`). Returns `config.best_eval`'s
  figures (the EMA's as `ema_top1`, ...) and, under `evals`, every evaluation's."""
  runs = [('eval', '', evaluations(state.params, params_sharding))]
  if state.ema_params is not None:
    runs.append(('eval_ema', 'EMA ', evaluations(state.ema_params, params_sharding)))
  for kind, label, results in runs:
    for name, values in results.items():
      if write:
        logger.write(int(state.step), f'{kind}/{name}', scalars(values))
      logger.info('%seval %s at %s: top-1 %.4f, top-5 %.4f over %d images', label, name, when,
                  values['top1'], values['top5'], values['images'])
  metrics = {**runs[0][2][config.best_eval], 'evals': runs[0][2]}
  if len(runs) > 1:
    ema = runs[1][2][config.best_eval]
    metrics.update({f'ema_{k}': ema[k] for k in ('top1', 'top5')})
    metrics['ema_evals'] = runs[1][2]
  return metrics


def _check_finite(pending: list[dict[str, jax.Array]], step: int,
                  checkpoints: TrainCheckpoints) -> list[dict[str, float]]:
  """Fetches the metrics of the steps since the last check; a NaN/inf loss or gradient norm
  (the gradient of a step is applied in that step, so it is checked before the step is saved)
  stops training."""
  values = jax.device_get(pending)
  for i, metrics in enumerate(values):
    for name in ('loss', 'grad_norm'):
      if not math.isfinite(float(metrics[name])):
        bad = step - len(values) + i + 1
        raise TrainingError(
            f'the {name.replace("_", " ")} is {float(metrics[name])} at step {bad}; training '
            f'stopped. The last good checkpoint (step {checkpoints.latest_step()}) is kept in '
            f'{checkpoints.latest.directory}; lower the learning rate or use float32 and resume')
  pending.clear()
  return values


def _oom_message(error: Exception, config: ml_collections.ConfigDict, mesh) -> str:
  per_device = config.global_batch_size // (mesh.size * config.grad_accum_steps)
  return (f'out of device memory with {per_device} images per device per micro-batch '
          f'(global batch {config.global_batch_size}, {mesh.size} devices, grad_accum_steps '
          f'{config.grad_accum_steps}). Raise grad_accum_steps (the same update in smaller '
          f'pieces), set model.remat=True, or lower the global batch. ({error})')


def _write_failure_message(failure: storage.WriteFailure, workdir: str) -> str:
  steps = complete_steps(os.path.join(os.path.abspath(workdir), 'checkpoints'))
  newest = (f'the newest complete checkpoint is {steps[-1]}' if steps
            else 'no checkpoint is complete yet')
  return f'{failure}; {newest}; {failure.remedy} and start again to resume'


def stop_message(error: Exception, config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh,
                 workdir: str) -> str | None:
  """The one line for a failed write or, from XLA, for device memory exhausted (a storage
  RESOURCE_EXHAUSTED is never taken for it); None for any other error."""
  code = storage.write_failure(error)
  if code is not None:
    while isinstance(error.__context__, storage.WriteFailure):  # Met again while closing.
      error = error.__context__
    if not isinstance(error, storage.WriteFailure):
      error = storage.WriteFailure('a file', os.path.abspath(workdir), code)
    return _write_failure_message(error, workdir)
  if isinstance(error, jax.errors.JaxRuntimeError) and 'RESOURCE_EXHAUSTED' in str(error):
    return _oom_message(error, config, mesh)
  return None


def _check_batch_sizes(config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh) -> None:
  if config.global_batch_size % (mesh.size * config.grad_accum_steps):
    raise TrainingError(f'global_batch_size {config.global_batch_size} must be a multiple of the '
                        f'{mesh.size} devices times grad_accum_steps {config.grad_accum_steps}')
  if config.eval_batch_size % mesh.size:
    raise TrainingError(f'eval_batch_size {config.eval_batch_size} must be a multiple of the '
                        f'{mesh.size} devices')


def _evaluate_only(config: ml_collections.ConfigDict, model: Sequencer, mesh: jax.sharding.Mesh,
                   evaluations: Evaluations, workdir: str) -> dict[str, Any]:
  """`eval_only`: the model `init_from` on every named evaluation."""
  params_sharding = sharding.param_shardings(abstract_params(model), mesh, config.fsdp)
  params = jax.device_put(init_params(config, model, replace_head_ok=False), params_sharding)
  os.makedirs(workdir, exist_ok=True)
  logger = RunLog(workdir)
  try:
    state = TrainState(step=0, params=params, opt_state=None, ema_params=None, rng=None)
    return _evaluate_state(evaluations, state, params_sharding, config, logger, 'init_from')
  finally:
    logger.close()


@dataclasses.dataclass(frozen=True)
class _Every:
  """When the periodic actions fall, given the number of steps taken (a run is whole epochs)."""

  steps_per_epoch: int
  total_steps: int
  log_steps: int
  checkpoint_steps: int
  eval_epochs: int

  def epoch_end(self, step: int) -> bool:
    return step % self.steps_per_epoch == 0

  def log(self, step: int) -> bool:
    return step % self.log_steps == 0 or self.epoch_end(step)

  def checkpoint(self, step: int) -> bool:
    return step % self.checkpoint_steps == 0 or self.epoch_end(step)

  def evaluate(self, step: int) -> bool:
    epoch = step // self.steps_per_epoch
    return self.epoch_end(step) and (epoch % self.eval_epochs == 0 or step == self.total_steps)


class _Training:
  """What the loop's body needs besides the state: the run's logs, checkpoints, evaluations and
  timing, and the metrics of the steps not yet fetched from the device."""

  def __init__(self, config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh,
               every: _Every, schedule: Any, logger: RunLog, checkpoints: TrainCheckpoints,
               evaluations: Evaluations, params_sharding: Any, step: int):
    self.config, self.mesh, self.every, self.schedule = config, mesh, every, schedule
    self.logger, self.checkpoints, self.evaluations = logger, checkpoints, evaluations
    self.params_sharding = params_sharding
    self.pending: list[dict[str, jax.Array]] = []
    self.metrics: dict[str, Any] = {}  # The last evaluation's.
    self._window = (time.perf_counter(), step)

  def log(self, step: int, batches: pipeline.TrainSteps) -> None:
    """The mean loss and gradient norm since the last line, the speed and the data counters."""
    values = _check_finite(self.pending, step, self.checkpoints)
    start, start_step = self._window
    elapsed = time.perf_counter() - start
    images_per_s = (step - start_step) * self.config.global_batch_size / elapsed
    epoch = batches.epoch
    scalars_ = {'loss': float(np.mean([v['loss'] for v in values])),
                'grad_norm': float(np.mean([v['grad_norm'] for v in values])),
                'learning_rate': float(self.schedule(step - 1)),
                'images_per_s': images_per_s,
                'images_per_s_per_device': images_per_s / self.mesh.size,
                'step_time_s': elapsed / (step - start_step),
                'epoch': step / self.every.steps_per_epoch,
                'skipped_images': float(len(epoch.skipped)),
                # Crops larger than the canvas, resized on the host, in this epoch.
                'host_resized_fraction': epoch.host_resized / max(epoch.images, 1)}
    self.logger.write(step, 'train', scalars_)
    self.logger.info('step %d/%d (epoch %.2f): loss %.4f, lr %.3g, %.1f img/s', step,
                     self.every.total_steps, scalars_['epoch'], scalars_['loss'],
                     scalars_['learning_rate'], images_per_s)
    self._window = (time.perf_counter(), step)

  def checkpoint(self, step: int, state: TrainState) -> None:
    """Starts saving `state` once its steps' losses are known to be finite."""
    _check_finite(self.pending, step, self.checkpoints)
    self.checkpoints.save(step, state)

  def evaluate(self, state: TrainState, when: str, write: bool = True) -> None:
    """Every evaluation; the state is kept in best/ when it is the best so far."""
    self.metrics = _evaluate_state(self.evaluations, state, self.params_sharding, self.config,
                                   self.logger, when, write)
    if write:  # As timm: with EMA weights, their top-1 chooses the best checkpoint.
      top1 = self.metrics.get('ema_top1', self.metrics['top1'])
      self.checkpoints.save_best(int(state.step), state, top1)


def _log_start(config: ml_collections.ConfigDict, logger: RunLog, state: TrainState,
               every: _Every, mesh: jax.sharding.Mesh, learning_rate: float) -> None:
  n_params = sum(int(np.prod(p.shape)) for p in jax.tree.leaves(state.params))
  logger.info('%s: %s parameters; %d steps per epoch, %d epochs, %d steps; %d devices, '
              '%d processes', config.model.name, f'{n_params:,}', every.steps_per_epoch,
              every.total_steps // every.steps_per_epoch, every.total_steps, mesh.size,
              jax.process_count())
  o = config.optim
  logger.info('peak learning rate %.6g: %s at global batch %d%s', learning_rate, o.lr,
              config.global_batch_size,
              f', scaled linearly from the reference batch {o.reference_batch}'
              if o.scale_lr_with_batch and config.global_batch_size != o.reference_batch
              else ' (not scaled)')


def _initial_state(config: ml_collections.ConfigDict, model: Sequencer, optimizer: Any,
                   mesh: jax.sharding.Mesh,
                   checkpoints: TrainCheckpoints) -> tuple[TrainState, Any]:
  """The state to start from and its shardings: the newest checkpoint, restored into an abstract
  target, else `config.init_from`'s parameters, else a fresh initialisation."""
  kwargs = dict(image_size=config.data.image_size, mesh=mesh, fsdp=config.fsdp,
                ema=config.ema_decay is not None)
  if checkpoints.latest_step() is None:
    return create_train_state(model, optimizer, seed=config.seed,
                              params=init_params(config, model), **kwargs)
  abstract = abstract_train_state(model, optimizer, **kwargs)
  return checkpoints.restore(abstract), jax.tree.map(lambda x: x.sharding, abstract)


def _open_training(config: ml_collections.ConfigDict) -> tuple[sources.Source, _Every]:
  """The training split, checked against the model, and the run's timing."""
  source = sources.open_source(config.data.dataset, config.data.train_split,
                               config.data.data_dir, train_split=config.data.train_split)
  if source.num_classes != config.model.num_classes:
    raise TrainingError(f'{config.data.dataset} has {source.num_classes} classes but '
                        f'model.num_classes is {config.model.num_classes}')
  steps_per_epoch = pipeline.steps_per_epoch(source, config.global_batch_size,
                                             jax.process_count())
  total_steps = optim.total_epochs(schedule_config(config)) * steps_per_epoch
  return source, _Every(steps_per_epoch, total_steps, config.log_every_steps,
                        config.checkpoint_every_steps, config.eval_every_epochs)


def _train(config: ml_collections.ConfigDict, workdir: str, model: Sequencer,
           mesh: jax.sharding.Mesh, evaluations: Evaluations,
           cleanup: contextlib.ExitStack) -> dict[str, Any]:
  """Training from the newest checkpoint (or the start) to the end; see `train_and_evaluate`."""
  source, every = _open_training(config)
  optimizer, schedule = build_optimizer(config, every.steps_per_epoch)
  checkpoints = TrainCheckpoints(workdir, run_record(config), config.keep_checkpoints,
                                 lock=cleanup.enter_context(hold(workdir)))
  cleanup.callback(checkpoints.close)
  state, shardings = _initial_state(config, model, optimizer, mesh, checkpoints)
  logger = RunLog(workdir)
  cleanup.callback(logger.close)
  first = int(state.step)
  if first:
    logger.info('resumed from %s at step %d', checkpoints.latest.directory, first)
  learning_rate = schedule_config(config).lr
  start.write_config(config, workdir, first, learning_rate)
  start.write_model_record(start.model_record(config, model, source), workdir)
  _log_start(config, logger, state, every, mesh, learning_rate)
  update = train_step.make_train_step(
      model, optimizer, augment=device_augment(config), grad_accum_steps=config.grad_accum_steps,
      ema_decay=config.ema_decay, mesh=mesh, state_shardings=shardings)
  preemption = Preemption()
  cleanup.callback(preemption.restore)
  batches = pipeline.TrainSteps(
      source, start_step=first, global_batch=config.global_batch_size,
      image_size=config.data.image_size, augment=train_augment(config), seed=config.seed,
      process_index=jax.process_index(), process_count=jax.process_count(),
      max_pixels=config.data.max_pixels)
  run = _Training(config, mesh, every, schedule, logger, checkpoints, evaluations,
                  shardings.params, first)
  progress = logger.progress(every.total_steps, config.log_every_steps)
  for step, batch in zip(range(first, every.total_steps), batches):
    state, step_metrics = update(state, sharding.global_batch(batch, mesh))
    run.pending.append(step_metrics)
    done = step + 1
    progress(done)
    if every.log(done):
      run.log(done, batches)
    preempted = preemption.reached(done)
    if preempted or every.checkpoint(done):
      run.checkpoint(done, state)
    if every.evaluate(done):
      run.evaluate(state, f'epoch {done // every.steps_per_epoch}')
    if preempted:
      logger.info('preempted: saved step %d; the next start resumes from it', done)
      return run.metrics
  if not run.metrics:  # The run was already complete: report its final parameters.
    logger.info('the run was already complete at step %d', first)
    run.evaluate(state, f'step {first}', write=False)
  return run.metrics


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Trains (or only evaluates) as `config` says; returns the last evaluation's metrics.

  The config, the data and any checkpoint to resume from are checked before anything is written
  to `workdir`.
  """
  start.check_workdir(workdir)
  start.prepare_demo_data(config, workdir)
  mesh = sharding.make_mesh()
  _check_batch_sizes(config, mesh)
  if config.eval_only and not config.init_from:
    raise ConfigError(f'eval_only needs init_from: {pretrained.SOURCES}')
  model = build_model(config)  # Deterministic unless called with train=True.
  evaluations = Evaluations(config, model, mesh)
  if config.eval_only:
    return _evaluate_only(config, model, mesh, evaluations, workdir)
  try:
    with contextlib.ExitStack() as cleanup:  # Closed on every way out, errors included.
      return _train(config, workdir, model, mesh, evaluations, cleanup)
  except (storage.WriteFailure, jax.errors.JaxRuntimeError) as e:
    message = stop_message(e, config, mesh, workdir)
    if message is None:
      raise
    raise TrainingError(message) from None
