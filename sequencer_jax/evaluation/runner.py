"""Running a model over an evaluation set: one jitted predict step over the mesh, the metric on
the host. Every evaluation uses it: the evaluate command's suites and training's evaluations."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from sequencer_jax import sharding
from sequencer_jax.data import eval_crop, image_header, pipeline
from sequencer_jax.evaluation import attacks
from sequencer_jax.evaluation.attacks import Attack
from sequencer_jax.evaluation.metrics import Metric
from sequencer_jax.evaluation.suites import EvalSet
from sequencer_jax.models import DataConfig

PredictStep = Callable[[Any, dict], dict]


def make_predict_step(model: nn.Module, *, mesh: Mesh, params_sharding: Any,
                      classes: tuple[int, ...] | None = None, with_loss: bool = False,
                      attack: Attack | None = None,
                      data_config: DataConfig = DataConfig(),
                      inputs: Callable[[dict], jax.Array] | None = None) -> PredictStep:
  """The jitted `(params, batch) -> {'top5', 'label', 'index', 'mask'}`, replicated on every
  process: each image's five best classes (within `classes` when given), best first, and with
  `with_loss` its cross-entropy against its label (`loss`, float32).

  `inputs(batch)` gives the model's input images; by default the batch is `eval_batches`'s and
  its crops are resized and normalised with `data_config`'s mean and std
  (`eval_crop.model_input`). With `attack`, each image is first perturbed against its label on
  the full logits, in [0, 1] pixels: the normalised images are taken back to [0, 1], attacked
  through the normalisation, and normalised again."""
  subset = None if classes is None else jnp.asarray(classes)
  mean, std = jnp.asarray(data_config.mean), jnp.asarray(data_config.std)
  if inputs is None:
    inputs = functools.partial(eval_crop.model_input, config=data_config)

  def summed_cross_entropy(params: Any, pixels: jax.Array, labels: jax.Array) -> jax.Array:
    logits = model.apply({'params': params}, (pixels - mean) / std).astype(jnp.float32)
    log_probs = jax.nn.log_softmax(logits)
    return -jnp.take_along_axis(log_probs, labels[:, None], axis=-1).sum()

  def step(params: Any, batch: dict) -> dict:
    images = inputs(batch)
    if attack is not None:
      loss = functools.partial(summed_cross_entropy, params)
      pixels = attacks.perturb(attack, loss, images * std + mean, batch['label'], batch['index'])
      images = (pixels - mean) / std
    logits = model.apply({'params': params}, images).astype(jnp.float32)
    out = {'label': batch['label'], 'index': batch['index'], 'mask': batch['mask']}
    if with_loss:
      log_probs = jax.nn.log_softmax(logits)
      out['loss'] = -jnp.take_along_axis(log_probs, batch['label'][:, None], axis=-1)[:, 0]
    if subset is not None:
      logits = logits[:, subset]
    _, top = jax.lax.top_k(logits, min(5, logits.shape[-1]))
    out['top5'] = top if subset is None else subset[top]
    return out

  return jax.jit(sharding.on_mesh(step, mesh),
                 in_shardings=(params_sharding, sharding.data_sharding(mesh)),
                 out_shardings=sharding.replicated(mesh))


def run_eval(predict_step: PredictStep, params: Any, eval_set: EvalSet, *, batch_size: int,
             data_config: DataConfig, mesh: Mesh, max_pixels: int = image_header.MAX_PIXELS,
             on_batch: Callable[[int, Metric], None] | None = None) -> dict[str, Any]:
  """The metric of `eval_set` over all its images, and `skipped`: images that could not be read
  (or were over `max_pixels`). `data_config` is the model's eval transform (the set may fix its
  own size: `EvalSet.data_config`). `predict_step` is `make_predict_step` for the set's classes;
  `on_batch(images, metric)` is called after each batch with its number of images."""
  batches = pipeline.eval_batches(eval_set.source, batch_size=batch_size,
                                  data_config=eval_set.data_config(data_config),
                                  process_index=jax.process_index(),
                                  process_count=jax.process_count(), max_pixels=max_pixels)
  metric = eval_set.new_metric()
  for batch in batches:
    out = jax.device_get(predict_step(params, sharding.global_batch(batch, mesh)))
    keep = np.asarray(out['mask'], bool)
    labels = np.asarray(out['label'])[keep]
    if eval_set.label_map is not None:
      labels = eval_set.label_map[labels]
    losses = np.asarray(out['loss'])[keep] if 'loss' in out else None
    metric.update(np.asarray(out['top5'])[keep], labels, np.asarray(out['index'])[keep], losses)
    if on_batch is not None:
      on_batch(int(keep.sum()), metric)
  return {**metric.result(), 'skipped': len(batches.skipped)}

