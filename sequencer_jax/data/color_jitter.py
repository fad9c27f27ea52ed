"""torchvision's ColorJitter (hue 0) in TensorFlow, on Pillow's enhance ops (`pil_ops.py`).

ColorJitter is torchvision's on PIL images with hue 0: brightness, contrast and saturation
factors uniform in [max(0, 1 - v), 1 + v], applied in a uniformly random order as
`ImageEnhance.Brightness`, `Contrast` and `Color`.

All randomness comes from a `seed` tensor (shape [2], as `tf.random.stateless_*` expects).
"""

from __future__ import annotations

import tensorflow as tf

from sequencer_jax.data import pil_ops
from sequencer_jax.data.pil_ops import no_autograph


@no_autograph
def color_jitter_params(seed: tf.Tensor, brightness: float = 0.4, contrast: float = 0.4,
                        saturation: float = 0.4) -> tuple[tf.Tensor, tf.Tensor]:
  """torchvision's `ColorJitter.get_params` without hue: factors [3] float64 (brightness,
  contrast, saturation) and order [3] int32, a uniformly random permutation of 0, 1, 2."""
  strengths = (brightness, contrast, saturation)
  if min(strengths) < 0:
    raise ValueError(f'color jitter strengths must be >= 0, got {strengths}')
  factor_seed, order_seed = tf.unstack(
      tf.random.experimental.stateless_split(tf.cast(seed, tf.int64), 2))
  lo = tf.constant([max(0.0, 1.0 - v) for v in strengths], tf.float64)
  hi = tf.constant([1.0 + v for v in strengths], tf.float64)
  factors = lo + (hi - lo) * tf.random.stateless_uniform([3], factor_seed, dtype=tf.float64)
  return factors, tf.argsort(tf.random.stateless_uniform([3], order_seed))


@no_autograph
def apply_color_jitter(image: tf.Tensor, factors: tf.Tensor, order: tf.Tensor) -> tf.Tensor:
  """ImageEnhance Brightness (0), Contrast (1), Color (2) with `factors`, in `order` (one kernel
  call each)."""
  kinds = tf.constant([pil_ops.KINDS.index(k) for k in ('brightness', 'contrast', 'color')])
  ops = pil_ops.Ops(kind=tf.gather(kinds, order), level=tf.zeros([3], tf.int32),
                    factor=tf.gather(factors, order),
                    matrix=tf.zeros([3, 6], tf.float64))
  return pil_ops.apply(image, ops)


@no_autograph
def color_jitter(image: tf.Tensor, seed: tf.Tensor, brightness: float = 0.4,
                 contrast: float = 0.4, saturation: float = 0.4) -> tf.Tensor:
  """torchvision's `ColorJitter(brightness, contrast, saturation)` on a uint8 RGB image."""
  factors, order = color_jitter_params(seed, brightness, contrast, saturation)
  return apply_color_jitter(image, factors, order)
