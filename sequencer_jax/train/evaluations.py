"""A run's named evaluations (`config.evals`): each a dataset, a split and a metric, all run at
every evaluation and by `eval_only`, through the evaluate command's own path
(`evaluation/runner.py`).

The metric is `accuracy` (top-1, top-5 and loss in the dataset's own classes, with the training
split's class ids: what a transfer run or the demo wants) or one of the ImageNet suites of
`sequencer_jax.evaluate` (imagenet, real, imagenet_v2, imagenet_sketch, imagenet_a, imagenet_r,
imagenet_c), which need an ImageNet-1k head.
"""

from __future__ import annotations

from typing import Any

import jax
import ml_collections

from sequencer_jax.data import sources
from sequencer_jax.evaluation import runner, suites
from sequencer_jax.models import DataConfig, Sequencer
from sequencer_jax.train.config import ConfigError


def _open(name: str, spec: ml_collections.ConfigDict, config: ml_collections.ConfigDict,
          num_classes: int) -> suites.EvalSet:
  dataset = spec.dataset or config.data.dataset
  if spec.metric == suites.ACCURACY:
    return suites.accuracy_set(name, sources.open_source(
        dataset, spec.split, config.data.data_dir, train_split=config.data.train_split))
  if spec.metric not in suites.SUITES:
    raise ConfigError(f'config.evals.{name}.metric {spec.metric!r}: expected '
                      f'{suites.ACCURACY} or one of {", ".join(suites.SUITES)}')
  if num_classes != 1000:
    raise ConfigError(f'config.evals.{name}: the {spec.metric} metric needs an ImageNet-1k '
                      f'head, but model.num_classes is {num_classes}')
  return suites.open_eval(name, spec.metric, dataset, spec.split, config.data.data_dir)


class Evaluations:
  """The sets of `config.evals`, opened once (a missing one fails before training), and one
  jitted predict step per kind of set, compiled at the first call."""

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
    self.sets = {name: _open(name, spec, config, model.num_classes)
                 for name, spec in config.evals.items()}
    self._steps: dict[tuple[Any, ...], runner.PredictStep] = {}

  def _step(self, eval_set: suites.EvalSet, params_sharding: Any) -> runner.PredictStep:
    key = (eval_set.classes, eval_set.with_loss)
    if key not in self._steps:
      self._steps[key] = runner.make_predict_step(
          self.model, mesh=self.mesh, params_sharding=params_sharding,
          classes=eval_set.classes, with_loss=eval_set.with_loss)
    return self._steps[key]

  def __call__(self, params: Any, params_sharding: Any) -> dict[str, dict[str, Any]]:
    """Every evaluation of `params` (laid out as `params_sharding`), by name."""
    return {name: runner.run_eval(self._step(eval_set, params_sharding), params, eval_set,
                                  batch_size=self.batch_size, data_config=self.data_config,
                                  mesh=self.mesh, max_pixels=self.max_pixels)
            for name, eval_set in self.sets.items()}


def scalars(values: dict[str, Any], prefix: str = '') -> dict[str, float]:
  """The numbers of a (nested) result, flattened to `a/b` names; None and text left out."""
  out: dict[str, float] = {}
  for key, value in values.items():
    if isinstance(value, dict):
      out.update(scalars(value, f'{prefix}{key}/'))
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
      out[f'{prefix}{key}'] = float(value)
  return out
