"""Pillow's image operations in TensorFlow (CPU, for `tf.data`), reproducing its arithmetic.

Used by RandAugment (`randaugment.py`) and ColorJitter (`color_jitter.py`); the ops take uint8
RGB images [H, W, 3] and their argument, already mapped from a magnitude.

Pillow's arithmetic is reproduced op by op:

* `ImageEnhance` is `Image.blend(degenerate, image, factor)`: `trunc(clip(d + a (x - d)))` in
  float32 with a = float32(factor). The degenerate image is black (Brightness), grey
  `int(mean(L) + 0.5)` (Contrast), L = (19595 R + 38470 G + 7471 B + 0x8000) >> 16 replicated
  (Color), or the SMOOTH filter (Sharpness: 3x3 kernel [[1, 1, 1], [1, 5, 1], [1, 1, 1]] / 13
  rounded half up, border pixels unchanged).
* `ImageOps.autocontrast` maps each channel with `int(i * scale + offset)` from its [lo, hi];
  `ImageOps.equalize` uses per-channel LUTs `(step // 2 + cumulative count) // step`, step =
  (pixels - count of the highest level) // 255 (no change if 0), values over 255 clipped as
  `Image.point` does. Posterize with 0 bits gives black (Pillow < 10 computed it; newer Pillow
  refuses 0 bits).
* `Image.transform(AFFINE)` and `Image.rotate` (about the centre, matrix entries rounded to 15
  decimals) sample output pixel (x, y) at source point A (x + 0.5, y + 0.5) (float64); points
  outside [0, W) x [0, H) keep the fill colour, others are shifted by -0.5 and interpolated
  with edge-clamped taps: bilinear, or Pillow's affine bicubic (cubic convolution with a = -1,
  not the a = -0.5 of `resize`, in Pillow's factored form, rows first), then truncated (bicubic
  clipped to [0, 255] first).

Per-pixel work runs in small XLA-compiled kernels (one fused loop instead of dozens of
full-image tensor ops: at 224x224 on one CPU core, well under 1 ms for most colour ops and about
2 ms for a geometric op, ~1.2 ms per image on average for rand-m9-mstd0.5-inc1). XLA compiles
each kernel once per image size (0.1-0.8 s; every tf.data iterator keeps its own cache), so this
is meant for fixed-size images such as RandomResizedCrop's output.
All colour ops are bit-exact: their float arithmetic is done outside XLA on at most 511 values
(LUTs, and the blend products a k for k = x - d), the kernels only do integer work, gathers and a
single float32 addition. The geometric interpolation has to run in XLA in float64, where
multiply-adds are contracted into FMAs: a result within ~1e-13 of an integer can then truncate
differently from Pillow (measured: fewer than one value in a million, off by one).
"""

from __future__ import annotations

import math

import tensorflow as tf

# No tensor-dependent Python control flow anywhere: autograph's source conversion is skipped.
no_autograph = tf.autograph.experimental.do_not_convert


def f64(value) -> tf.Tensor:
  """float64 tensor; Python floats are converted directly, not through float32."""
  return tf.cast(tf.convert_to_tensor(value, dtype_hint=tf.float64), tf.float64)


# XLA kernels: integer work only, except the float64 interpolation of the samplers. Each has one
# signature for any image size; XLA compiles it once per size it meets.

_IMAGE = tf.TensorSpec([None, None, 3], tf.uint8)
_COORDS = tf.TensorSpec([None, None], tf.float64)


def _kernel(*signature: tf.TensorSpec):
  return tf.function(jit_compile=True, autograph=False, input_signature=list(signature))


@_kernel(_IMAGE, tf.TensorSpec([3, 256], tf.int32))
def _lookup(image: tf.Tensor, lut: tf.Tensor) -> tf.Tensor:
  """out[..., c] = lut[c, image[..., c]], `lut` values in [0, 255]."""
  index = tf.cast(image, tf.int32) + tf.range(0, 768, 256)
  return tf.cast(tf.gather(tf.reshape(lut, [-1]), index), tf.uint8)


@_kernel(_IMAGE)
def _histogram(image: tf.Tensor) -> tf.Tensor:
  """Per-channel histograms, [3, 256] int32."""
  index = tf.cast(image, tf.int32) + tf.range(0, 768, 256)
  counts = tf.math.unsorted_segment_sum(tf.ones_like(index), index, 768)
  return tf.reshape(counts, [3, 256])


def _grey(x: tf.Tensor) -> tf.Tensor:
  """PIL's RGB -> 'L' of int32 RGB [H, W, 3] -> [H, W, 1]."""
  weighted = x[..., 0:1] * 19595 + x[..., 1:2] * 38470 + x[..., 2:3] * 7471 + 0x8000
  return tf.bitwise.right_shift(weighted, 16)


def _smooth(x: tf.Tensor) -> tf.Tensor:
  """PIL's ImageFilter.SMOOTH of int32 RGB [H, W, 3]: Pillow's float32 sum + 0.5, truncated,
  is floor(total / 13 + 0.5) exactly (total / 13 is never within 1/26 of a half)."""
  shape = tf.shape(x)
  h, w = shape[0], shape[1]
  padded = tf.pad(x, [[1, 1], [1, 1], [0, 0]])
  rows = padded[:, :-2] + padded[:, 1:-1] + padded[:, 2:]
  total = rows[:-2] + rows[1:-1] + rows[2:] + 4 * x
  inner_rows = (tf.range(h) > 0) & (tf.range(h) < h - 1)
  inner_cols = (tf.range(w) > 0) & (tf.range(w) < w - 1)
  inner = inner_rows[:, None, None] & inner_cols[None, :, None]
  return tf.where(inner, (2 * total + 13) // 26, x)


@_kernel(_IMAGE)
def _grey_sum(image: tf.Tensor) -> tf.Tensor:
  return tf.reduce_sum(tf.cast(_grey(tf.cast(image, tf.int32)), tf.int64))


def _blend(x: tf.Tensor, degenerate: tf.Tensor, products: tf.Tensor) -> tf.Tensor:
  """`Image.blend(degenerate, image, a)` of int32 images given products[k] = float32(a (k - 255)):
  Pillow's float32 `d + a * (x - d)` is one exact addition d + products[x - d + 255]."""
  value = tf.cast(degenerate, tf.float32) + tf.gather(products, x - degenerate + 255)
  return tf.cast(tf.clip_by_value(value, 0.0, 255.0), tf.uint8)


_PRODUCTS = tf.TensorSpec([511], tf.float32)


@_kernel(_IMAGE, _PRODUCTS)
def _blend_grey(image: tf.Tensor, products: tf.Tensor) -> tf.Tensor:
  x = tf.cast(image, tf.int32)
  return _blend(x, _grey(x), products)


@_kernel(_IMAGE, _PRODUCTS)
def _blend_smooth(image: tf.Tensor, products: tf.Tensor) -> tf.Tensor:
  x = tf.cast(image, tf.int32)
  return _blend(x, _smooth(x), products)


def _linear(a: tf.Tensor, b: tf.Tensor, d: tf.Tensor) -> tf.Tensor:
  """Pillow's BILINEAR macro."""
  return a + (b - a) * d


def _cubic(v1: tf.Tensor, v2: tf.Tensor, v3: tf.Tensor, v4: tf.Tensor, d: tf.Tensor) -> tf.Tensor:
  """Pillow's affine BICUBIC macro: cubic convolution with a = -1, in Pillow's factored form."""
  p2 = v3 - v1
  p3 = 2.0 * (v1 - v2) + v3 - v4
  p4 = v2 - v1 - v3 + v4
  return v2 + d * (p2 + d * (p3 + d * p4))


def _interpolate(image: tf.Tensor, x: tf.Tensor, y: tf.Tensor, bicubic: bool) -> tf.Tensor:
  """Pillow's filter at shifted source points (x, y) inside the image: taps clamped to the
  edge, rows interpolated first, truncated to uint8."""
  shape = tf.shape(image)
  h, w = shape[0], shape[1]
  x0, y0 = tf.floor(x), tf.floor(y)
  dx, dy = (x - x0)[..., None], (y - y0)[..., None]
  # Points outside (filled anyway) are clamped first so that the int32 casts are defined.
  x0 = tf.cast(tf.clip_by_value(x0, -2.0, f64(w)), tf.int32)
  y0 = tf.cast(tf.clip_by_value(y0, -2.0, f64(h)), tf.int32)
  offsets = (-1, 0, 1, 2) if bicubic else (0, 1)
  combine = _cubic if bicubic else _linear
  pixels = f64(image)
  cols = [tf.clip_by_value(x0 + k, 0, w - 1) for k in offsets]
  rows = []
  for k in offsets:
    row = tf.clip_by_value(y0 + k, 0, h - 1)
    taps = [tf.gather_nd(pixels, tf.stack([row, col], axis=-1)) for col in cols]
    rows.append(combine(*taps, dx))
  return tf.cast(tf.clip_by_value(combine(*rows, dy), 0.0, 255.0), tf.uint8)


def _sampler(bicubic: bool):
  @_kernel(_IMAGE, _COORDS, _COORDS, tf.TensorSpec([3], tf.uint8))
  def sample(image: tf.Tensor, xs: tf.Tensor, ys: tf.Tensor, fill: tf.Tensor) -> tf.Tensor:
    """Pillow's affine-transform sampling of `image` at source points (xs, ys) ([H, W],
    pixel-area coordinates), `fill` where they fall outside it."""
    shape = tf.shape(image)
    inside = (xs >= 0.0) & (xs < f64(shape[1])) & (ys >= 0.0) & (ys < f64(shape[0]))
    out = _interpolate(image, xs - 0.5, ys - 0.5, bicubic)
    return tf.where(inside[..., None], out, fill)

  return sample


_SAMPLE = {False: _sampler(False), True: _sampler(True)}


# Colour ops: LUTs and blend products computed exactly, applied by the kernels.


def _per_channel(lut: tf.Tensor) -> tf.Tensor:
  return tf.tile(tf.cast(lut, tf.int32)[None], [3, 1])


def auto_contrast(image: tf.Tensor) -> tf.Tensor:
  lo = tf.cast(tf.reduce_min(image, axis=[0, 1]), tf.int32)
  hi = tf.cast(tf.reduce_max(image, axis=[0, 1]), tf.int32)
  scale = 255.0 / f64(tf.maximum(hi - lo, 1))
  offset = f64(-lo) * scale
  mapped = f64(tf.range(256))[None, :] * scale[:, None] + offset[:, None]
  lut = tf.clip_by_value(tf.cast(mapped, tf.int32), 0, 255)
  return _lookup(image, tf.where((hi <= lo)[:, None], tf.range(256)[None, :], lut))


def equalize(image: tf.Tensor) -> tf.Tensor:
  hist = _histogram(image)
  last = 255 - tf.argmax(tf.reverse(tf.cast(hist > 0, tf.int32), axis=[1]), axis=1,
                         output_type=tf.int32)
  pixels = tf.reduce_sum(hist, axis=1)
  step = (pixels - tf.gather(hist, last, batch_dims=1)) // 255
  cumulative = tf.cumsum(hist, axis=1, exclusive=True)
  lut = tf.minimum((step[:, None] // 2 + cumulative) // tf.maximum(step, 1)[:, None], 255)
  return _lookup(image, tf.where((step == 0)[:, None], tf.range(256)[None, :], lut))


def invert(image: tf.Tensor) -> tf.Tensor:
  return _lookup(image, _per_channel(255 - tf.range(256)))


def posterize(image: tf.Tensor, bits) -> tf.Tensor:
  shift = tf.clip_by_value(8 - tf.cast(bits, tf.int32), 0, 8)
  levels = tf.range(256)
  return _lookup(image, _per_channel(tf.bitwise.left_shift(tf.bitwise.right_shift(levels, shift),
                                                           shift)))


def solarize(image: tf.Tensor, threshold) -> tf.Tensor:
  levels = tf.range(256)
  return _lookup(image, _per_channel(tf.where(levels < tf.cast(threshold, tf.int32), levels,
                                              255 - levels)))


def solarize_add(image: tf.Tensor, add) -> tf.Tensor:
  levels = tf.range(256)
  added = tf.minimum(255, levels + tf.cast(add, tf.int32))
  return _lookup(image, _per_channel(tf.where(levels < 128, added, levels)))


def _products(factor) -> tf.Tensor:
  """float32(factor) * k for k = -255 .. 255, rounded to float32 as in Pillow's blend."""
  return tf.cast(f64(factor), tf.float32) * tf.range(-255.0, 256.0)


def _blend_constant(image: tf.Tensor, grey, factor) -> tf.Tensor:
  """`Image.blend` with a uniform degenerate image of level `grey`, as a LUT."""
  grey = tf.cast(grey, tf.int32)
  value = tf.cast(grey, tf.float32) + tf.gather(_products(factor), tf.range(256) - grey + 255)
  return _lookup(image, _per_channel(tf.cast(tf.clip_by_value(value, 0.0, 255.0), tf.int32)))


def brightness(image: tf.Tensor, factor) -> tf.Tensor:
  return _blend_constant(image, 0, factor)


def contrast(image: tf.Tensor, factor) -> tf.Tensor:
  mean = f64(_grey_sum(image)) / f64(tf.shape(image)[0] * tf.shape(image)[1])
  return _blend_constant(image, tf.floor(mean + 0.5), factor)


def color(image: tf.Tensor, factor) -> tf.Tensor:
  return _blend_grey(image, _products(factor))


def sharpness(image: tf.Tensor, factor) -> tf.Tensor:
  return _blend_smooth(image, _products(factor))


# Geometric ops.


def _affine(image: tf.Tensor, matrix: list, bicubic, fill) -> tf.Tensor:
  """`Image.transform(size, AFFINE, matrix, BICUBIC if bicubic else BILINEAR, fillcolor=fill)`:
  output (x, y) samples source (a x' + b y' + c, d x' + e y' + f), x' = x + 0.5, y' = y + 0.5,
  computed in float64 in Pillow's order. `bicubic` is a Python bool or a bool tensor."""
  a, b, c, d, e, f = (f64(v) for v in matrix)
  shape = tf.shape(image)
  xin = tf.range(shape[1], dtype=tf.float64)[None, :] + 0.5
  yin = tf.range(shape[0], dtype=tf.float64)[:, None] + 0.5
  xs = a * xin + b * yin + c
  ys = d * xin + e * yin + f
  fill = tf.constant(fill, tf.uint8)
  if isinstance(bicubic, bool):
    return _SAMPLE[bicubic](image, xs, ys, fill)
  return tf.cond(bicubic, lambda: _SAMPLE[True](image, xs, ys, fill),
                 lambda: _SAMPLE[False](image, xs, ys, fill))


def _round15(x: tf.Tensor) -> tf.Tensor:
  """Python's `round(x, 15)` (the same double on 900k sampled rotation entries)."""
  return tf.round(x * 1e15) / 1e15


def rotate(image: tf.Tensor, degrees, bicubic, fill) -> tf.Tensor:
  """`Image.rotate(degrees, resample, fillcolor=fill)`: about the centre, same size."""
  shape = tf.shape(image)
  cx, cy = f64(shape[1]) / 2.0, f64(shape[0]) / 2.0
  angle = -(tf.math.floormod(f64(degrees), 360.0) * (math.pi / 180.0))
  cos, sin = _round15(tf.cos(angle)), _round15(tf.sin(angle))
  matrix = [cos, sin, cos * -cx + sin * -cy + cx, -sin, cos, -sin * -cx + cos * -cy + cy]
  return _affine(image, matrix, bicubic, fill)


def shear_x(image, factor, bicubic, fill):
  return _affine(image, [1.0, factor, 0.0, 0.0, 1.0, 0.0], bicubic, fill)


def shear_y(image, factor, bicubic, fill):
  return _affine(image, [1.0, 0.0, 0.0, factor, 1.0, 0.0], bicubic, fill)


def translate_x_rel(image, pct, bicubic, fill):
  pixels = f64(pct) * f64(tf.shape(image)[1])
  return _affine(image, [1.0, 0.0, pixels, 0.0, 1.0, 0.0], bicubic, fill)


def translate_y_rel(image, pct, bicubic, fill):
  pixels = f64(pct) * f64(tf.shape(image)[0])
  return _affine(image, [1.0, 0.0, 0.0, 0.0, 1.0, pixels], bicubic, fill)
