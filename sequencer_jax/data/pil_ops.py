"""Pillow's image operations in JAX on batches of images, reproducing its arithmetic.

Used by RandAugment (`randaugment.py`) and ColorJitter (`color_jitter.py`) inside the jitted
training step. The ops take uint8 RGB images [B, H, W, 3] of a static size and per-image
arguments ([B] arrays), already mapped from a magnitude; everything is jittable, every per-image
choice a select or a gather.

Pillow's arithmetic is reproduced op by op:

* `ImageEnhance` is `Image.blend(degenerate, image, factor)`: `trunc(clip(d + a (x - d)))` in
  float32 with a = float32(factor). The degenerate image is black (Brightness), grey
  `int(mean(L) + 0.5)` (Contrast), L = (19595 R + 38470 G + 7471 B + 0x8000) >> 16 replicated
  (Color), or the SMOOTH filter (Sharpness: 3x3 kernel [[1, 1, 1], [1, 5, 1], [1, 1, 1]] / 13
  rounded half up, border pixels unchanged). Factor 1 is an exact identity.
* `ImageOps.autocontrast` maps each channel with `int(i * scale + offset)` from its [lo, hi];
  `ImageOps.equalize` uses per-channel LUTs `(step // 2 + cumulative count) // step`, step =
  (pixels - count of the highest level) // 255 (no change if 0), values over 255 clipped as
  `Image.point` does. Posterize with 0 bits gives black (Pillow < 10 computed it; newer Pillow
  refuses 0 bits). These, Invert, Solarize, SolarizeAdd, Brightness and Contrast are
  per-channel lookup tables [B, 3, 256].
* `Image.transform(AFFINE)` and `Image.rotate` (about the centre, matrix entries rounded to 15
  decimals) sample output pixel (x, y) at source point (a x' + b y' + c, d x' + e y' + f),
  x' = x + 0.5, y' = y + 0.5, in float64; points outside [0, W) x [0, H) keep the fill colour,
  others are shifted by -0.5 and interpolated with edge-clamped taps: bilinear, or Pillow's
  affine bicubic (cubic convolution with a = -1, not the a = -0.5 of `resize`, in Pillow's
  factored form, rows first), in float64, then truncated (bicubic clipped to [0, 255] first).
  The identity matrix is an exact identity.

float64 runs in scoped `jax.enable_x64(True)` blocks (the geometry, AutoContrast's stretch):
float32 coordinates put many results within 1e-13 of an integer on the wrong side. Results leave
those blocks as uint8, int32 or float32, and every dtype inside them is explicit.

XLA rewrites divisions by constants into multiplications (`divide` keeps them divisions), and
XLA (CPU and GPU) contracts a multiply followed by an add into one FMA, which rounds differently
from Pillow's separate operations. So no multiply feeds an add directly: the blend products
float32(a k), k = x - d in [-255, 255], are a per-image table of 511 values taken in float64 and
rounded once to float32 (the conversion keeps them apart from the addition); AutoContrast's
i * (255 / n) for all i and n is a constant table; every float64 product of the geometry passes
through `rounded`, a select that the compiler cannot see through. Python's `round(x, 15)` of
the rotation entries is reproduced exactly (`_round15`). All ops are then bit-exact against
Pillow on the CPU (tested at XLA's backend optimisation levels 0 and 3).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

_LEVELS = np.arange(256, dtype=np.int32)
# AutoContrast's i * (255 / n) for n = hi - lo in [1, 255] (row 0 unused), i in [0, 255].
_CONTRAST_STRETCH = np.arange(256.0)[None, :] * np.concatenate(
    [[0.0], 255.0 / np.arange(1.0, 256.0)])[:, None]
_BLEND_STEPS = np.arange(-255.0, 256.0)  # float64: k = x - d.


def rounded(product: jax.Array) -> jax.Array:
  """A product rounded on its own before any addition: the select (true unless the
  product is NaN) keeps XLA and LLVM from contracting it with the next add into an FMA."""
  return jnp.where(product == product, product, jnp.zeros((), product.dtype))


def divide(x: jax.Array, divisor: float) -> jax.Array:
  """x / divisor, a true division: XLA rewrites a division by a constant into a multiplication
  by its rounded reciprocal (3e15 / 1e15 = 3 + 1 ulp), so the divisor is made opaque."""
  return x / jnp.where(jnp.isnan(x), jnp.ones((), x.dtype), jnp.asarray(divisor, x.dtype))


def _per_image_take(table: jax.Array, index: jax.Array) -> jax.Array:
  """table[b][index[b]] for every image b (a gather with a batch dimension)."""
  return jax.vmap(lambda t, i: t[i])(table, index)


# Lookup tables: [B, 3, 256] int32 in [0, 255] (or [B, 256] for all channels alike).

def lookup(images: jax.Array, luts: jax.Array) -> jax.Array:
  """out[b, ..., c] = luts[b, c, images[b, ..., c]]; `luts` [B, 3, 256] or [B, 256] int32."""
  b = images.shape[0]
  luts = jnp.broadcast_to(luts.reshape(b, -1, 256), (b, 3, 256)).reshape(b, 768)
  index = images.astype(jnp.int32) + jnp.arange(0, 768, 256, dtype=jnp.int32)
  return _per_image_take(luts, index).astype(jnp.uint8)


def histogram(images: jax.Array) -> jax.Array:
  """Per-image, per-channel histograms [B, 3, 256] int32 (`Image.histogram`)."""
  b = images.shape[0]
  index = (images.astype(jnp.int32) + jnp.arange(0, 768, 256, dtype=jnp.int32)
           + 768 * jnp.arange(b, dtype=jnp.int32)[:, None, None, None])
  counts = jax.ops.segment_sum(jnp.ones(index.size, jnp.int32), index.reshape(-1),
                               num_segments=768 * b)
  return counts.reshape(b, 3, 256)


def identity_lut(batch: int) -> jax.Array:
  return jnp.broadcast_to(jnp.asarray(_LEVELS), (batch, 256))


def invert_lut(batch: int) -> jax.Array:
  return 255 - identity_lut(batch)


def posterize_lut(bits: jax.Array) -> jax.Array:
  """`ImageOps.posterize(bits)`; 0 bits is black."""
  shift = jnp.clip(8 - bits.astype(jnp.int32), 0, 8)[:, None]
  return jnp.left_shift(jnp.right_shift(jnp.asarray(_LEVELS), shift), shift)


def solarize_lut(threshold: jax.Array) -> jax.Array:
  """`ImageOps.solarize(threshold)`: levels >= threshold inverted."""
  levels = jnp.asarray(_LEVELS)
  return jnp.where(levels < threshold.astype(jnp.int32)[:, None], levels, 255 - levels)


def solarize_add_lut(addend: jax.Array) -> jax.Array:
  """timm's `solarize_add`: min(255, i + addend) below 128."""
  levels = jnp.asarray(_LEVELS)
  return jnp.where(levels < 128, jnp.minimum(255, levels + addend.astype(jnp.int32)[:, None]),
                   levels)


def _hist_extremes(hist: jax.Array) -> tuple[jax.Array, jax.Array]:
  """The lowest and highest level present, [B, 3] int32 each."""
  present = hist > 0
  lo = jnp.argmax(present, axis=-1).astype(jnp.int32)
  hi = 255 - jnp.argmax(present[..., ::-1], axis=-1).astype(jnp.int32)
  return lo, hi


def auto_contrast_lut(hist: jax.Array) -> jax.Array:
  """`ImageOps.autocontrast`'s LUTs from `histogram`: int(i * scale + offset) per channel,
  scale = 255 / (hi - lo), offset = -lo * scale, i.e. stretch[i] - stretch[lo] with
  stretch = i * scale (a float64 subtraction of constants)."""
  lo, hi = _hist_extremes(hist)
  with jax.enable_x64(True):
    stretch = jnp.asarray(_CONTRAST_STRETCH, jnp.float64)[jnp.maximum(hi - lo, 1)]
    mapped = stretch - jnp.take_along_axis(stretch, lo[..., None], axis=-1)
    lut = jnp.clip(mapped.astype(jnp.int32), 0, 255)  # int() truncates toward zero.
  return jnp.where((hi <= lo)[..., None], jnp.asarray(_LEVELS), lut)


def equalize_lut(hist: jax.Array) -> jax.Array:
  """`ImageOps.equalize`'s LUTs from `histogram`."""
  _, last = _hist_extremes(hist)
  pixels = jnp.sum(hist, axis=-1, dtype=jnp.int32)
  step = (pixels - jnp.take_along_axis(hist, last[..., None], axis=-1)[..., 0]) // 255
  cumulative = jnp.cumsum(hist, axis=-1, dtype=jnp.int32) - hist
  lut = jnp.minimum((step[..., None] // 2 + cumulative) // jnp.maximum(step, 1)[..., None], 255)
  return jnp.where((step == 0)[..., None], jnp.asarray(_LEVELS), lut)


# ImageEnhance: blends in float32.

def grey(x: jax.Array) -> jax.Array:
  """PIL's RGB -> 'L' of int32 RGB [B, H, W, 3] -> [B, H, W, 1] int32."""
  weighted = x[..., 0:1] * 19595 + x[..., 1:2] * 38470 + x[..., 2:3] * 7471 + 0x8000
  return jnp.right_shift(weighted, 16)


def mean_grey(images: jax.Array) -> jax.Array:
  """ImageEnhance.Contrast's level int(mean(L) + 0.5) per image, [B] int32, exactly as
  floor((2 sum + n) / (2 n)) (a mean is never within 1 / (2 n) of a half, far above the
  double rounding of Pillow's sum / n)."""
  _, h, w, _ = images.shape
  total = jnp.sum(grey(images.astype(jnp.int32)), axis=(1, 2, 3), dtype=jnp.int32)
  return (2 * total + h * w) // (2 * h * w)


def smooth(x: jax.Array) -> jax.Array:
  """PIL's ImageFilter.SMOOTH of int32 RGB [B, H, W, 3]: Pillow's float32 sum + 0.5, truncated,
  is floor(total / 13 + 0.5) exactly (total / 13 is never within 1/26 of a half)."""
  _, h, w, _ = x.shape
  padded = jnp.pad(x, [(0, 0), (1, 1), (1, 1), (0, 0)])
  rows = padded[:, :, :-2] + padded[:, :, 1:-1] + padded[:, :, 2:]
  total = rows[:, :-2] + rows[:, 1:-1] + rows[:, 2:] + 4 * x
  inner_rows = (np.arange(h) > 0) & (np.arange(h) < h - 1)
  inner_cols = (np.arange(w) > 0) & (np.arange(w) < w - 1)
  inner = inner_rows[:, None, None] & inner_cols[None, :, None]
  return jnp.where(inner, (2 * total + 13) // 26, x)


def blend_products(factor: jax.Array) -> jax.Array:
  """products[b, k] = float32(a_b (k - 255)), a = float32(factor) [B]: the exact product in
  float64 rounded once, the float32 product Pillow takes, kept apart from the addition."""
  with jax.enable_x64(True):
    alpha = factor.astype(jnp.float32).astype(jnp.float64)
    return (alpha[:, None] * jnp.asarray(_BLEND_STEPS, jnp.float64)).astype(jnp.float32)


def blend(x: jax.Array, degenerate: jax.Array, products: jax.Array) -> jax.Array:
  """`Image.blend(degenerate, image, a)` of int32 images [B, ...] given `blend_products`:
  Pillow's float32 `d + a * (x - d)` is one exact addition d + products[x - d + 255]."""
  b = x.shape[0]
  index = jnp.broadcast_to(x - degenerate + 255, x.shape).reshape(b, -1)
  value = degenerate.astype(jnp.float32) + _per_image_take(products, index).reshape(x.shape)
  return jnp.clip(value, 0.0, 255.0).astype(jnp.uint8)


def blend_lut(level: jax.Array, products: jax.Array) -> jax.Array:
  """The LUT [B, 256] of `Image.blend` with a uniform degenerate image of `level` [B] (0:
  Brightness, `mean_grey`: Contrast)."""
  levels = jnp.broadcast_to(jnp.asarray(_LEVELS), (level.shape[0], 256))
  return blend(levels, level.astype(jnp.int32)[:, None], products).astype(jnp.int32)


def enhance(images: jax.Array, factor: jax.Array, sharpness: jax.Array | bool = False
            ) -> jax.Array:
  """ImageEnhance.Color (blend with the grey image) or, where `sharpness` (a Python bool, or [B]
  bool), Sharpness (with the SMOOTH filter) at `factor` [B]; factor 1 is an exact identity."""
  x = images.astype(jnp.int32)
  if isinstance(sharpness, bool):
    degenerate = smooth(x) if sharpness else grey(x)
  else:
    degenerate = jnp.where(jnp.asarray(sharpness, bool).reshape(-1, 1, 1, 1), smooth(x), grey(x))
  return blend(x, degenerate, blend_products(factor))


# Affine transforms in float64.

def _linear(a: jax.Array, b: jax.Array, d: jax.Array) -> jax.Array:
  """Pillow's BILINEAR macro."""
  return a + rounded((b - a) * d)


def _cubic(v1: jax.Array, v2: jax.Array, v3: jax.Array, v4: jax.Array, d: jax.Array) -> jax.Array:
  """Pillow's affine BICUBIC macro: cubic convolution with a = -1, in Pillow's factored form."""
  p2 = v3 - v1
  p3 = 2.0 * (v1 - v2) + v3 - v4  # 2 (v1 - v2) is exact: no rounding to keep apart.
  p4 = v2 - v1 - v3 + v4
  return v2 + rounded(d * (p2 + rounded(d * (p3 + rounded(d * p4)))))


# Veltkamp's splitter 2^27 + 1, and 1e15 split by it (hi + lo == 1e15, 26 bits each).
_SPLITTER = 134217729.0
_TEN15_HI, _TEN15_LO = 1000000003768320.0, -3768320.0


def _split(a: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Veltkamp's split of float64 `a` into high + low halves of 26 bits (exact)."""
  c = rounded(_SPLITTER * a)
  high = c - (c - a)
  return high, a - high


def _round15(x: jax.Array) -> jax.Array:
  """Python's `round(x, 15)` of float64 `x` in [-1, 1]: the double nearest N / 1e15, N the
  exact x 1e15 rounded half to even. round(x * 1e15) / 1e15 rounds twice and differs for 5% of
  600k sampled values (7% of the rotation cosines at float32 magnitudes); here the product's
  rounding error e (x 1e15 = p + e exactly, Dekker's product) decides the ties of p."""
  p = rounded(x * 1e15)
  high, low = _split(x)
  e = (((rounded(high * _TEN15_HI) - p) + rounded(high * _TEN15_LO))
       + rounded(low * _TEN15_HI)) + rounded(low * _TEN15_LO)
  n = jnp.floor(p)
  above = ((p - n) - 0.5) + e  # p - n and (p - n) - 0.5 are exact near a half: its sign is.
  odd = jnp.remainder(n, 2.0) != 0.0
  n = n + jnp.where((above > 0.0) | ((above == 0.0) & odd), 1.0, 0.0)
  return divide(n, 1e15)  # N and 1e15 are exact: one correctly rounded division.


def rotation_matrix(degrees: jax.Array, height: int, width: int) -> jax.Array:
  """`Image.rotate(degrees)`'s affine matrix (about the centre, same size), [B, 6] float64 from
  float64 `degrees` [B]; call it inside `jax.enable_x64(True)`."""
  with jax.enable_x64(True):
    cx, cy = width / 2.0, height / 2.0
    angle = -(jnp.remainder(degrees.astype(jnp.float64), 360.0) * (math.pi / 180.0))
    cos, sin = _round15(jnp.cos(angle)), _round15(jnp.sin(angle))
    # Python's `a * x + b * y + c` with c = 0.0, then `+= center`.
    c = (rounded(cos * -cx) + rounded(sin * -cy) + 0.0) + cx
    f = (rounded(-sin * -cx) + rounded(cos * -cy) + 0.0) + cy
    return jnp.stack([cos, sin, c, -sin, cos, f], axis=-1)


def affine(images: jax.Array, matrix: jax.Array, bicubic: jax.Array,
           fill: tuple[int, int, int] = (0, 0, 0)) -> jax.Array:
  """`Image.transform(AFFINE, matrix)` of each image with its own float64 matrix [B, 6] (call it
  inside `jax.enable_x64(True)`) and filter (`bicubic` [B] bool, else bilinear); `fill` where
  the source is outside the image."""
  b, h, w, _ = images.shape
  with jax.enable_x64(True):
    matrix = matrix.astype(jnp.float64)
    a0, a1, a2, a3, a4, a5 = (matrix[:, k] for k in range(6))
    xin = jnp.arange(w, dtype=jnp.float64) + 0.5
    yin = jnp.arange(h, dtype=jnp.float64) + 0.5
    # Pillow's a x' + b y' + c, summed in its order; the products are per column and row.
    xs = ((rounded(a0[:, None] * xin)[:, None, :] + rounded(a1[:, None] * yin)[:, :, None])
          + a2[:, None, None])
    ys = ((rounded(a3[:, None] * xin)[:, None, :] + rounded(a4[:, None] * yin)[:, :, None])
          + a5[:, None, None])
    inside = (xs >= 0.0) & (xs < float(w)) & (ys >= 0.0) & (ys < float(h))
    x, y = xs - 0.5, ys - 0.5
    x0, y0 = jnp.floor(x), jnp.floor(y)
    dx, dy = (x - x0)[..., None], (y - y0)[..., None]
    # Points outside (filled anyway) are clamped first so that the int32 casts are defined.
    x0 = jnp.clip(x0, -2.0, float(w)).astype(jnp.int32)
    y0 = jnp.clip(y0, -2.0, float(h)).astype(jnp.int32)
    pixels = images.reshape(b, h * w, 3)  # Gathered as uint8, converted per tap.
    cols = [jnp.clip(x0 + k, 0, w - 1) for k in (-1, 0, 1, 2)]
    taps = [[_per_image_take(pixels, jnp.clip(y0 + k, 0, h - 1) * w + col).astype(jnp.float64)
             for col in cols] for k in (-1, 0, 1, 2)]
    cubic = _cubic(*(_cubic(*row, dx) for row in taps), dy)
    cubic = jnp.clip(cubic, 0.0, 255.0).astype(jnp.uint8)
    linear = _linear(*(_linear(row[1], row[2], dx) for row in taps[1:3]), dy).astype(jnp.uint8)
    out = jnp.where(jnp.asarray(bicubic, bool).reshape(-1, 1, 1, 1), cubic, linear)
    return jnp.where(inside[..., None], out, jnp.asarray(fill, jnp.uint8))
