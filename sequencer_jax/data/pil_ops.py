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

A sequence of ops (`Ops`: RandAugment's layers, ColorJitter's three enhancements) runs as one
XLA-compiled kernel call per op. Each op's arguments are prepared for the whole sequence first,
so the switch that picks an op's kernel has one kernel call per branch. The untaken kernel
branches still cost ~1.1 ms per RandAugment layer in all (against ~2 ms when each branch held its
op's own preparation); one kernel switching inside XLA is no cheaper, as an XLA conditional
costs per call for every branch it holds. XLA compiles each kernel once per image size (every
tf.data iterator keeps its own cache), so this is meant for fixed-size images such as
RandomResizedCrop's output.

XLA on the CPU contracts a multiply followed by an add into one FMA, which rounds differently
from Pillow's separate operations. So no float multiply-add reaches the kernel: the products are
taken outside it on small vectors (the blend products a k for k = x - d, 511 values; the affine
terms a x' and b y', one per column and row; AutoContrast's i * (255 / n) for all i and n, a
constant table), and inside the kernel they only meet additions and integer work. All colour
ops are bit-exact that way. The geometric interpolation itself has to run in XLA in float64,
where its multiply-adds are contracted: a result within ~1e-13 of an integer can then truncate
differently from Pillow (measured: fewer than one value in a million, off by one).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
import tensorflow as tf

# No tensor-dependent Python control flow anywhere: autograph's source conversion is skipped.
no_autograph = tf.autograph.experimental.do_not_convert

KINDS = ('identity', 'auto_contrast', 'equalize', 'invert', 'posterize', 'solarize',
         'solarize_add', 'brightness', 'contrast', 'color', 'sharpness', 'affine_bilinear',
         'affine_bicubic')


def f64(value) -> tf.Tensor:
  """float64 tensor; Python floats are converted directly, not through float32."""
  return tf.cast(tf.convert_to_tensor(value, dtype_hint=tf.float64), tf.float64)


class Ops(NamedTuple):
  """A sequence of n Pillow ops and their arguments, each field with a leading [n] axis."""
  kind: tf.Tensor  # int32 index into KINDS
  level: tf.Tensor  # int32: posterize bits, solarize threshold, solarize-add addend
  factor: tf.Tensor  # float64: the enhance ops' blend factor
  matrix: tf.Tensor  # float64 [n, 6]: the affine ops' (a, b, c, d, e, f), as Image.transform's


# Inside the kernel: integer work, gathers, additions, and the float64 interpolation.

_LEVELS = tf.range(256)
# AutoContrast's i * (255 / n) for n = hi - lo in [1, 255] (row 0 unused), i in [0, 255].
_CONTRAST_STRETCH = np.arange(256.0)[None, :] * np.concatenate(
    [[0.0], 255.0 / np.arange(1.0, 256.0)])[:, None]


def _lookup(image: tf.Tensor, lut: tf.Tensor) -> tf.Tensor:
  """out[..., c] = lut[c, image[..., c]], `lut` [3, 256] int32 in [0, 255]."""
  index = tf.cast(image, tf.int32) + tf.range(0, 768, 256)
  return tf.cast(tf.gather(tf.reshape(lut, [-1]), index), tf.uint8)


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


def _blend(x: tf.Tensor, degenerate: tf.Tensor, products: tf.Tensor) -> tf.Tensor:
  """`Image.blend(degenerate, image, a)` of int32 images given products[k] = float32(a (k - 255)):
  Pillow's float32 `d + a * (x - d)` is one exact addition d + products[x - d + 255]."""
  value = tf.cast(degenerate, tf.float32) + tf.gather(products, x - degenerate + 255)
  return tf.cast(tf.clip_by_value(value, 0.0, 255.0), tf.uint8)


def _blend_constant(grey: tf.Tensor, products: tf.Tensor) -> tf.Tensor:
  """The LUT of `Image.blend` with a uniform degenerate image of level `grey`."""
  return tf.cast(_blend(_LEVELS, grey, products), tf.int32)


def _auto_contrast(image: tf.Tensor) -> tf.Tensor:
  """`ImageOps.autocontrast`'s LUTs [3, 256]: int(i * scale + offset) per channel, scale =
  255 / (hi - lo), offset = -lo * scale, i.e. stretch[i] - stretch[lo] with stretch = i * scale."""
  lo = tf.cast(tf.reduce_min(image, axis=[0, 1]), tf.int32)
  hi = tf.cast(tf.reduce_max(image, axis=[0, 1]), tf.int32)
  stretch = tf.gather(tf.constant(_CONTRAST_STRETCH, tf.float64), tf.maximum(hi - lo, 1))
  mapped = stretch - tf.gather(stretch, lo, batch_dims=1)[:, None]
  lut = tf.clip_by_value(tf.cast(mapped, tf.int32), 0, 255)
  return tf.where((hi <= lo)[:, None], _LEVELS[None, :], lut)


def _equalize(image: tf.Tensor) -> tf.Tensor:
  hist = _histogram(image)
  last = 255 - tf.argmax(tf.reverse(tf.cast(hist > 0, tf.int32), axis=[1]), axis=1,
                         output_type=tf.int32)
  pixels = tf.reduce_sum(hist, axis=1)
  step = (pixels - tf.gather(hist, last, batch_dims=1)) // 255
  cumulative = tf.cumsum(hist, axis=1, exclusive=True)
  lut = tf.minimum((step[:, None] // 2 + cumulative) // tf.maximum(step, 1)[:, None], 255)
  return _lookup(image, tf.where((step == 0)[:, None], _LEVELS[None, :], lut))


def _contrast(image: tf.Tensor, products: tf.Tensor) -> tf.Tensor:
  """ImageEnhance.Contrast's LUT: blend with the grey level int(mean(L) + 0.5)."""
  total = tf.reduce_sum(tf.cast(_grey(tf.cast(image, tf.int32)), tf.int64))
  mean = tf.cast(total, tf.float64) / tf.cast(tf.shape(image)[0] * tf.shape(image)[1],
                                              tf.float64)
  return _blend_constant(tf.cast(tf.floor(mean + 0.5), tf.int32), products)


def _posterize(bits: tf.Tensor) -> tf.Tensor:
  shift = tf.clip_by_value(8 - bits, 0, 8)
  return tf.bitwise.left_shift(tf.bitwise.right_shift(_LEVELS, shift), shift)


# The ops that map each channel through a lookup table, as f(image, level, products) -> LUT.
_TABLES = {
    'auto_contrast': lambda image, level, products: _auto_contrast(image),
    'invert': lambda image, level, products: 255 - _LEVELS,
    'posterize': lambda image, level, products: _posterize(level),
    'solarize': lambda image, level, products: tf.where(_LEVELS < level, _LEVELS,
                                                        255 - _LEVELS),
    'solarize_add': lambda image, level, products: tf.where(
        _LEVELS < 128, tf.minimum(255, _LEVELS + level), _LEVELS),
    'brightness': lambda image, level, products: _blend_constant(tf.constant(0), products),
    'contrast': lambda image, level, products: _contrast(image, products),
}


def _table_op(image, kind, level, products) -> tf.Tensor:
  """The lookup-table op `kind`: every table is computed (a few hundred values, and the
  image's extremes and mean), the chosen one applied."""
  tables = tf.stack([tf.broadcast_to(table(image, level, products), [3, 256])
                     for table in _TABLES.values()])
  index = tf.argmax(tf.cast(tf.equal(kind, [KINDS.index(k) for k in _TABLES]), tf.int32),
                    output_type=tf.int32)
  return _lookup(image, tables[index])


def _blend_op(image, kind, products) -> tf.Tensor:
  """Color (blend with the image's grey) or Sharpness (with its SMOOTH filter)."""
  x = tf.cast(image, tf.int32)
  degenerate = tf.where(kind == KINDS.index('sharpness'), _smooth(x), _grey(x))
  return _blend(x, degenerate, products)


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
  x0 = tf.cast(tf.clip_by_value(x0, -2.0, tf.cast(w, tf.float64)), tf.int32)
  y0 = tf.cast(tf.clip_by_value(y0, -2.0, tf.cast(h, tf.float64)), tf.int32)
  offsets = (-1, 0, 1, 2) if bicubic else (0, 1)
  combine = _cubic if bicubic else _linear
  pixels = tf.reshape(image, [-1, 3])  # Gathered as uint8: half the time of float64 rows.
  cols = [tf.clip_by_value(x0 + k, 0, w - 1) for k in offsets]
  rows = []
  for k in offsets:
    row = tf.clip_by_value(y0 + k, 0, h - 1) * w
    taps = [tf.cast(tf.gather(pixels, row + col), tf.float64) for col in cols]
    rows.append(combine(*taps, dx))
  return tf.cast(tf.clip_by_value(combine(*rows, dy), 0.0, 255.0), tf.uint8)


def _affine(image: tf.Tensor, terms: tuple[tf.Tensor, ...], fill: tf.Tensor,
            bicubic: bool) -> tf.Tensor:
  """`Image.transform(AFFINE)`: output (x, y) samples source (a x' + b y' + c, d x' + e y' + f),
  x' = x + 0.5, y' = y + 0.5, summed in Pillow's order from the products given in `terms`
  (a x' [W], b y' [H], c, d x' [W], e y' [H], f); `fill` where the source is outside."""
  ax, by, c, dx, ey, f = terms
  xs = (ax[None, :] + by[:, None]) + c
  ys = (dx[None, :] + ey[:, None]) + f
  shape = tf.shape(image)
  inside = ((xs >= 0.0) & (xs < tf.cast(shape[1], tf.float64)) & (ys >= 0.0) &
            (ys < tf.cast(shape[0], tf.float64)))
  out = _interpolate(image, xs - 0.5, ys - 0.5, bicubic)
  return tf.where(inside[..., None], out, fill)


# The kernels, as f(image, kind, level, products, terms, fill), and the kinds each applies.
_KERNEL_OPS = {
    'table': lambda image, kind, level, products, terms, fill: _table_op(image, kind, level,
                                                                        products),
    'equalize': lambda image, *_: _equalize(image),
    'blend': lambda image, kind, level, products, terms, fill: _blend_op(image, kind, products),
    'affine_bilinear': lambda image, kind, level, products, terms, fill: _affine(
        image, terms, fill, bicubic=False),
    'affine_bicubic': lambda image, kind, level, products, terms, fill: _affine(
        image, terms, fill, bicubic=True),
}
_KERNEL_OF = {**dict.fromkeys(_TABLES, 'table'), 'equalize': 'equalize', 'color': 'blend',
              'sharpness': 'blend', 'affine_bilinear': 'affine_bilinear',
              'affine_bicubic': 'affine_bicubic'}
_VECTOR = tf.TensorSpec([None], tf.float64)
_SCALAR = tf.TensorSpec([], tf.float64)


def _xla_kernel(name: str) -> tf.types.experimental.GenericFunction:
  """The XLA kernel `name` of _KERNEL_OPS, for any image size."""
  @tf.function(jit_compile=True, autograph=False, input_signature=[
      tf.TensorSpec([None, None, 3], tf.uint8), tf.TensorSpec([], tf.int32),
      tf.TensorSpec([], tf.int32), tf.TensorSpec([511], tf.float32), _VECTOR, _VECTOR, _SCALAR,
      _VECTOR, _VECTOR, _SCALAR, tf.TensorSpec([3], tf.uint8)])
  def kernel(image, kind, level, products, ax, by, c, dx, ey, f, fill):
    return _KERNEL_OPS[name](image, kind, level, products, (ax, by, c, dx, ey, f), fill)

  return kernel


# Five kernels, not one per op: the untaken branches of the switch over kernel calls still cost
# per call, more for more and larger kernels (~1.1 ms in all for these five, ~1.3 ms for twelve).
_KERNELS = {name: _xla_kernel(name) for name in _KERNEL_OPS}
# The switch branch of each kind: 0 (the identity), else 1 + its kernel's position.
_BRANCH = (0,) + tuple(1 + list(_KERNELS).index(_KERNEL_OF[kind]) for kind in KINDS[1:])


@no_autograph
def apply(image: tf.Tensor, ops: Ops, fill: tuple[int, int, int] = (0, 0, 0)) -> tf.Tensor:
  """`ops` applied in order to a uint8 RGB image [H, W, 3], one XLA kernel call per op; `fill`
  is the affine ops' colour outside the source."""
  image = tf.convert_to_tensor(image, tf.uint8)
  shape = tf.shape(image)
  # The multiplications happen here, outside XLA (see the module docstring).
  products = tf.cast(ops.factor, tf.float32)[:, None] * tf.range(-255.0, 256.0)[None, :]
  xin = tf.range(shape[1], dtype=tf.float64)[None, :] + 0.5
  yin = tf.range(shape[0], dtype=tf.float64)[None, :] + 0.5
  a, b, c, d, e, f = tf.unstack(ops.matrix, axis=1)
  per_op = zip(tf.unstack(ops.kind), tf.unstack(ops.level), tf.unstack(products),
               tf.unstack(a[:, None] * xin), tf.unstack(b[:, None] * yin), tf.unstack(c),
               tf.unstack(d[:, None] * xin), tf.unstack(e[:, None] * yin), tf.unstack(f))
  fill = tf.constant(fill, tf.uint8)
  out = image
  for kind, *arguments in per_op:
    branches = [lambda x=out: x] + [
        lambda x=out, kernel=kernel, kind=kind, arguments=arguments: kernel(x, kind, *arguments,
                                                                            fill)
        for kernel in _KERNELS.values()]
    out = tf.switch_case(tf.gather(_BRANCH, kind), branches)
  return tf.ensure_shape(out, image.shape)


def _round15(x: tf.Tensor) -> tf.Tensor:
  """Python's `round(x, 15)` (the same double on 900k sampled rotation entries)."""
  return tf.round(x * 1e15) / 1e15


def rotation_matrix(degrees, height, width) -> tf.Tensor:
  """`Image.rotate(degrees)`'s affine matrix (about the centre, same size), [..., 6] float64."""
  cx, cy = f64(width) / 2.0, f64(height) / 2.0
  angle = -(tf.math.floormod(f64(degrees), 360.0) * (math.pi / 180.0))
  cos, sin = _round15(tf.cos(angle)), _round15(tf.sin(angle))
  return tf.stack([cos, sin, cos * -cx + sin * -cy + cx, -sin, cos, -sin * -cx + cos * -cy + cy],
                  axis=-1)
