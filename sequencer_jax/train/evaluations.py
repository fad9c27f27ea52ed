"""A run's named evaluations (`config.evals`): each a dataset, a split and a metric, all run at
every evaluation and by `eval_only`.

The metric is `accuracy` (top-1, top-5 and loss in the dataset's own classes, with the training
split's class ids: what a transfer run or the demo wants) or one of the ImageNet suites of
`sequencer_jax.evaluate` (imagenet, real, imagenet_v2, imagenet_sketch, imagenet_a, imagenet_r,
imagenet_c), which need an ImageNet-1k head.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import ml_collections

from sequencer_jax.data import pipeline, sources
from sequencer_jax.evaluation import runner, suites
from sequencer_jax.models import DataConfig, Sequencer
from sequencer_jax.train import sharding
from sequencer_jax.train import step as train_step
from sequencer_jax.train.config import ConfigError

ACCURACY = 'accuracy'


def evaluate(eval_step, params: Any, source: sources.Source, batch_size: int,
             data_config: DataConfig, mesh: jax.sharding.Mesh,
             max_pixels: int) -> dict[str, float]:
  """Top-1, top-5 and loss over the whole split: every image counted exactly once."""
  batches = pipeline.eval_batches(source, batch_size=batch_size, data_config=data_config,
                                  process_index=jax.process_index(),
                                  process_count=jax.process_count(), max_pixels=max_pixels)
  totals = None
  for batch in batches:
    sums = eval_step(params, sharding.global_batch(batch, mesh))
    totals = sums if totals is None else jax.tree.map(jnp.add, totals, sums)
  totals = jax.device_get(totals)
  count = int(totals['count'])
  return {'top1': float(totals['top1']) / count, 'top5': float(totals['top5']) / count,
          'loss': float(totals['loss']) / count, 'images': count,
          'skipped': len(batches.skipped)}


class Evaluations:
  """The datasets of `config.evals`, opened once (a missing one fails before training), and a
  jitted step per evaluation, compiled at the first call for the parameters' shardings."""

  def __init__(self, config: ml_collections.ConfigDict, model: Sequencer,
               mesh: jax.sharding.Mesh):
    if not config.evals:
      raise ConfigError('config.evals is empty; name at least one evaluation')
    if config.best_eval not in config.evals:
      raise ConfigError(f'config.best_eval {config.best_eval!r} is not one of config.evals '
                        f'({", ".join(config.evals)})')
    self.model, self.mesh, self.batch_size = model, mesh, config.eval_batch_size
    self.max_pixels = config.data.max_pixels
    self.data_config = DataConfig(config.data.image_size, config.data.crop_pct)
    self._targets: dict[str, sources.Source | suites.EvalSet] = {}
    self._steps: dict[str, Any] = {}
    for name, spec in config.evals.items():
      dataset = spec.dataset or config.data.dataset
      if spec.metric == ACCURACY:
        self._targets[name] = sources.open_source(dataset, spec.split, config.data.data_dir,
                                                  config.data.train_split)
        continue
      if spec.metric not in suites.SUITES:
        raise ConfigError(f'config.evals.{name}.metric {spec.metric!r}: expected {ACCURACY} or '
                          f'one of {", ".join(suites.SUITES)}')
      if model.num_classes != 1000:
        raise ConfigError(f'config.evals.{name}: the {spec.metric} metric needs an ImageNet-1k '
                          f'head, but model.num_classes is {model.num_classes}')
      self._targets[name] = suites.open_eval(name, spec.metric, dataset, spec.split,
                                             config.data.data_dir)

  def _step(self, name: str, params_sharding: Any) -> Any:
    if name not in self._steps:
      target = self._targets[name]
      self._steps[name] = (
          runner.make_predict_step(self.model, mesh=self.mesh, params_sharding=params_sharding,
                                   classes=target.classes)
          if isinstance(target, suites.EvalSet) else
          train_step.make_eval_step(self.model, mesh=self.mesh, params_sharding=params_sharding))
    return self._steps[name]

  def __call__(self, params: Any, params_sharding: Any) -> dict[str, dict[str, Any]]:
    """Every evaluation of `params` (laid out as `params_sharding`), by name."""
    results = {}
    for name, target in self._targets.items():
      step = self._step(name, params_sharding)
      if isinstance(target, suites.EvalSet):
        results[name] = runner.run_eval(step, params, target, batch_size=self.batch_size,
                                        data_config=self.data_config, mesh=self.mesh,
                                        max_pixels=self.max_pixels)
      else:
        results[name] = evaluate(step, params, target, self.batch_size, self.data_config,
                                 self.mesh, self.max_pixels)
    return results


def scalars(values: dict[str, Any], prefix: str = '') -> dict[str, float]:
  """The numbers of a (nested) result, flattened to `a/b` names; None and text left out."""
  out: dict[str, float] = {}
  for key, value in values.items():
    if isinstance(value, dict):
      out.update(scalars(value, f'{prefix}{key}/'))
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
      out[f'{prefix}{key}'] = float(value)
  return out
