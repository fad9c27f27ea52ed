"""The training loop: `train_and_evaluate(config, workdir)` runs a whole experiment.

The same code runs on one CPU, a GPU host, several GPU hosts and TPU pod slices: every process
runs this function with the same config; each reads its own share of the data; one jitted step
runs over a mesh of all devices. Resume order: the newest complete checkpoint in the workdir,
else `config.init_from`, else a fresh initialisation. See configs/default.py for every field.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import time
from typing import Any

import jax
import ml_collections
import numpy as np
from jax.experimental import multihost_utils

from sequencer_jax import pretrained
from sequencer_jax.data import pipeline, sources
from sequencer_jax.data.folder import DatasetError
from sequencer_jax.labels import readable_names
from sequencer_jax.models import DataConfig, Sequencer, abstract_params, replace_head
from sequencer_jax.train import optim, sharding, step as train_step
from sequencer_jax.train.checkpoints import CheckpointError, TrainCheckpoints
from sequencer_jax.train.config import (ConfigError, build_model, build_optimizer,
                                        device_augment, run_record, schedule_config,
                                        train_augment)
from sequencer_jax.train.evaluations import Evaluations, scalars
from sequencer_jax.train.run_log import RunLog, log
from sequencer_jax.train.state import TrainState, create_train_state
from sequencer_jax.weights import ModelRecord


class TrainingError(RuntimeError):
  """Training cannot go on; the message says why and what was kept."""


# Errors in a run's inputs (config, data, checkpoints, workdir), each with a message that says
# what is wrong: main.py prints the message alone.
INPUT_ERRORS = (TrainingError, ConfigError, CheckpointError, DatasetError)


def check_workdir(workdir: str) -> None:
  """Refuses a workdir that exists but is not a directory."""
  if os.path.exists(workdir) and not os.path.isdir(workdir):
    raise ConfigError(f'the workdir {workdir} is a file, not a directory; give a directory')


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


def model_record(config: ml_collections.ConfigDict, model: Sequencer,
                 source: sources.Source) -> ModelRecord:
  """What the run's weights are: the architecture, the training split's class names and the
  evaluation transform of `config.data`."""
  return ModelRecord(model.arch, model.num_classes, readable_names(source.class_names),
                     DataConfig(config.data.image_size, config.data.crop_pct))


def _write_model_record(record: ModelRecord, workdir: str) -> None:
  """`<workdir>/model.json`, which export and `load_pretrained(workdir)` read."""
  if jax.process_index() == 0:
    text = json.dumps(record.to_json(), indent=2)
    path = os.path.join(workdir, pretrained.MODEL_JSON)
    tmp = f'{path}.tmp'
    with open(tmp, 'w') as f:
      f.write(text)
    os.replace(tmp, path)


class _Preemption:
  """SIGTERM asks for a save and a clean exit at the next step boundary, on every process.

  One process: a Python handler sets a flag. Several: JAX's own SIGTERM notifier (installed by
  `jax.distributed.initialize`) tells every process, which all stop at the same step; a Python
  handler would replace it, so none is installed.
  """

  def __init__(self):
    self.requested = False
    self._several = jax.process_count() > 1
    if not self._several:
      self._previous = signal.signal(signal.SIGTERM, self._handle)

  def _handle(self, signum, frame):
    del signum, frame
    self.requested = True

  def reached(self, step: int) -> bool:
    if self._several:
      return multihost_utils.reached_preemption_sync_point(step)
    return self.requested

  def restore(self) -> None:
    if not self._several:
      signal.signal(signal.SIGTERM, self._previous)


def _write_config(config: ml_collections.ConfigDict, workdir: str, step: int,
                  learning_rate: float) -> None:
  """Saves the resolved config, with the peak learning rate actually used (after any batch
  scaling) as `resolved.learning_rate`; a resumed run with a changed config gets a second file."""
  if jax.process_index() != 0:
    return
  resolved = json.loads(config.to_json_best_effort())
  resolved['resolved'] = {'learning_rate': learning_rate}
  text = json.dumps(resolved, indent=2, sort_keys=True)
  path = os.path.join(workdir, 'config.json')
  if os.path.exists(path):
    with open(path) as f:
      if f.read() == text:
        return
    path = os.path.join(workdir, f'config.resumed_at_step_{step}.json')
  with open(path, 'w') as f:
    f.write(text)


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


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, float]:
  """Trains (or only evaluates) as `config` says; returns the last evaluation's metrics.

  The config, the data and any checkpoint to resume from are checked before anything is written
  to `workdir`.
  """
  check_workdir(workdir)
  model = build_model(config)
  mesh = sharding.make_mesh()
  index, count = jax.process_index(), jax.process_count()
  _check_batch_sizes(config, mesh)
  if config.eval_only and not config.init_from:
    raise ConfigError(f'eval_only needs init_from: {pretrained.SOURCES}')
  eval_model = build_model(config, train=False)
  evaluations = Evaluations(config, eval_model, mesh)
  if config.eval_only:
    return _evaluate_only(config, eval_model, mesh, evaluations, workdir)

  augment, step_augment = train_augment(config), device_augment(config)  # Host, then the step.
  train_source = sources.open_source(config.data.dataset, config.data.train_split,
                                     config.data.data_dir, config.data.train_split)
  if train_source.num_classes != config.model.num_classes:
    raise TrainingError(f'{config.data.dataset} has {train_source.num_classes} classes but '
                        f'model.num_classes is {config.model.num_classes}')
  steps_per_epoch = pipeline.steps_per_epoch(train_source, config.global_batch_size, count)
  schedule_cfg = schedule_config(config)
  total_steps = optim.total_epochs(schedule_cfg) * steps_per_epoch
  optimizer, schedule = build_optimizer(config, steps_per_epoch)
  checkpoints = TrainCheckpoints(workdir, run_record(config), config.keep_checkpoints)
  with contextlib.ExitStack() as cleanup:  # Closed on every way out, errors included.
    cleanup.callback(checkpoints.close)
    resume = checkpoints.latest_step() is not None
    state, state_shardings = create_train_state(
        model, optimizer, image_size=config.data.image_size, seed=config.seed, mesh=mesh,
        fsdp=config.fsdp, ema=config.ema_decay is not None,
        params=None if resume else init_params(config, model))
    if resume:
      state = checkpoints.restore(state)
    logger = RunLog(workdir)
    cleanup.callback(logger.close)
    if resume:
      logger.info('resumed from %s at step %d', checkpoints.latest.directory, int(state.step))
    step = int(state.step)
    _write_config(config, workdir, step, schedule_cfg.lr)
    _write_model_record(model_record(config, model, train_source), workdir)
    n_params = sum(int(np.prod(p.shape)) for p in jax.tree.leaves(state.params))
    logger.info('%s: %s parameters; %d steps per epoch, %d epochs, %d steps; %d devices, '
                '%d processes', config.model.name, f'{n_params:,}', steps_per_epoch,
                optim.total_epochs(schedule_cfg), total_steps, mesh.size, count)
    o = config.optim
    logger.info('peak learning rate %.6g: %s at global batch %d%s', schedule_cfg.lr, o.lr,
                config.global_batch_size,
                f', scaled linearly from the reference batch {o.reference_batch}'
                if o.scale_lr_with_batch and config.global_batch_size != o.reference_batch
                else ' (not scaled)')
    update = train_step.make_train_step(
        model, optimizer, augment=step_augment,
        grad_accum_steps=config.grad_accum_steps, ema_decay=config.ema_decay, mesh=mesh,
        state_shardings=state_shardings)
    preemption = _Preemption()
    cleanup.callback(preemption.restore)
    progress = logger.progress(total_steps, config.log_every_steps)
    pending: list[dict[str, jax.Array]] = []
    metrics: dict[str, float] = {}
    window_start, window_step = time.perf_counter(), step
    try:
      while step < total_steps:
        epoch, start = divmod(step, steps_per_epoch)
        batches = pipeline.train_batches(
            train_source, global_batch=config.global_batch_size,
            image_size=config.data.image_size, augment=augment, seed=config.seed, epoch=epoch,
            start_step=start, process_index=index, process_count=count,
            max_pixels=config.data.max_pixels)
        for batch in batches:
          state, step_metrics = update(state, sharding.global_batch(batch, mesh))
          step += 1
          pending.append(step_metrics)
          progress(step)
          end_of_epoch = step % steps_per_epoch == 0
          if step % config.log_every_steps == 0 or end_of_epoch or step == total_steps:
            values = _check_finite(pending, step, checkpoints)
            elapsed = time.perf_counter() - window_start
            images_per_s = (step - window_step) * config.global_batch_size / elapsed
            scalars = {'loss': float(np.mean([v['loss'] for v in values])),
                       'grad_norm': float(np.mean([v['grad_norm'] for v in values])),
                       'learning_rate': float(schedule(step - 1)),
                       'images_per_s': images_per_s,
                       'images_per_s_per_device': images_per_s / mesh.size,
                       'step_time_s': elapsed / (step - window_step),
                       'epoch': step / steps_per_epoch,
                       'skipped_images': float(len(batches.skipped)),
                       # Crops larger than the canvas, resized on the host, in this epoch.
                       'host_resized_fraction': batches.host_resized / max(batches.images, 1)}
            logger.write(step, 'train', scalars)
            logger.info('step %d/%d (epoch %.2f): loss %.4f, lr %.3g, %.1f img/s', step,
                        total_steps, scalars['epoch'], scalars['loss'], scalars['learning_rate'],
                        images_per_s)
            window_start, window_step = time.perf_counter(), step
          stop = preemption.reached(step)
          if stop or end_of_epoch or step % config.checkpoint_every_steps == 0:
            _check_finite(pending, step, checkpoints)
            checkpoints.save(step, state)
          if end_of_epoch and ((step // steps_per_epoch) % config.eval_every_epochs == 0
                               or step == total_steps):
            metrics = _evaluate_state(evaluations, state, state_shardings.params, config,
                                      logger, f'epoch {step // steps_per_epoch}')
            # As timm: with EMA weights, their top-1 chooses the best checkpoint.
            checkpoints.save_best(step, state, metrics.get('ema_top1', metrics['top1']))
          if stop:
            logger.info('preempted: saved step %d; the next start resumes from it', step)
            return metrics
      if not metrics:  # The run was already complete: report its final parameters.
        logger.info('the run was already complete at step %d', step)
        metrics = _evaluate_state(evaluations, state, state_shardings.params, config, logger,
                                  f'step {step}', write=False)
    except jax.errors.JaxRuntimeError as e:  # Raised where a result is first awaited.
      if 'RESOURCE_EXHAUSTED' in str(e):
        raise TrainingError(_oom_message(e, config, mesh)) from None
      raise
    return metrics

