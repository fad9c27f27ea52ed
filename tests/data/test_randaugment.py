"""RandAugment and ColorJitter (sequencer_jax.data.randaugment, .color_jitter: JAX, batched)
against timm's PIL ops.

Images: smooth random colours plus noise, 224x224 with levels in [10, 240] and 168x200 (H x W)
with flat blocks and saturated stripes. Each op runs once per image on a batch of 20 copies,
one per case (magnitudes 0, 3.3, 5, 9, 10 as float32, both signs, bilinear and bicubic: one
compilation per image size for all ops), and timm gets each case's magnitude as the same
double. The ops, RandAugment and ColorJitter are compiled as in the training step, at XLA's
default optimisation level (`production_jit`), not the suite's -O0. Bounds asserted, per op,
image and case:

* every colour / histogram op (AutoContrast, Equalize, Invert, Posterize[Increasing],
  Solarize[Increasing], SolarizeAdd, Color/Contrast/Brightness/Sharpness[Increasing]) at
  magnitudes 0, 3.3, 5, 9, 10, both signs: exact (max |diff| 0). Measured: 0.
* geometric ops (Rotate, ShearX/Y, TranslateX/YRel) at magnitudes 0, 3.3, 5, 9, 10, both signs,
  bilinear and bicubic: max |diff| <= 1 and mean |diff| <= 1e-4. Measured: exact (max 0 in
  every case, compiled at XLA's default level; also at -O0), as no float64 product of the
  geometry reaches an add unrounded; with the FMAs XLA contracts otherwise, 1 to 6 values of
  2-3 million per op and image were off by one (a case's mean at most 6e-5).
* Posterize with 0 bits (PosterizeIncreasing at magnitude 10, Posterize below 2.5): black, as
  Pillow < 10 computed it (newer Pillow refuses 0 bits, so timm 1.0 with it raises).
* level -> argument maps (compiled, as in the step): equal (float64) to timm's `LEVEL_TO_ARG`
  for every op with an argument, except where timm 1.0's clamp of the enhance factor at 0.1
  binds (magnitude 10, negative sign): 0.5.4's 1 - 0.9 = 0.09999999999999998 there, the same
  float32 factor. Rotate's matrices equal Pillow's (`Image.rotate`'s Python) for 2000 float32
  magnitudes per sign and image size (round(x * 1e15) / 1e15 instead of Python's round(x, 15)
  differed for 7% of the cosines).
* ColorJitter with fixed factors and order (all 6 orders, 3 factor sets): exact against PIL
  ImageEnhance Brightness / Contrast / Color applied in that order (torchvision's functional ops
  on PIL images). Measured: 0.
* `rand_augment` on 200 images equals their sampled layers applied one by one (`apply_op`);
  images are unchanged exactly when no layer was applied or two Inverts cancelled, 0.25 +- 0.07
  of them (measured 0.21); under `jax.jit`, `rand_augment` and `apply_color_jitter` give each
  image of a batch what it gets alone; `sample_layers` is a function of its key.
* statistics of the jax.random draws (deterministic, the keys are fixed): layers applied 0.5 +-
  0.025 (0.503), ops uniform (each within 25% of its expected count; 7.3%), magnitude mean 9 +-
  0.03 (8.998), std 0.5 +- 0.03 (0.488), all in [0, 10]; sign and interpolation 0.5 +- 0.025
  (0.506, 0.496); N(9, 3) clipped at 10 for 0.37 +- 0.03 (0.373); jitter factors uniform in
  [0.6, 1.4] (mean 1 +- 0.015, std 0.231 +- 0.01; 0.996-1.004, 0.230-0.231), each of the 6
  orders 1/6 +- 0.03 (0.158-0.174).
"""

from __future__ import annotations

import itertools
import math
from unittest import mock

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image, ImageEnhance
from timm.data import auto_augment

from production import production_jit
from sequencer_jax.data import color_jitter as cj
from sequencer_jax.data import pil_ops
from sequencer_jax.data import randaugment as ra

PAPER = 'rand-m9-mstd0.5-inc1'
GEOMETRIC = ('Rotate', 'ShearX', 'ShearY', 'TranslateXRel', 'TranslateYRel')
SIGNED = GEOMETRIC + ('ColorIncreasing', 'ContrastIncreasing', 'BrightnessIncreasing',
                      'SharpnessIncreasing')
# (magnitude, negate, bicubic) of each image of a batch: one compilation per image size.
CASES = list(itertools.product((0.0, 3.3, 5.0, 9.0, 10.0), (False, True), (False, True)))
# Compiled as in the training step (XLA's default optimisation level, not the suite's -O0).
_apply_op = production_jit(ra.apply_op, static_argnums=1)
_rand_augment = production_jit(ra.rand_augment, static_argnames='config')
_apply_color_jitter = production_jit(cj.apply_color_jitter)


def _image(h: int, w: int, seed: int, flat: bool = False) -> np.ndarray:
  rng = np.random.RandomState(seed)
  small = Image.fromarray(rng.randint(0, 256, (6, 6, 3)).astype(np.uint8))
  smooth = np.asarray(small.resize((w, h), Image.BICUBIC)).astype(np.float64)
  image = np.clip(10 + smooth * (230 / 255) + rng.randn(h, w, 3) * 5, 10, 240)
  if flat:
    image[:h // 3, :w // 4] = (200, 30, 90)
    image[-10:] = 255
    image[:, -6:] = 0
  return image.astype(np.uint8)


IMAGES = {'224x224': _image(224, 224, 0), '168x200_flat': _image(168, 200, 1, flat=True)}


def _timm(image: np.ndarray, name: str, magnitude: float, negate: bool = False,
          bicubic: bool = False) -> np.ndarray:
  """timm's AugmentOp, applied always, with its sign and resampling fixed."""
  if name.startswith('Posterize') and auto_augment.LEVEL_TO_ARG[name](magnitude, {})[0] == 0:
    return np.zeros_like(image)
  hparams = {'img_mean': ra.IMG_MEAN_FILL,
             'interpolation': Image.BICUBIC if bicubic else Image.BILINEAR}
  op = auto_augment.AugmentOp(name, prob=1.0, magnitude=magnitude, hparams=hparams)
  with mock.patch('random.random', return_value=0.75 if negate else 0.25):
    return np.asarray(op(Image.fromarray(image)))


def _diff(got: np.ndarray, want: np.ndarray) -> np.ndarray:
  assert got.shape == want.shape and got.dtype == np.uint8
  return np.abs(got.astype(np.int32) - want)


def _op_diffs(name: str, image: np.ndarray) -> list[np.ndarray]:
  """|apply_op - timm| of op `name` on `image` for each of CASES (one batch)."""
  magnitude, negate, bicubic = (np.array(column) for column in zip(*CASES))
  magnitude = magnitude.astype(np.float32)
  got = np.asarray(_apply_op(np.stack([image] * len(CASES)), name, magnitude, negate, bicubic))
  return [_diff(out, _timm(image, name, float(m), n, b))
          for out, m, n, b in zip(got, magnitude, negate, bicubic, strict=True)]


@pytest.mark.parametrize('image_name', sorted(IMAGES))
@pytest.mark.parametrize('name', [n for n in ra.OPS if n not in GEOMETRIC])
def test_colour_ops_equal_pil(name, image_name):
  for case, diff in zip(CASES, _op_diffs(name, IMAGES[image_name]), strict=True):
    assert diff.max() == 0, (case, diff.mean())


@pytest.mark.parametrize('image_name', sorted(IMAGES))
@pytest.mark.parametrize('name', GEOMETRIC)
def test_geometric_ops_match_pil(name, image_name):
  for case, diff in zip(CASES, _op_diffs(name, IMAGES[image_name]), strict=True):
    assert diff.max() <= 1 and diff.mean() <= 1e-4, (case, diff.max(), diff.mean())


def test_posterize_zero_bits_is_black():
  images = np.stack([IMAGES['224x224']] * len(CASES))
  assert ra.level_to_arg('PosterizeIncreasing', 10.0) == 0
  assert not np.asarray(_apply_op(images, 'PosterizeIncreasing', 10.0)).any()
  low = np.linspace(0.0, 2.49, len(CASES)).astype(np.float32)
  assert np.all(ra.level_to_arg('Posterize', low) == 0)
  assert not np.asarray(_apply_op(images, 'Posterize', low)).any()


def _pil_rotation(degrees: float, height: int, width: int) -> list[float]:
  """`Image.rotate`'s matrix, as Pillow's Python computes it."""
  angle = -math.radians(degrees % 360.0)
  matrix = [round(math.cos(angle), 15), round(math.sin(angle), 15), 0.0,
            round(-math.sin(angle), 15), round(math.cos(angle), 15), 0.0]
  a, b, c, d, e, f = matrix
  x, y = -width / 2, -height / 2
  return [a, b, a * x + b * y + c + width / 2, d, e, d * x + e * y + f + height / 2]


@pytest.mark.parametrize('name', [n for n in ra.OPS if auto_augment.LEVEL_TO_ARG[n] is not None])
def test_level_to_arg_equals_timm(name):
  levels = np.concatenate([np.linspace(0, 10, 41), np.random.RandomState(0).uniform(0, 10, 60)])
  for negate in (False, True):
    with mock.patch('random.random', return_value=0.75 if negate else 0.25):
      want = [auto_augment.LEVEL_TO_ARG[name](float(m), {})[0] for m in levels]
    got = ra.level_to_arg(name, levels, negate)
    assert got.dtype == np.float64
    clamped = (np.asarray(want) == 0.1) & (levels == 10.0) & negate
    np.testing.assert_array_equal(got[~clamped], np.asarray(want)[~clamped])
    np.testing.assert_array_equal(got[clamped], 1.0 - 0.9)
    assert np.float32(1.0 - 0.9) == np.float32(0.1)
  assert ra.level_to_arg('Equalize', 5.0) is None
  with pytest.raises(ValueError, match="unknown op 'Cutout'"):
    ra.level_to_arg('Cutout', 5.0)


def test_rotation_matrix_equals_pil():
  """For float32 magnitudes, as the step draws them, compiled."""
  magnitudes = np.random.RandomState(1).uniform(0, 10, 2000).astype(np.float32)
  for negate, (height, width) in itertools.product((False, True), ((224, 224), (168, 200))):
    degrees = ra.level_to_arg('Rotate', magnitudes, negate)

    def matrix(d, height=height, width=width):
      return pil_ops.rotation_matrix(d, height, width)

    with jax.enable_x64(True):
      got = np.asarray(production_jit(matrix)(jnp.asarray(degrees, jnp.float64)))
    want = np.array([_pil_rotation(float(d), height, width) for d in degrees])
    np.testing.assert_array_equal(got, want)


def test_parse_rand_augment():
  assert ra.parse_rand_augment(PAPER) == ra.RandAugmentConfig(
      num_ops=2, magnitude=9.0, magnitude_std=0.5, increasing=True)
  assert ra.parse_rand_augment(PAPER).ops == ra.RAND_INCREASING_OPS
  assert ra.parse_rand_augment('rand') == ra.RandAugmentConfig()
  assert ra.parse_rand_augment('rand').ops == ra.RAND_OPS
  assert ra.parse_rand_augment('rand-n3-m7-inc0').increasing  # timm 0.5.4: bool('0') is True.
  config = ra.parse_rand_augment('rand-m9', interpolation='bicubic')
  assert (config.num_ops, config.magnitude, config.interpolation) == (2, 9.0, 'bicubic')
  for spec, message in [('rnd-m9', "start with 'rand', not 'rnd'"),
                        ('rand-x9', "unsupported key 'x' in section 'x9'"),
                        ('rand-w0', "unsupported key 'w'"),
                        ('rand-m', "section 'm' is not <key><number>"),
                        ('rand-m9.5', "bad value '9.5' for 'm'"),
                        ('rand-mstd0.5x1', "bad value '0.5x1' for 'mstd'")]:
    with pytest.raises(ValueError, match=message):
      ra.parse_rand_augment(spec)
  with pytest.raises(ValueError, match='interpolation must be one of'):
    ra.parse_rand_augment(PAPER, interpolation='nearest')
  with pytest.raises(ValueError, match='num_ops must be >= 0'):
    ra.RandAugmentConfig(num_ops=-1)


def _layers(config: ra.RandAugmentConfig, count: int, seed: int = 7) -> ra.LayerParams:
  return ra.LayerParams(*(np.asarray(t) for t in
                          ra.sample_layers(jax.random.key(seed), count, config)))


def test_sampled_layers_statistics():
  config = ra.parse_rand_augment(PAPER)
  layers = _layers(config, 5000)
  assert [t.dtype for t in layers] == [np.int32, bool, np.float32, bool, bool]
  assert all(t.shape == (5000, 2) for t in layers)
  assert abs(layers.applied.mean() - 0.5) < 0.025
  counts = np.bincount(layers.op.ravel(), minlength=15)
  assert len(counts) == 15 and np.all(np.abs(counts / (10000 / 15) - 1) < 0.25), counts
  assert abs(layers.magnitude.mean() - 9.0) < 0.03 and abs(layers.magnitude.std() - 0.5) < 0.03
  assert layers.magnitude.min() >= 0.0 and layers.magnitude.max() <= 10.0
  assert abs(layers.negate.mean() - 0.5) < 0.025 and abs(layers.bicubic.mean() - 0.5) < 0.025
  # A wide magnitude distribution is clipped to [0, 10] (P(N(9, 3) > 10) = 0.37).
  wide = _layers(ra.RandAugmentConfig(magnitude=9.0, magnitude_std=3.0), 2000).magnitude
  assert wide.max() == 10.0 and abs((wide == 10.0).mean() - 0.37) < 0.03 and wide.min() >= 0.0
  fixed = _layers(ra.RandAugmentConfig(num_ops=3, magnitude=7.0, interpolation='bilinear'), 50)
  assert fixed.op.shape == (50, 3) and np.all(fixed.magnitude == np.float32(7.0))
  assert not fixed.bicubic.any()
  assert _layers(ra.RandAugmentConfig(interpolation='bicubic'), 50).bicubic.all()
  assert _layers(ra.RandAugmentConfig(num_ops=0), 200).op.shape == (200, 0)


def test_rand_augment_is_its_sampled_layers():
  """Output = the sampled layers applied one by one; unchanged exactly when none was applied
  (or two Inverts cancelled)."""
  config = ra.parse_rand_augment(PAPER)
  images = np.stack([_image(24, 32, 3 + k) for k in range(200)])
  layers = _layers(config, len(images), seed=11)
  out = np.asarray(_rand_augment(images, layers, config=config))
  want = images
  for j in range(config.num_ops):
    step = want.copy()
    for index, name in enumerate(config.ops):
      chosen = layers.applied[:, j] & (layers.op[:, j] == index)
      if chosen.any():
        result = np.asarray(_apply_op(want, name, layers.magnitude[:, j], layers.negate[:, j],
                                        layers.bicubic[:, j]))
        step[chosen] = result[chosen]
    want = step
  np.testing.assert_array_equal(out, want)
  unchanged = []
  for k, image in enumerate(images):
    applied = [config.ops[op] for op, a in zip(layers.op[k], layers.applied[k]) if a]
    same = np.array_equal(out[k], image)
    assert same == (not applied or applied == ['Invert', 'Invert']), (k, applied)
    unchanged.append(same)
  assert abs(np.mean(unchanged) - 0.25) < 0.07, np.mean(unchanged)
  assert np.array_equal(ra.rand_augment(images, _layers(ra.RandAugmentConfig(num_ops=0), 200),
                                        ra.RandAugmentConfig(num_ops=0)), images)


def test_jit_batch_equals_each_image_alone_and_determinism():
  """Under jax.jit, each image of a batch gets what it gets alone (every pass and both filters
  in the batch); the draws are a function of the key."""
  config = ra.parse_rand_augment(PAPER)
  images = np.stack([_image(40, 48, 20 + k, flat=k % 2 == 1) for k in range(8)])
  names = ('Rotate', 'Equalize', 'SharpnessIncreasing', 'ShearY', 'ContrastIncreasing',
           'TranslateXRel', 'ColorIncreasing', 'AutoContrast')
  op = np.array([[config.ops.index(n), config.ops.index(names[(k + 3) % 8])]
                 for k, n in enumerate(names)], np.int32)
  layers = ra.LayerParams(op=op, applied=np.ones(op.shape, bool),
                          magnitude=np.full(op.shape, 8.5, np.float32),
                          negate=np.arange(16).reshape(8, 2) % 3 == 0,
                          bicubic=np.arange(16).reshape(8, 2) % 2 == 0)
  augment = production_jit(lambda x, layers: ra.rand_augment(x, layers, config))
  factors, order = cj.color_jitter_params(jax.random.key(3), len(images))
  jitter = _apply_color_jitter
  batch, jittered = np.asarray(augment(images, layers)), np.asarray(jitter(images, factors, order))
  assert len({tuple(o) for o in np.asarray(order)}) > 1
  for k in range(len(images)):
    alone = ra.LayerParams(*(t[k:k + 1] for t in layers))
    np.testing.assert_array_equal(np.asarray(augment(images[k:k + 1], alone))[0], batch[k])
    np.testing.assert_array_equal(
        np.asarray(jitter(images[k:k + 1], factors[k:k + 1], order[k:k + 1]))[0], jittered[k])
    assert not np.array_equal(batch[k], images[k])
  key = jax.random.key(5)  # Batches of 200 as in test_rand_augment_is_its_sampled_layers.
  first, again = ra.sample_layers(key, 200, config), ra.sample_layers(key, 200, config)
  other = ra.sample_layers(jax.random.key(6), 200, config)
  for a, b, c in zip(first, again, other, strict=True):
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
  first, again = (ra.LayerParams(*(t[:len(images)] for t in layers)) for layers in (first, again))
  np.testing.assert_array_equal(augment(images, first), augment(images, again))


@pytest.mark.parametrize('image_name', sorted(IMAGES))
def test_color_jitter_equals_pil_enhance_in_order(image_name):
  image = IMAGES[image_name]
  enhancers = (ImageEnhance.Brightness, ImageEnhance.Contrast, ImageEnhance.Color)
  rng = np.random.RandomState(0)
  factor_sets = [rng.uniform(0.6, 1.4, 3) for _ in range(2)] + [np.array([0.6, 1.4, 0.6])]
  cases = list(itertools.product(itertools.permutations(range(3)), factor_sets))
  factors = np.array([f for _, f in cases], np.float32)
  order = np.array([o for o, _ in cases], np.int32)
  got = np.asarray(_apply_color_jitter(np.stack([image] * len(cases)), factors, order))
  for out, (case_order, case_factors) in zip(got, cases, strict=True):
    pil = Image.fromarray(image)
    for index in case_order:
      pil = enhancers[index](pil).enhance(float(case_factors[index]))
    assert _diff(out, np.asarray(pil)).max() == 0, (case_order, case_factors)


def test_color_jitter_random_parameters():
  count = 6000
  factors, orders = (np.asarray(t) for t in cj.color_jitter_params(jax.random.key(5), count))
  assert factors.shape == orders.shape == (count, 3)
  assert factors.dtype == np.float32 and orders.dtype == np.int32
  assert factors.min() >= 0.6 and factors.max() <= 1.4
  assert np.all(np.abs(factors.mean(axis=0) - 1.0) < 0.015)
  assert np.all(np.abs(factors.std(axis=0) - 0.8 / np.sqrt(12)) < 0.01)
  assert np.all(np.abs(np.corrcoef(factors.T) - np.eye(3)) < 0.05)
  assert np.all(np.sort(orders, axis=1) == [0, 1, 2])
  frequencies = np.unique(orders, axis=0, return_counts=True)[1] / count
  assert len(frequencies) == 6 and np.all(np.abs(frequencies - 1 / 6) < 0.03), frequencies
  images = np.stack([IMAGES['168x200_flat']] * 2)
  key = jax.random.key(2)
  np.testing.assert_array_equal(cj.color_jitter(images, key),
                                cj.apply_color_jitter(images, *cj.color_jitter_params(key, 2)))
  still, _ = cj.color_jitter_params(key, 4, brightness=0.0, contrast=0.0, saturation=0.0)
  np.testing.assert_array_equal(still, np.ones((4, 3)))
  wide, _ = cj.color_jitter_params(key, 100, brightness=1.5)
  assert 0.0 <= np.min(wide[:, 0]) and np.max(wide[:, 0]) <= 2.5
  with pytest.raises(ValueError, match='must be >= 0'):
    cj.color_jitter_params(key, 4, contrast=-0.1)
