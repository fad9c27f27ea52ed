"""Pillow's antialiased resize on the accelerator: each image's crop, at the origin of a fixed
canvas, to a square output, bit-exact to Pillow 13's `Image.resize` (BILINEAR or BICUBIC).

Pillow (`libImaging/Resample.c`) resizes in two separable passes. For each output position i
of an axis that shrinks or stretches `n` input pixels to `m`:

* scale = n / m, filterscale = max(scale, 1), support = filter support (1 bilinear, 2 bicubic
  with a = -0.5) * filterscale; center = (i + 0.5) * scale;
* the taps run from xmin = int(center - support + 0.5) (at least 0) to int(center + support +
  0.5) (at most n); tap x weighs filter((x - center + 0.5) / filterscale), the weights summed
  in order and divided by their sum (so the truncated kernels at the edges are renormalised);
* the weights become 22-bit fixed point, int(w * 2^22 +- 0.5), and each pass sums pixels times
  coefficients in integers and keeps clip((sum + 2^21) >> 22, 0, 255): uint8 between the passes.
* Pillow 13 runs the vertical pass first when the height shrinks by more than twice as many
  pixels as the width (n_h - m > 0 and n_h - m > 2 (n_w - m)); horizontally first otherwise.

Here the coefficients are computed in float64 (a scoped `jax.enable_x64`, on a few numbers per
output position) exactly as Pillow computes them, and placed in a dense [out, canvas] matrix per
image and axis, zero outside the crop: canvas pixels outside the crop never contribute. A pass
is then one batched matmul. It is exact in bfloat16 with float32 accumulation: each coefficient
is split into three signed base-256 digits of at most 128 in magnitude (exact in bfloat16, as
are pixels up to 255), every partial sum is an integer below 2^24 (exact in float32, in any
order of accumulation), and the digits' sums are recombined in int32. So the result does not
depend on the platform's matmul precision or its accumulation order.

The horizontal flip is folded into the horizontal matrix (its output rows reversed), so it
costs nothing; a crop of exactly the output size is the identity (Pillow's coefficients at scale
1 are exactly one tap of 2^22).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

# The default canvas side (`config.data.canvas_size`): every RandomResizedCrop crop of an image up
# to 512 x 512 fits, and ImageNet's training images are mostly 500 pixels on the longer side
# (docs/design.md has the distribution behind the choice).
CANVAS_SIZE = 512
PRECISION_BITS = 22  # Pillow's fixed-point coefficients: 32 - 8 - 2.
SUPPORT = {False: 1.0, True: 2.0}  # bilinear, bicubic
_DIGITS = 3  # Signed base-256 digits of a coefficient (|coefficient| < 2^23).


def max_taps(canvas_size: int, out_size: int) -> int:
  """Pillow's largest kernel size (ksize) for inputs up to `canvas_size`: 2 ceil(support) + 1."""
  return 2 * math.ceil(SUPPORT[True] * max(canvas_size / out_size, 1.0)) + 1


def _filter(x: jax.Array, bicubic: jax.Array) -> jax.Array:
  """Pillow's bilinear (triangle) or bicubic (a = -0.5) filter, float64."""
  a = -0.5
  x = jnp.abs(x)
  cubic = jnp.where(x < 1.0, ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0,
                    jnp.where(x < 2.0, (((x - 5.0) * x + 8.0) * x - 4.0) * a, 0.0))
  linear = jnp.where(x < 1.0, 1.0 - x, 0.0)
  return jnp.where(bicubic, cubic, linear)


def coefficients(in_size: jax.Array, bicubic: jax.Array, out_size: int,
                 canvas_size: int) -> jax.Array:
  """Pillow's fixed-point coefficients of resizing `in_size` pixels to `out_size`, as a dense
  int32 [B, out_size, canvas_size] matrix per image (zero at and beyond `in_size`).

  `in_size` int [B] in [1, canvas_size], `bicubic` bool [B].
  """
  taps = max_taps(canvas_size, out_size)
  with jax.enable_x64(True):
    n = in_size.astype(jnp.float64)[:, None]
    scale = n / out_size
    filterscale = jnp.maximum(scale, 1.0)
    support = jnp.where(bicubic, SUPPORT[True], SUPPORT[False])[:, None] * filterscale
    inverse = 1.0 / filterscale
    center = (jnp.arange(out_size, dtype=jnp.float64)[None, :] + 0.5) * scale
    # int() truncates toward zero; a negative start is clamped to 0 either way.
    xmin = jnp.maximum(jnp.trunc(center - support + 0.5), 0.0)
    xmax = jnp.minimum(jnp.trunc(center + support + 0.5), n)
    weights, total = [], jnp.zeros_like(center)
    for t in range(taps):  # Summed in Pillow's order.
      x = xmin + t
      w = jnp.where(x < xmax, _filter((x - center + 0.5) * inverse, bicubic[:, None]), 0.0)
      weights.append(w)
      total = total + w
    weights = jnp.stack(weights, axis=-1)
    normalised = jnp.where(total[..., None] != 0.0, weights / total[..., None], weights)
    scaled = normalised * float(1 << PRECISION_BITS)
    fixed = jnp.trunc(jnp.where(scaled < 0, scaled - 0.5, scaled + 0.5)).astype(jnp.int32)
    start = xmin.astype(jnp.int32)
  offset = jnp.arange(canvas_size, dtype=jnp.int32)[None, None, :] - start[..., None]
  dense = jnp.take_along_axis(fixed, jnp.clip(offset, 0, taps - 1), axis=-1)
  return jnp.where((offset >= 0) & (offset < taps), dense, 0)


def _digits(matrix: jax.Array) -> jax.Array:
  """int32 [B, m, n] (|values| < 2^23) -> bfloat16 [B, 3 m, n]: signed base-256 digits, the
  least significant first, each in [-128, 127]."""
  digits = []
  rest = matrix
  for _ in range(_DIGITS):
    digit = ((rest + 128) & 255) - 128
    digits.append(digit)
    rest = (rest - digit) >> 8
  return jnp.concatenate(digits, axis=1).astype(jnp.bfloat16)


def _recombine(sums: jax.Array, axis: int) -> jax.Array:
  """The digit sums (exact integers in float32, the digit index major along `axis`) -> the
  pass's uint8 result, clip((sum + 2^21) >> 22)."""
  parts = jnp.split(sums.astype(jnp.int32), _DIGITS, axis=axis)
  total = parts[0] + (parts[1] << 8) + (parts[2] << 16)
  shifted = (total + (1 << (PRECISION_BITS - 1))) >> PRECISION_BITS
  return jnp.clip(shifted, 0, 255).astype(jnp.uint8)


def _pass_columns(images: jax.Array, matrix: jax.Array) -> jax.Array:
  """One pass along axis 2: uint8 [B, R, C, 3] x int32 [B, m, C] -> uint8 [B, R, m, 3]."""
  sums = jnp.einsum('brcz,bmc->brmz', images.astype(jnp.bfloat16), _digits(matrix),
                    precision=jax.lax.Precision.DEFAULT, preferred_element_type=jnp.float32)
  return _recombine(sums, axis=2)


def _pass_rows(images: jax.Array, matrix: jax.Array) -> jax.Array:
  """One pass along axis 1: uint8 [B, R, C, 3] x int32 [B, m, R] -> uint8 [B, m, C, 3]."""
  sums = jnp.einsum('brcz,bmr->bmcz', images.astype(jnp.bfloat16), _digits(matrix),
                    precision=jax.lax.Precision.DEFAULT, preferred_element_type=jnp.float32)
  return _recombine(sums, axis=1)


def resize_crops(canvas: jax.Array, crop_size: jax.Array, bicubic: jax.Array, out_size: int,
                 flip: jax.Array | None = None) -> jax.Array:
  """Pillow's `crop.resize((out_size, out_size), BICUBIC if bicubic else BILINEAR)` of each
  image's crop, then its horizontal flip where `flip`.

  `canvas` uint8 [B, S, S, 3] holds each crop at its origin (the rest is ignored);
  `crop_size` int [B, 2] is (height, width), each in [1, S]; `bicubic` and `flip` bool [B].
  Returns uint8 [B, out_size, out_size, 3].
  """
  size = canvas.shape[1]
  if canvas.shape[2] != size:
    raise ValueError(f'the canvas must be square, got {canvas.shape[1:3]}')
  height, width = crop_size[:, 0], crop_size[:, 1]
  rows = coefficients(height, bicubic, out_size, size)
  cols = coefficients(width, bicubic, out_size, size)
  if flip is not None:
    cols = jnp.where(flip[:, None, None], cols[:, ::-1], cols)
  # Pillow 13's pass order; the vertical-first images are transposed, so that both orders are
  # one columns pass then one rows pass.
  vertical_first = ((height - out_size) > 0) & ((height - out_size) > 2 * (width - out_size))
  transpose = lambda x: jnp.swapaxes(x, 1, 2)
  swap = vertical_first[:, None, None]
  source = jnp.where(vertical_first[:, None, None, None], transpose(canvas), canvas)
  first, second = jnp.where(swap, rows, cols), jnp.where(swap, cols, rows)
  out = _pass_rows(_pass_columns(source, first), second)
  return jnp.where(vertical_first[:, None, None, None], transpose(out), out)
