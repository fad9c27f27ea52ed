"""The step's resize (sequencer_jax.data.pil_resize) against Pillow's `Image.resize`.

Everything here is compiled at XLA's default optimisation level, as the training step is
(`production_jit`; the suite's -O0 hid a wrong tap start under the optimising compiler). Each
crop sits at the origin of a canvas whose remaining pixels are random (they must never
contribute), and is resized with its own filter and flip. Bound everywhere: equal to Pillow 13's
`crop.resize((out, out), BILINEAR | BICUBIC)` (then flipped) on every pixel (max |diff| 0):

* exhaustively over sides: every crop height and every crop width from 1 to 512 on the default
  512 canvas to 224, with each filter, random flips and both of Pillow's pass orders;
* 256 random crop sizes on a 160 canvas to 64 (up- and downscaling on each axis);
* a coefficient table with one start off by one is caught by the same comparison.

A crop of the output size is returned unchanged (Pillow's resize at scale 1 is the identity),
and the compiled resize holds no float64 operation.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from production import production_jit
from sequencer_jax.data import pil_resize


def _photo(h: int, w: int, rng: np.random.Generator) -> np.ndarray:
  """A smooth random image with noise and a saturated corner, uint8 (h, w, 3)."""
  small = rng.integers(0, 256, (max(2, h // 8), max(2, w // 8), 3)).astype(np.uint8)
  image = np.asarray(Image.fromarray(small).resize((w, h), Image.BICUBIC)).astype(np.int32)
  image = np.clip(image + rng.integers(-20, 21, image.shape), 0, 255)
  image[:h // 4, :w // 4] = (255, 0, 255)
  return image.astype(np.uint8)


def _cases(sizes: np.ndarray, canvas: int, out: int, seed: int, bicubic: bool | None = None):
  """Canvases with random padding, the filter (random unless given) and flip draws, and
  Pillow's results."""
  rng = np.random.default_rng(seed)
  n = len(sizes)
  canvases = rng.integers(0, 256, (n, canvas, canvas, 3)).astype(np.uint8)
  flip, drawn = rng.random(n) < 0.5, rng.random(n) < 0.5
  bicubic = drawn if bicubic is None else np.full(n, bicubic)
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
  return production_jit(lambda c, s, b, f: pil_resize.resize_crops(c, s, b, out, f))


def _vertical_first(sizes: np.ndarray, out: int) -> np.ndarray:
  return pil_resize.vertical_first(sizes[:, 0], sizes[:, 1], out, out)


def _mismatched_sizes(sizes: np.ndarray, bicubic: bool, seed: int,
                      chunk: int = 32) -> list[tuple[int, int]]:
  """The (height, width) crops of `sizes` whose resize with the filter on a noisy 512 canvas
  to 224, randomly flipped, differs from Pillow's anywhere."""
  bad = []
  for begin in range(0, len(sizes), chunk):
    part = sizes[begin:begin + chunk]
    *args, want = _cases(part, 512, 224, seed=seed + begin, bicubic=bicubic)
    differs = (np.asarray(_resize(224)(*args)) != want).reshape(len(part), -1).any(axis=1)
    bad += [tuple(s) for s in part[differs].tolist()]
  return bad


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


@pytest.mark.slow
def test_every_crop_side_equals_pillow_exhaustively():
  """For each filter, every height 1..512 with a permutation of the widths (every side is a
  height and a width once per filter); Pillow's rule picks the vertical pass first for about a
  third of the crops."""
  sides = np.arange(1, 513)
  rng = np.random.default_rng(7)
  for bicubic in (False, True):
    sizes = np.stack([sides, rng.permutation(sides)], axis=1)
    assert 100 < _vertical_first(sizes, 224).sum() < 400
    assert _mismatched_sizes(sizes, bicubic, seed=0) == []


def test_a_start_off_by_one_is_caught(monkeypatch):
  """The comparison above fails when one side's coefficients start one pixel late."""
  table = pil_resize.crop_table(512, 224)
  broken = pil_resize.Coefficients(table.start.copy(), table.taps)
  broken.start[:, 299, 100] += 1  # Side 300, output row or column 100, both filters.
  monkeypatch.setattr(pil_resize, 'crop_table', lambda canvas, out: broken)
  _resize.cache_clear()  # Traced anew with the broken table, and again after this test.
  try:
    sizes = np.array([[300, 37], [37, 300], [301, 300], [299, 299]])
    for bicubic in (False, True):
      assert _mismatched_sizes(sizes, bicubic, seed=3) == [(300, 37), (37, 300), (301, 300)]
  finally:
    _resize.cache_clear()


@pytest.mark.parametrize('bicubic', [False, True])
def test_a_crop_of_the_output_size_is_unchanged(bicubic):
  rng = np.random.default_rng(1)
  canvases = rng.integers(0, 256, (2, 40, 40, 3)).astype(np.uint8)
  sizes = np.full((2, 2), 24, np.int32)
  flip = np.array([False, True])
  got = np.asarray(_resize(24)(canvases, sizes, np.full(2, bicubic), flip))
  np.testing.assert_array_equal(got[0], canvases[0, :24, :24])
  np.testing.assert_array_equal(got[1], canvases[1, :24, :24][:, ::-1])


def test_the_crop_table_holds_pillows_fixed_point_rows():
  """Each side's rows sum to about 2^22 and read only pixels inside the crop; side n to n is
  the identity; the compiled resize holds no float64."""
  table = pil_resize.crop_table(160, 64)
  assert table.start.shape == (2, 160, 64) and table.taps.shape == (2, 160, 64, 11)
  assert table.start.dtype == table.taps.dtype == np.int32
  for kind in (0, 1):
    for n in (1, 7, 64, 100, 160):
      start, taps = table.start[kind, n - 1], table.taps[kind, n - 1]
      row, tap = np.nonzero(taps)
      assert start.min() >= 0 and (start[row] + tap < n).all()
      assert np.abs(taps.sum(axis=1) - 2 ** 22).max() <= taps.shape[1]
    start, taps = table.start[kind, 63], table.taps[kind, 63]
    row, tap = np.nonzero(taps)
    np.testing.assert_array_equal(row, np.arange(64))
    np.testing.assert_array_equal(start[row] + tap, np.arange(64))
    assert (taps[row, tap] == 2 ** 22).all()
  assert pil_resize.max_taps(512, 224) == 11
  lowered = jax.jit(lambda c, s, b: pil_resize.resize_crops(c, s, b, 64)).lower(
      jnp.zeros((2, 160, 160, 3), jnp.uint8), jnp.ones((2, 2), jnp.int32), jnp.ones(2, bool))
  assert 'f64' not in lowered.as_text()


def test_a_non_square_canvas_is_refused():
  with pytest.raises(ValueError, match='the canvas must be square'):
    pil_resize.resize_crops(np.zeros((1, 8, 9, 3), np.uint8), np.ones((1, 2), np.int32),
                            np.zeros(1, bool), 4)
