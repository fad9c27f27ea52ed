"""Mixup / CutMix with label smoothing, in JAX, for use inside the jitted training step.

timm 0.5.4's `Mixup` in its default `batch` mode, as the paper trained (`--mixup 0.8 --cutmix 1.0
--smoothing 0.1`): one lambda per batch; with probability `prob` the batch is mixed, by CutMix
with probability `switch_prob` (lambda ~ Beta(cutmix_alpha, cutmix_alpha)) and by Mixup otherwise
(lambda ~ Beta(mixup_alpha, mixup_alpha)); each image is mixed with its mirror in the reversed
batch; CutMix's lambda is corrected to the area of the box after clipping; label smoothing is
folded into the soft targets. The box is timm 0.5.4's: `cy - cut_h // 2 .. cy + cut_h // 2`
(timm >= 0.9 makes the upper edge `cy + (cut_h + 1) // 2`).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from sequencer_jax.data.pil_ops import rounded


@dataclasses.dataclass(frozen=True)
class MixupConfig:
  """The timm flags, with their names: --mixup, --cutmix, --mixup-switch-prob, --mixup-prob, --smoothing."""

  num_classes: int
  mixup_alpha: float = 0.8
  cutmix_alpha: float = 1.0
  switch_prob: float = 0.5
  prob: float = 1.0
  label_smoothing: float = 0.1


def smooth_one_hot(labels: jax.Array, num_classes: int, smoothing: float) -> jax.Array:
  """One-hot targets with `smoothing / num_classes` off and `1 - smoothing + off` on."""
  off = smoothing / num_classes
  return jax.nn.one_hot(labels, num_classes) * (1.0 - smoothing) + off


def cutmix_box(height: int, width: int, lam: jax.Array, cy: jax.Array,
               cx: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
  """timm 0.5.4's `rand_bbox` for a given centre: (y_low, y_high, x_low, x_high), clipped."""
  ratio = jnp.sqrt(1.0 - lam)
  cut_h = jnp.floor(height * ratio).astype(jnp.int32)
  cut_w = jnp.floor(width * ratio).astype(jnp.int32)
  return (jnp.clip(cy - cut_h // 2, 0, height), jnp.clip(cy + cut_h // 2, 0, height),
          jnp.clip(cx - cut_w // 2, 0, width), jnp.clip(cx + cut_w // 2, 0, width))


def mix_with_reversed(images: jax.Array, labels: jax.Array, use_cutmix: jax.Array,
                      lam: jax.Array, cy: jax.Array, cx: jax.Array, num_classes: int,
                      smoothing: float) -> tuple[jax.Array, jax.Array]:
  """The deterministic part: mix NHWC `images` with the reversed batch; returns soft targets.

  Integer (uint8) images are mixed as timm's FastCollateMixup mixes them: in float32, rounded
  half to even back to their type."""
  _, height, width, _ = images.shape
  reversed_images = images[::-1]
  y0, y1, x0, x1 = cutmix_box(height, width, lam, cy, cx)
  rows = jnp.arange(height)[:, None]
  cols = jnp.arange(width)[None, :]
  box = (rows >= y0) & (rows < y1) & (cols >= x0) & (cols < x1)
  cut = jnp.where(box[None, :, :, None], reversed_images, images)
  lam_cut = 1.0 - ((y1 - y0) * (x1 - x0)).astype(jnp.float32) / (height * width)
  if jnp.issubdtype(images.dtype, jnp.integer):
    # FastCollateMixup rounds each float32 product, adds them and rounds back to uint8: an FMA
    # (XLA contracts the sum under jit) moves values that sit at .5 by one level.
    mixed = jnp.round(rounded(lam * images) + rounded((1.0 - lam) * reversed_images))
  else:
    mixed = lam * images + (1.0 - lam) * reversed_images
  mixed = mixed.astype(images.dtype)
  images = jnp.where(use_cutmix, cut, mixed)
  lam = jnp.where(use_cutmix, lam_cut, lam)
  targets = smooth_one_hot(labels, num_classes, smoothing)
  return images, lam * targets + (1.0 - lam) * targets[::-1]


def mixup_cutmix(images: jax.Array, labels: jax.Array, rng: jax.Array,
                 config: MixupConfig) -> tuple[jax.Array, jax.Array]:
  """Mixes a batch (NHWC images, integer labels) as timm does; returns (images, soft targets)."""
  k_apply, k_switch, k_mixup, k_cutmix, k_y, k_x = jax.random.split(rng, 6)
  _, height, width, _ = images.shape
  if config.mixup_alpha > 0 and config.cutmix_alpha > 0:
    use_cutmix = jax.random.uniform(k_switch) < config.switch_prob
  else:
    use_cutmix = jnp.asarray(config.cutmix_alpha > 0)
  beta = lambda key, alpha: jax.random.beta(key, alpha, alpha) if alpha > 0 else jnp.ones(())
  lam = jnp.where(use_cutmix, beta(k_cutmix, config.cutmix_alpha),
                  beta(k_mixup, config.mixup_alpha))
  lam = jnp.where(jax.random.uniform(k_apply) < config.prob, lam, 1.0)
  use_cutmix = use_cutmix & (lam < 1.0)
  cy = jax.random.randint(k_y, (), 0, height)
  cx = jax.random.randint(k_x, (), 0, width)
  return mix_with_reversed(images, labels, use_cutmix, lam, cy, cx, config.num_classes,
                           config.label_smoothing)
