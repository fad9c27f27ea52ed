"""Effective receptive fields (Luo et al. 2016), as the paper draws them for each stage.

For a stage's output, the gradient of the centre token's summed features with respect to the
input image; its absolute values summed over the colour channels and averaged over images give
one (H, W) map per stage. `for_display` log-scales and normalises a map for the picture.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from sequencer_jax.models import Sequencer


def make_erf_step(model: Sequencer, stage: int):
  """The jitted `(variables, images) -> (H, W)`: the sum over the batch of each image's
  |d centre-token features / d input|, summed over channels."""

  def centre_sum(images: jax.Array, variables: Any) -> jax.Array:
    _, features = model.apply(variables, images, return_intermediates=True)
    x = features[f'stage{stage}'].astype(jnp.float32)
    return x[:, x.shape[1] // 2, x.shape[2] // 2, :].sum()

  def step(variables: Any, images: jax.Array) -> jax.Array:
    grads = jax.grad(centre_sum)(images, variables)
    return jnp.abs(grads).sum(axis=(0, 3))

  return jax.jit(step)


def effective_receptive_fields(model: Sequencer, variables: Any,
                               batches: Iterable[np.ndarray],
                               stages: Sequence[int]) -> dict[int, np.ndarray]:
  """The mean ERF map of each of `stages` over the images of `batches` (NHWC, preprocessed)."""
  steps = {stage: make_erf_step(model, stage) for stage in stages}
  totals: dict[int, np.ndarray] = {}
  count = 0
  for images in batches:
    for stage, step in steps.items():
      total = np.asarray(step(variables, jnp.asarray(images)), np.float64)
      totals[stage] = totals.get(stage, 0.0) + total
    count += len(images)
  if not count:
    raise ValueError('no images to compute the effective receptive fields from')
  return {stage: total / count for stage, total in totals.items()}


def for_display(erf: np.ndarray) -> np.ndarray:
  """log10(1 + erf), scaled to a maximum of 1: the figure's scale."""
  shown = np.log10(erf + 1.0)
  return shown / max(float(shown.max()), np.finfo(np.float64).tiny)
