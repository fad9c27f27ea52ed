"""The step's resize (sequencer_jax.data.pil_resize) against Pillow's `Image.resize`.

Each crop sits at the origin of a canvas whose remaining pixels are random (they must never
contribute), and is resized with its own filter and flip. Bounds asserted: equal to Pillow's
`crop.resize((out, out), BILINEAR | BICUBIC)` (then flipped) on every pixel (max |diff| 0; the
issue's bound is at most 1 grey level and equal on 99% of pixels), on 256 random crop sizes
from 1 pixel to the whole 160 x 160 canvas, to 64 x 64 (up- and downscaling on each axis, both
filters, both of Pillow 13's pass orders), and on ImageNet-sized crops on the default 512 canvas
to 224. Measured: exact everywhere. A crop of the output size is returned unchanged (Pillow's
resize at scale 1 is the identity).
"""

from __future__ import annotations

import functools

import jax
import numpy as np
import pytest
from PIL import Image

from sequencer_jax.data import pil_resize


def _photo(h: int, w: int, rng: np.random.Generator) -> np.ndarray:
  """A smooth random image with noise and a saturated corner, uint8 (h, w, 3)."""
  small = rng.integers(0, 256, (max(2, h // 8), max(2, w // 8), 3)).astype(np.uint8)
  image = np.asarray(Image.fromarray(small).resize((w, h), Image.BICUBIC)).astype(np.int32)
  image = np.clip(image + rng.integers(-20, 21, image.shape), 0, 255)
  image[:h // 4, :w // 4] = (255, 0, 255)
  return image.astype(np.uint8)


def _cases(sizes: np.ndarray, canvas: int, out: int, seed: int):
  """Canvases with random padding, the filter and flip draws, and Pillow's results."""
  rng = np.random.default_rng(seed)
  n = len(sizes)
  canvases = rng.integers(0, 256, (n, canvas, canvas, 3)).astype(np.uint8)
  bicubic, flip = rng.random(n) < 0.5, rng.random(n) < 0.5
  want = np.empty((n, out, out, 3), np.uint8)
  for i, (h, w) in enumerate(sizes):
    crop = _photo(h, w, rng)
    canvases[i, :h, :w] = crop
    resized = np.asarray(Image.fromarray(crop).resize(
        (out, out), Image.BICUBIC if bicubic[i] else Image.BILINEAR))
    want[i] = resized[:, ::-1] if flip[i] else resized
  return canvases, sizes.astype(np.int32), bicubic, flip, want


@functools.cache  # One jitted function, compiled once per canvas shape, for each output size.
def _resize(out: int):
  return jax.jit(lambda c, s, b, f: pil_resize.resize_crops(c, s, b, out, f))


def _vertical_first(sizes: np.ndarray, out: int) -> np.ndarray:
  h, w = sizes[:, 0], sizes[:, 1]
  return (h - out > 0) & (h - out > 2 * (w - out))


def test_random_crops_equal_pillow():
  canvas, out, rng = 160, 64, np.random.default_rng(0)
  sizes = rng.integers(1, canvas + 1, (256, 2))
  sizes[:6] = [[1, 1], [canvas, canvas], [out, out], [canvas, 70], [20, canvas], [150, 64]]
  resize = _resize(out)
  for chunk in range(4):  # One compilation, four batches.
    part = sizes[64 * chunk:64 * (chunk + 1)]
    *args, want = _cases(part, canvas, out, seed=chunk)
    got = np.asarray(resize(*args))
    assert got.dtype == np.uint8 and got.shape == want.shape
    diff = np.abs(got.astype(np.int32) - want)
    assert diff.max() == 0, (part[np.nonzero(diff.reshape(len(part), -1).max(1))[0]])
  # Every regime was covered: up- and downscaling per axis, and both pass orders.
  assert (sizes < out).any(axis=0).all() and (sizes > out).any(axis=0).all()
  assert 20 < _vertical_first(sizes, out).sum() < 236


def test_imagenet_sized_crops_on_the_default_canvas():
  sizes = np.array([[375, 500], [500, 333], [100, 140], [512, 512]])
  *args, want = _cases(sizes, 512, 224, seed=5)
  np.testing.assert_array_equal(np.asarray(_resize(224)(*args)), want)


@pytest.mark.parametrize('bicubic', [False, True])
def test_a_crop_of_the_output_size_is_unchanged(bicubic):
  rng = np.random.default_rng(1)
  canvases = rng.integers(0, 256, (2, 40, 40, 3)).astype(np.uint8)
  sizes = np.full((2, 2), 24, np.int32)
  flip = np.array([False, True])
  got = np.asarray(_resize(24)(canvases, sizes, np.full(2, bicubic), flip))
  np.testing.assert_array_equal(got[0], canvases[0, :24, :24])
  np.testing.assert_array_equal(got[1], canvases[1, :24, :24][:, ::-1])


def test_coefficients_are_pillows_fixed_point_rows():
  """Each output row's coefficients sum to about 2^22 and lie inside the crop."""
  sizes = np.array([1, 7, 64, 100, 160], np.int32)
  coefficients = jax.jit(pil_resize.coefficients, static_argnums=(2, 3))  # As in the step.
  for bicubic in (False, True):
    matrix = np.asarray(coefficients(sizes, np.full(5, bicubic), 64, 160))
    assert matrix.shape == (5, 64, 160) and matrix.dtype == np.int32
    for n, rows in zip(sizes, matrix):
      assert not rows[:, n:].any()
      assert np.abs(rows.sum(axis=1) - 2 ** 22).max() <= rows.shape[1]
  assert pil_resize.max_taps(512, 224) == 11


def test_a_non_square_canvas_is_refused():
  with pytest.raises(ValueError, match='the canvas must be square'):
    pil_resize.resize_crops(np.zeros((1, 8, 9, 3), np.uint8), np.ones((1, 2), np.int32),
                            np.zeros(1, bool), 4)
