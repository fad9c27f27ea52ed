"""torchvision's ColorJitter (hue 0) in JAX on batches of images, on Pillow's enhance ops
(`pil_ops.py`).

ColorJitter is torchvision's on PIL images with hue 0: brightness, contrast and saturation
factors uniform in [max(0, 1 - v), 1 + v], applied in a uniformly random order as
`ImageEnhance.Brightness`, `Contrast` and `Color`, each `Image.blend(degenerate, image, factor)`
in float32 (degenerate: black, the grey level int(mean(L) + 0.5), the grey image). Each image
of a batch has its own factors and order; each of the three steps is one lookup-table pass
(Brightness, Contrast; the identity for Color) and one blend pass with the grey image (Color;
factor 1 for the others).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from sequencer_jax.data import pil_ops

BRIGHTNESS, CONTRAST, COLOR = 0, 1, 2  # The enhancements' indices in `order`.


@functools.partial(jax.jit, static_argnames=('batch', 'brightness', 'contrast', 'saturation'))
def color_jitter_params(key: jax.Array, batch: int, brightness: float = 0.4,
                        contrast: float = 0.4,
                        saturation: float = 0.4) -> tuple[jax.Array, jax.Array]:
  """torchvision's `ColorJitter.get_params` without hue for `batch` images: factors [B, 3]
  float32 (brightness, contrast, saturation) and order [B, 3] int32, each row a uniformly random
  permutation of 0, 1, 2."""
  strengths = (brightness, contrast, saturation)
  if min(strengths) < 0:
    raise ValueError(f'color jitter strengths must be >= 0, got {strengths}')
  factor_key, order_key = jax.random.split(key)
  lo = np.array([max(0.0, 1.0 - v) for v in strengths], np.float32)
  hi = np.array([1.0 + v for v in strengths], np.float32)
  factors = jax.random.uniform(factor_key, (batch, 3), jnp.float32, lo, hi)
  order = jnp.argsort(jax.random.uniform(order_key, (batch, 3)), axis=1).astype(jnp.int32)
  return factors, order


@jax.jit
def apply_color_jitter(images: jax.Array, factors: jax.Array, order: jax.Array) -> jax.Array:
  """ImageEnhance Brightness (0), Contrast (1), Color (2) of uint8 RGB images [B, H, W, 3] with
  `factors` [B, 3], in each image's `order` [B, 3]."""
  images = jnp.asarray(images, jnp.uint8)
  factors = jnp.asarray(factors, jnp.float32)
  order = jnp.asarray(order, jnp.int32)
  for step in range(3):
    kind = order[:, step]
    factor = jnp.take_along_axis(factors, order[:, step:step + 1], axis=1)[:, 0]
    level = jnp.where(kind == CONTRAST, pil_ops.mean_grey(images), 0)  # Brightness: black.
    table = pil_ops.blend_lut(level, pil_ops.blend_products(factor))
    table = jnp.where((kind == COLOR)[:, None], pil_ops.identity_lut(images.shape[0]), table)
    images = pil_ops.lookup(images, table)
    images = pil_ops.enhance(images, jnp.where(kind == COLOR, factor, 1.0))
  return images


def color_jitter(images: jax.Array, key: jax.Array, brightness: float = 0.4,
                 contrast: float = 0.4, saturation: float = 0.4) -> jax.Array:
  """torchvision's `ColorJitter(brightness, contrast, saturation)` on a uint8 RGB batch, each
  image with its own draws from `key`."""
  factors, order = color_jitter_params(key, images.shape[0], brightness, contrast, saturation)
  return apply_color_jitter(images, factors, order)
