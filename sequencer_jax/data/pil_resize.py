"""Pillow's antialiased resize on the accelerator, bit-exact to Pillow 13's `Image.resize`
(BILINEAR or BICUBIC), with coefficients computed on the host.

Pillow (`libImaging/Resample.c`) resizes in two separable passes. For output position i of an
axis that resizes `n` input pixels to `m`:

* scale = n / m, filterscale = max(scale, 1), support = filter support (1 bilinear, 2 bicubic
  with a = -0.5) * filterscale; center = (i + 0.5) * scale;
* the taps run from xmin = int(center - support + 0.5) (at least 0) to int(center + support +
  0.5) (at most n); tap x weighs filter((x - center + 0.5) / filterscale), the weights summed
  in order and divided by their sum (so the truncated kernels at the edges are renormalised);
* the weights become 22-bit fixed point, int(w * 2^22 +- 0.5), and each pass sums pixels times
  coefficients in integers and keeps clip((sum + 2^21) >> 22, 0, 255): uint8 between the passes.
* Pillow 13 runs the vertical pass first when the height shrinks by more than twice as many
  pixels as the width (n_h - m_h > 0 and n_h - m_h > 2 (n_w - m_w)); horizontally first
  otherwise.

The coefficients are float64 arithmetic whose ties decide a tap's start, so they are computed
once on the host in NumPy (`pillow_coefficients`), op for op in Pillow's order, where every
operation is one correctly rounded IEEE operation: no compiler contracts, reassociates or
emulates them. The device receives integers only: for the training crops a constant table of
every crop side 1..canvas (`crop_table`, gathered per image), for evaluation each image's own
rows (computed by the host pipeline). No float64 reaches the device.

On the device, a pass is one batched matmul with a dense [out, canvas] matrix per image and
axis, zero outside the taps. It is exact in bfloat16 with float32 accumulation: each
coefficient is split into three signed base-256 digits of at most 128 in magnitude (exact in
bfloat16, as are pixels up to 255), every partial sum is an integer below 2^24 (exact in float32,
in any order of accumulation), and the digits' sums are recombined in int32. So the result does
not depend on the platform's matmul precision or its accumulation order.

The horizontal flip is folded into the horizontal matrix (its output rows reversed), so it
costs nothing; a side resized to its own size is the identity (Pillow's coefficients at scale
1 are exactly one tap of 2^22). The few images that a canvas cannot hold are resized on the host
by Pillow itself (`pillow_resize`).
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

# The default canvas side (`config.data.canvas_size`): every RandomResizedCrop crop of an image up
# to 512 x 512 fits, and ImageNet's training images are mostly 500 pixels on the longer side
# (docs/design.md has the distribution behind the choice).
CANVAS_SIZE = 512
PRECISION_BITS = 22  # Pillow's fixed-point coefficients: 32 - 8 - 2.
SUPPORT = {False: 1.0, True: 2.0}  # bilinear, bicubic
_DIGITS = 3  # Signed base-256 digits of a coefficient (|coefficient| < 2^23).


class Coefficients(NamedTuple):
  """Pillow's fixed-point coefficients of some output positions of one axis: output position i
  is sum_t taps[i, t] * input[start[i] + t]; taps past Pillow's kernel are zero."""

  start: np.ndarray | jax.Array  # int32 [..., m]
  taps: np.ndarray | jax.Array  # int32 [..., m, K]


def max_taps(canvas_size: int, out_size: int) -> int:
  """Pillow's largest kernel size (ksize) for inputs up to `canvas_size`: 2 ceil(support) + 1."""
  return 2 * math.ceil(SUPPORT[True] * max(canvas_size / out_size, 1.0)) + 1


def pillow_resize(image: np.ndarray, height: int, width: int, bicubic: bool) -> np.ndarray:
  """Pillow's own `resize((width, height), BICUBIC or BILINEAR)` of uint8 RGB pixels, on the
  host: for the images too large for the canvas. (Imported here: the device needs no Pillow.)"""
  from PIL import Image
  resample = Image.Resampling.BICUBIC if bicubic else Image.Resampling.BILINEAR
  return np.asarray(Image.fromarray(image).resize((int(width), int(height)), resample))


def _filter(x: np.ndarray, bicubic: np.ndarray) -> np.ndarray:
  """Pillow's bilinear (triangle) or bicubic (a = -0.5) filter, float64, in its order."""
  a = -0.5
  x = np.abs(x)
  cubic = np.where(x < 1.0, ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0,
                   np.where(x < 2.0, (((x - 5.0) * x + 8.0) * x - 4.0) * a, 0.0))
  linear = np.where(x < 1.0, 1.0 - x, 0.0)
  return np.where(bicubic, cubic, linear)


def pillow_coefficients(in_size: np.ndarray, out_size: np.ndarray, bicubic: np.ndarray,
                        first: np.ndarray, count: int,
                        taps: int) -> tuple[Coefficients, np.ndarray]:
  """Pillow's coefficients of output positions first .. first + count - 1 when `in_size`
  pixels are resized to `out_size`, for N axes at once (host NumPy, float64 as Pillow).

  `in_size`, `out_size`, `first` int [N], `bicubic` bool [N]. Returns the coefficients with
  `taps` taps (int32 [N, count] and [N, count, taps]) and each position's end, one past its
  last input pixel (int32 [N, count]): where end - start exceeds `taps`, the coefficients are
  cut short and must not be used.
  """
  n = np.asarray(in_size, np.float64)[:, None]
  scale = n / np.asarray(out_size, np.float64)[:, None]
  filterscale = np.maximum(scale, 1.0)
  support = np.where(bicubic, SUPPORT[True], SUPPORT[False])[:, None] * filterscale
  inverse = 1.0 / filterscale
  center = (np.asarray(first, np.float64)[:, None] + np.arange(count) + 0.5) * scale
  xmin = np.maximum(np.trunc(center - support + 0.5), 0.0)  # C's int() truncates.
  xmax = np.minimum(np.trunc(center + support + 0.5), n)
  kernel = xmax - xmin
  weights = np.zeros(center.shape + (taps,))
  total = np.zeros_like(center)
  for t in range(taps):  # Summed in Pillow's order.
    w = np.where(t < kernel, _filter((xmin + t - center + 0.5) * inverse, bicubic[:, None]), 0.0)
    weights[..., t] = w
    total = total + w
  # Pillow divides by the sum unless it is 0; dividing by 1 instead leaves the weights as they are.
  normalised = weights / np.where(total == 0.0, 1.0, total)[..., None]
  scaled = normalised * float(1 << PRECISION_BITS)
  fixed = np.trunc(np.where(normalised < 0, -0.5 + scaled, 0.5 + scaled)).astype(np.int32)
  return Coefficients(xmin.astype(np.int32), fixed), xmax.astype(np.int32)


@functools.cache
def crop_table(canvas_size: int, out_size: int) -> Coefficients:
  """Pillow's coefficients of resizing every side 1..canvas_size to `out_size`, both filters:
  start int32 [2, canvas_size, out_size] and taps [2, canvas_size, out_size, K], indexed by
  [bicubic, side - 1] (about 10 MB for a 512 canvas to 224)."""
  sides = np.tile(np.arange(1, canvas_size + 1), 2)
  bicubic = np.repeat([False, True], canvas_size)
  count = np.full_like(sides, out_size)
  table, _ = pillow_coefficients(sides, count, bicubic, np.zeros_like(sides), out_size,
                                 max_taps(canvas_size, out_size))
  return Coefficients(*(c.reshape(2, canvas_size, *c.shape[1:]) for c in table))


def vertical_first(in_h, in_w, out_h, out_w):
  """Pillow 13's pass order: the vertical pass first when the height shrinks by more than twice
  as many pixels as the width (NumPy or JAX arrays)."""
  return ((in_h - out_h) > 0) & ((in_h - out_h) > 2 * (in_w - out_w))


def _dense(coefficients: Coefficients, canvas_size: int) -> jax.Array:
  """int32 [B, m, canvas_size]: each output position's taps at their input positions."""
  start, taps = coefficients
  offset = jnp.arange(canvas_size, dtype=jnp.int32)[None, None, :] - start[..., None]
  dense = jnp.take_along_axis(taps, jnp.clip(offset, 0, taps.shape[-1] - 1), axis=-1)
  return jnp.where((offset >= 0) & (offset < taps.shape[-1]), dense, 0)


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


def resize(canvas: jax.Array, rows: Coefficients, cols: Coefficients, vertical: jax.Array,
           flip: jax.Array | None = None) -> jax.Array:
  """Each image's two passes with its own coefficients, then its horizontal flip where `flip`.

  `canvas` uint8 [B, S, S, 3]; `rows` and `cols` index its rows and columns, m output positions
  each (the output is square); `vertical` bool [B]: the vertical pass first. Returns uint8
  [B, m, m, 3].
  """
  size = canvas.shape[1]
  if canvas.shape[2] != size:
    raise ValueError(f'the canvas must be square, got {canvas.shape[1:3]}')
  if rows.start.shape != cols.start.shape:
    raise ValueError(f'the output must be square, got {rows.start.shape[1]} rows and '
                     f'{cols.start.shape[1]} columns')
  row_matrix, col_matrix = _dense(rows, size), _dense(cols, size)
  if flip is not None:
    col_matrix = jnp.where(flip[:, None, None], col_matrix[:, ::-1], col_matrix)
  # The vertical-first images are transposed, so that both orders are one columns pass then
  # one rows pass.
  transpose = lambda x: jnp.swapaxes(x, 1, 2)
  swap = vertical[:, None, None]
  source = jnp.where(vertical[:, None, None, None], transpose(canvas), canvas)
  first = jnp.where(swap, row_matrix, col_matrix)
  second = jnp.where(swap, col_matrix, row_matrix)
  out = _pass_rows(_pass_columns(source, first), second)
  return jnp.where(vertical[:, None, None, None], transpose(out), out)


def resize_crops(canvas: jax.Array, crop_size: jax.Array, bicubic: jax.Array, out_size: int,
                 flip: jax.Array | None = None) -> jax.Array:
  """Pillow's `crop.resize((out_size, out_size), BICUBIC if bicubic else BILINEAR)` of each
  image's crop, then its horizontal flip where `flip`.

  `canvas` uint8 [B, S, S, 3] holds each crop at its origin (the rest is ignored);
  `crop_size` int [B, 2] is (height, width), each in [1, S]; `bicubic` and `flip` bool [B].
  Returns uint8 [B, out_size, out_size, 3].
  """
  table = crop_table(canvas.shape[1], out_size)
  start, taps = jnp.asarray(table.start), jnp.asarray(table.taps)
  kind = bicubic.astype(jnp.int32)
  height, width = crop_size[:, 0], crop_size[:, 1]
  side = lambda n: Coefficients(start[kind, n - 1], taps[kind, n - 1])
  return resize(canvas, side(height), side(width),
                vertical_first(height, width, out_size, out_size), flip)
