"""timm's RandAugment and torchvision's ColorJitter in TensorFlow ops (CPU, for `tf.data`).

RandAugment follows timm 0.5.4 `timm/data/auto_augment.py` (the paper trained with
`rand-m9-mstd0.5-inc1`):

* each of `num_ops` layers picks an op uniformly, with replacement, from 15 (the "increasing"
  set with `inc`, else the original set) and applies it with probability 0.5;
* its magnitude is N(m, mstd) (just m if mstd is 0), drawn per layer and clipped to [0, 10];
* the level-to-argument maps are timm's `_*_level_to_arg`: Rotate 30 m / 10 degrees, ShearX/Y
  0.3 m / 10, TranslateX/YRel 0.45 m / 10 of the width / height, each negated with probability
  1/2; the increasing enhance ops (Color, Contrast, Brightness, Sharpness) blend with factor
  1 +- 0.9 m / 10 (random sign), the original ones with 0.1 + 1.8 m / 10; PosterizeIncreasing
  keeps 4 - int(4 m / 10) bits (Posterize int(4 m / 10)), SolarizeIncreasing thresholds at
  256 - int(256 m / 10) (Solarize int(256 m / 10)), SolarizeAdd adds int(110 m / 10) below 128;
* geometric ops fill with timm's `img_mean` (124, 116, 104) and resample with bilinear or
  bicubic, chosen per layer with probability 1/2 (timm's `_RANDOM_INTERPOLATION`, as with
  `--train-interpolation random`), or always one of them.

Where timm 1.0 differs from 0.5.4 for this config, 0.5.4 is followed: `inc<anything>` selects the
increasing set (0.5.4 tests `bool(val)` of the string, 1.0 `bool(int(val))`), mstd > 100 is still
a Gaussian std (1.0 switches to uniform sampling), there are no `mmax`, `p` or `t` keys, and
the level maps have none of 1.0's clamps. Of those, only the enhance factor's lower bound 0.1 ever
binds: at magnitude 10 with the negative sign, 1 - 0.9 = 0.09999999999999998, which Pillow
rounds to the same float32 blend factor as 0.1.

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

ColorJitter is torchvision's on PIL images with hue 0: brightness, contrast and saturation
factors uniform in [max(0, 1 - v), 1 + v], applied in a uniformly random order as
`ImageEnhance.Brightness`, `Contrast` and `Color`.

All randomness comes from a `seed` tensor (shape [2], as `tf.random.stateless_*` expects).
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Callable
from typing import NamedTuple

import tensorflow as tf

IMG_MEAN_FILL = (124, 116, 104)
RAND_OPS = ('AutoContrast', 'Equalize', 'Invert', 'Rotate', 'Posterize', 'Solarize', 'SolarizeAdd',
            'Color', 'Contrast', 'Brightness', 'Sharpness', 'ShearX', 'ShearY', 'TranslateXRel',
            'TranslateYRel')
RAND_INCREASING_OPS = ('AutoContrast', 'Equalize', 'Invert', 'Rotate', 'PosterizeIncreasing',
                       'SolarizeIncreasing', 'SolarizeAdd', 'ColorIncreasing',
                       'ContrastIncreasing', 'BrightnessIncreasing', 'SharpnessIncreasing',
                       'ShearX', 'ShearY', 'TranslateXRel', 'TranslateYRel')
OPS = tuple(dict.fromkeys(RAND_INCREASING_OPS + RAND_OPS))
INTERPOLATIONS = ('random', 'bilinear', 'bicubic')

_MAX_LEVEL = 10.0
_PROB = 0.5
_SPEC_KEYS = ('m', 'n', 'mstd', 'inc')


@dataclasses.dataclass(frozen=True)
class RandAugmentConfig:
  """RandAugment settings; the defaults are timm's for a bare 'rand' spec."""
  num_ops: int = 2  # n: layers per image.
  magnitude: float = 10.0  # m, in [0, 10].
  magnitude_std: float = 0.0  # mstd.
  increasing: bool = False  # inc: the increasing op set.
  interpolation: str = 'random'  # Geometric ops: 'random' (per layer), 'bilinear' or 'bicubic'.
  fill: tuple[int, int, int] = IMG_MEAN_FILL  # Geometric ops' fill colour.

  def __post_init__(self):
    if self.interpolation not in INTERPOLATIONS:
      raise ValueError(f'interpolation must be one of {INTERPOLATIONS}, got {self.interpolation!r}')
    if self.num_ops < 0:
      raise ValueError(f'num_ops must be >= 0, got {self.num_ops}')

  @property
  def ops(self) -> tuple[str, ...]:
    return RAND_INCREASING_OPS if self.increasing else RAND_OPS


def parse_rand_augment(spec: str, **kwargs) -> RandAugmentConfig:
  """timm's RandAugment spec ('rand-m9-mstd0.5-inc1') -> config; kwargs set the other fields.

  Sections after 'rand' are <key><number> with key m (int), n (int), mstd (float) or inc (any
  number selects the increasing ops, as in timm 0.5.4).
  """
  head, *sections = spec.split('-')
  if head != 'rand':
    raise ValueError(f"RandAugment spec {spec!r} must start with 'rand', not {head!r}")
  values = {}
  for section in sections:
    match = re.fullmatch(r'(\D*)(\d.*)', section)
    if match is None:
      raise ValueError(f'RandAugment spec {spec!r}: section {section!r} is not <key><number>')
    key, value = match.groups()
    if key not in _SPEC_KEYS:
      raise ValueError(f'RandAugment spec {spec!r}: unsupported key {key!r} in section '
                       f'{section!r} (supported: {", ".join(_SPEC_KEYS)})')
    try:
      values[key] = float(value) if key == 'mstd' else int(value)
    except ValueError:
      raise ValueError(f'RandAugment spec {spec!r}: bad value {value!r} for {key!r} in section '
                       f'{section!r}') from None
  fields = {'num_ops': values.get('n', 2), 'magnitude': float(values.get('m', _MAX_LEVEL)),
            'magnitude_std': values.get('mstd', 0.0), 'increasing': 'inc' in values}
  return RandAugmentConfig(**{**fields, **kwargs})


# No tensor-dependent Python control flow anywhere: autograph's source conversion is skipped.
_no_autograph = tf.autograph.experimental.do_not_convert


def _f64(value) -> tf.Tensor:
  """float64 tensor; Python floats are converted directly, not through float32."""
  return tf.cast(tf.convert_to_tensor(value, dtype_hint=tf.float64), tf.float64)


def _signed(value: tf.Tensor, negate) -> tf.Tensor:
  return tf.where(tf.cast(negate, tf.bool), -value, value)


def _fraction(level) -> tf.Tensor:
  return _f64(level) / _MAX_LEVEL


def _enhance_arg(level, negate):
  return _fraction(level) * 1.8 + 0.1


def _enhance_increasing_arg(level, negate):
  return 1.0 + _signed(_fraction(level) * 0.9, negate)


_LEVEL_TO_ARG: dict[str, Callable[[tf.Tensor, tf.Tensor], tf.Tensor]] = {
    'Rotate': lambda level, negate: _signed(_fraction(level) * 30.0, negate),
    'Posterize': lambda level, negate: tf.floor(_fraction(level) * 4.0),
    'PosterizeIncreasing': lambda level, negate: 4.0 - tf.floor(_fraction(level) * 4.0),
    'Solarize': lambda level, negate: tf.floor(_fraction(level) * 256.0),
    'SolarizeIncreasing': lambda level, negate: 256.0 - tf.floor(_fraction(level) * 256.0),
    'SolarizeAdd': lambda level, negate: tf.floor(_fraction(level) * 110.0),
    'ShearX': lambda level, negate: _signed(_fraction(level) * 0.3, negate),
    'ShearY': lambda level, negate: _signed(_fraction(level) * 0.3, negate),
    'TranslateXRel': lambda level, negate: _signed(_fraction(level) * 0.45, negate),
    'TranslateYRel': lambda level, negate: _signed(_fraction(level) * 0.45, negate),
    **dict.fromkeys(('Color', 'Contrast', 'Brightness', 'Sharpness'), _enhance_arg),
    **dict.fromkeys(('ColorIncreasing', 'ContrastIncreasing', 'BrightnessIncreasing',
                     'SharpnessIncreasing'), _enhance_increasing_arg),
}


def level_to_arg(name: str, magnitude, negate=False) -> tf.Tensor | None:
  """timm's `LEVEL_TO_ARG[name]` (float64) at a clipped magnitude, with its random sign given.

  None for the ops without an argument (AutoContrast, Equalize, Invert).
  """
  if name not in OPS:
    raise ValueError(f'unknown op {name!r}; known: {OPS}')
  fn = _LEVEL_TO_ARG.get(name)
  return None if fn is None else fn(magnitude, negate)


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
  x0 = tf.cast(tf.clip_by_value(x0, -2.0, _f64(w)), tf.int32)
  y0 = tf.cast(tf.clip_by_value(y0, -2.0, _f64(h)), tf.int32)
  offsets = (-1, 0, 1, 2) if bicubic else (0, 1)
  combine = _cubic if bicubic else _linear
  pixels = _f64(image)
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
    inside = (xs >= 0.0) & (xs < _f64(shape[1])) & (ys >= 0.0) & (ys < _f64(shape[0]))
    out = _interpolate(image, xs - 0.5, ys - 0.5, bicubic)
    return tf.where(inside[..., None], out, fill)

  return sample


_SAMPLE = {False: _sampler(False), True: _sampler(True)}


# Colour ops: LUTs and blend products computed exactly, applied by the kernels.


def _per_channel(lut: tf.Tensor) -> tf.Tensor:
  return tf.tile(tf.cast(lut, tf.int32)[None], [3, 1])


def _auto_contrast(image: tf.Tensor) -> tf.Tensor:
  lo = tf.cast(tf.reduce_min(image, axis=[0, 1]), tf.int32)
  hi = tf.cast(tf.reduce_max(image, axis=[0, 1]), tf.int32)
  scale = 255.0 / _f64(tf.maximum(hi - lo, 1))
  offset = _f64(-lo) * scale
  mapped = _f64(tf.range(256))[None, :] * scale[:, None] + offset[:, None]
  lut = tf.clip_by_value(tf.cast(mapped, tf.int32), 0, 255)
  return _lookup(image, tf.where((hi <= lo)[:, None], tf.range(256)[None, :], lut))


def _equalize(image: tf.Tensor) -> tf.Tensor:
  hist = _histogram(image)
  last = 255 - tf.argmax(tf.reverse(tf.cast(hist > 0, tf.int32), axis=[1]), axis=1,
                         output_type=tf.int32)
  pixels = tf.reduce_sum(hist, axis=1)
  step = (pixels - tf.gather(hist, last, batch_dims=1)) // 255
  cumulative = tf.cumsum(hist, axis=1, exclusive=True)
  lut = tf.minimum((step[:, None] // 2 + cumulative) // tf.maximum(step, 1)[:, None], 255)
  return _lookup(image, tf.where((step == 0)[:, None], tf.range(256)[None, :], lut))


def _invert(image: tf.Tensor) -> tf.Tensor:
  return _lookup(image, _per_channel(255 - tf.range(256)))


def _posterize(image: tf.Tensor, bits) -> tf.Tensor:
  shift = tf.clip_by_value(8 - tf.cast(bits, tf.int32), 0, 8)
  levels = tf.range(256)
  return _lookup(image, _per_channel(tf.bitwise.left_shift(tf.bitwise.right_shift(levels, shift),
                                                           shift)))


def _solarize(image: tf.Tensor, threshold) -> tf.Tensor:
  levels = tf.range(256)
  return _lookup(image, _per_channel(tf.where(levels < tf.cast(threshold, tf.int32), levels,
                                              255 - levels)))


def _solarize_add(image: tf.Tensor, add) -> tf.Tensor:
  levels = tf.range(256)
  added = tf.minimum(255, levels + tf.cast(add, tf.int32))
  return _lookup(image, _per_channel(tf.where(levels < 128, added, levels)))


def _products(factor) -> tf.Tensor:
  """float32(factor) * k for k = -255 .. 255, rounded to float32 as in Pillow's blend."""
  return tf.cast(_f64(factor), tf.float32) * tf.range(-255.0, 256.0)


def _blend_constant(image: tf.Tensor, grey, factor) -> tf.Tensor:
  """`Image.blend` with a uniform degenerate image of level `grey`, as a LUT."""
  grey = tf.cast(grey, tf.int32)
  value = tf.cast(grey, tf.float32) + tf.gather(_products(factor), tf.range(256) - grey + 255)
  return _lookup(image, _per_channel(tf.cast(tf.clip_by_value(value, 0.0, 255.0), tf.int32)))


def _brightness(image: tf.Tensor, factor) -> tf.Tensor:
  return _blend_constant(image, 0, factor)


def _contrast(image: tf.Tensor, factor) -> tf.Tensor:
  mean = _f64(_grey_sum(image)) / _f64(tf.shape(image)[0] * tf.shape(image)[1])
  return _blend_constant(image, tf.floor(mean + 0.5), factor)


def _color(image: tf.Tensor, factor) -> tf.Tensor:
  return _blend_grey(image, _products(factor))


def _sharpness(image: tf.Tensor, factor) -> tf.Tensor:
  return _blend_smooth(image, _products(factor))


# Geometric ops.


def _affine(image: tf.Tensor, matrix: list, bicubic, fill) -> tf.Tensor:
  """`Image.transform(size, AFFINE, matrix, BICUBIC if bicubic else BILINEAR, fillcolor=fill)`:
  output (x, y) samples source (a x' + b y' + c, d x' + e y' + f), x' = x + 0.5, y' = y + 0.5,
  computed in float64 in Pillow's order. `bicubic` is a Python bool or a bool tensor."""
  a, b, c, d, e, f = (_f64(v) for v in matrix)
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


def _rotate(image: tf.Tensor, degrees, bicubic, fill) -> tf.Tensor:
  """`Image.rotate(degrees, resample, fillcolor=fill)`: about the centre, same size."""
  shape = tf.shape(image)
  cx, cy = _f64(shape[1]) / 2.0, _f64(shape[0]) / 2.0
  angle = -(tf.math.floormod(_f64(degrees), 360.0) * (math.pi / 180.0))
  cos, sin = _round15(tf.cos(angle)), _round15(tf.sin(angle))
  matrix = [cos, sin, cos * -cx + sin * -cy + cx, -sin, cos, -sin * -cx + cos * -cy + cy]
  return _affine(image, matrix, bicubic, fill)


def _shear_x(image, factor, bicubic, fill):
  return _affine(image, [1.0, factor, 0.0, 0.0, 1.0, 0.0], bicubic, fill)


def _shear_y(image, factor, bicubic, fill):
  return _affine(image, [1.0, 0.0, 0.0, factor, 1.0, 0.0], bicubic, fill)


def _translate_x_rel(image, pct, bicubic, fill):
  pixels = _f64(pct) * _f64(tf.shape(image)[1])
  return _affine(image, [1.0, 0.0, pixels, 0.0, 1.0, 0.0], bicubic, fill)


def _translate_y_rel(image, pct, bicubic, fill):
  pixels = _f64(pct) * _f64(tf.shape(image)[0])
  return _affine(image, [1.0, 0.0, 0.0, 0.0, 1.0, pixels], bicubic, fill)


_GEOMETRIC = {'Rotate': _rotate, 'ShearX': _shear_x, 'ShearY': _shear_y,
              'TranslateXRel': _translate_x_rel, 'TranslateYRel': _translate_y_rel}
_NO_ARG = {'AutoContrast': _auto_contrast, 'Equalize': _equalize, 'Invert': _invert}
_WITH_ARG = {'Posterize': _posterize, 'Solarize': _solarize, 'SolarizeAdd': _solarize_add,
             'Color': _color, 'Contrast': _contrast, 'Brightness': _brightness,
             'Sharpness': _sharpness}


@_no_autograph
def apply_op(image: tf.Tensor, name: str, magnitude, negate=False, bicubic=False,
             fill: tuple[int, int, int] = IMG_MEAN_FILL) -> tf.Tensor:
  """timm's op `name` at a (clipped) magnitude on a uint8 RGB image [H, W, 3], with its random
  choices given: `negate` flips the argument's sign (signed ops), `bicubic` selects bicubic over
  bilinear resampling (geometric ops); Python bools or scalar bool tensors."""
  arg = level_to_arg(name, magnitude, negate)
  image = tf.convert_to_tensor(image, tf.uint8)
  if name in _GEOMETRIC:
    return _GEOMETRIC[name](image, arg, bicubic, fill)
  if arg is None:
    return _NO_ARG[name](image)
  return _WITH_ARG[name.removesuffix('Increasing')](image, arg)


class LayerParams(NamedTuple):
  """Random choices of the RandAugment layers, each of shape [num_ops]."""
  op: tf.Tensor  # int32 index into config.ops
  applied: tf.Tensor  # bool
  magnitude: tf.Tensor  # float64, clipped to [0, 10]
  negate: tf.Tensor  # bool
  bicubic: tf.Tensor  # bool


@_no_autograph
def sample_layers(seed: tf.Tensor, config: RandAugmentConfig) -> LayerParams:
  """Draws every random choice of `rand_augment` from `seed` (int32 or int64, same draws)."""
  n = config.num_ops
  seeds = tf.unstack(tf.random.experimental.stateless_split(tf.cast(seed, tf.int64), 5))

  def uniform(s):
    return tf.random.stateless_uniform([n], s, dtype=tf.float64)

  op = tf.random.stateless_uniform([n], seeds[0], minval=0, maxval=len(config.ops),
                                   dtype=tf.int32)
  magnitude = tf.fill([n], tf.constant(config.magnitude, tf.float64))
  if config.magnitude_std > 0:
    magnitude += config.magnitude_std * tf.random.stateless_normal([n], seeds[2], dtype=tf.float64)
  if config.interpolation == 'random':
    bicubic = uniform(seeds[4]) < 0.5
  else:
    bicubic = tf.fill([n], config.interpolation == 'bicubic')
  return LayerParams(op=op, applied=uniform(seeds[1]) <= _PROB,
                     magnitude=tf.clip_by_value(magnitude, 0.0, _MAX_LEVEL),
                     negate=uniform(seeds[3]) > 0.5, bicubic=bicubic)


def _apply_layer(image: tf.Tensor, config: RandAugmentConfig, op, applied, magnitude, negate,
                 bicubic) -> tf.Tensor:
  def branch(name):
    return lambda: apply_op(image, name, magnitude, negate, bicubic, config.fill)

  index = tf.where(applied, op, len(config.ops))
  return tf.switch_case(index, [branch(name) for name in config.ops] + [lambda: image])


@_no_autograph
def rand_augment(image: tf.Tensor, seed: tf.Tensor, config: RandAugmentConfig) -> tf.Tensor:
  """timm's RandAugment on a uint8 RGB image [H, W, 3]; `seed` is a [2] int tensor."""
  image = tf.convert_to_tensor(image, tf.uint8)
  layers = sample_layers(seed, config)
  out = image
  for i in range(config.num_ops):
    out = _apply_layer(out, config, *(field[i] for field in layers))
  return tf.ensure_shape(out, image.shape)


# ColorJitter.


@_no_autograph
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


@_no_autograph
def apply_color_jitter(image: tf.Tensor, factors: tf.Tensor, order: tf.Tensor) -> tf.Tensor:
  """ImageEnhance Brightness (0), Contrast (1), Color (2) with `factors`, in `order`."""
  image = tf.convert_to_tensor(image, tf.uint8)
  out = image
  for k in range(3):
    index = order[k]
    factor = tf.gather(factors, index)
    out = tf.switch_case(index, [lambda fn=fn, x=out, f=factor: fn(x, f)
                                 for fn in (_brightness, _contrast, _color)])
  return tf.ensure_shape(out, image.shape)


@_no_autograph
def color_jitter(image: tf.Tensor, seed: tf.Tensor, brightness: float = 0.4,
                 contrast: float = 0.4, saturation: float = 0.4) -> tf.Tensor:
  """torchvision's `ColorJitter(brightness, contrast, saturation)` on a uint8 RGB image."""
  factors, order = color_jitter_params(seed, brightness, contrast, saturation)
  return apply_color_jitter(image, factors, order)
