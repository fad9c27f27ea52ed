"""RandAugment and ColorJitter (sequencer_jax.data.randaugment) against timm's PIL ops.

Images: smooth random colours plus noise, 224x224 with levels in [10, 240] and 168x200 (H x W)
with flat blocks and saturated stripes. Bounds asserted, per op, image and case:

* every colour / histogram op (AutoContrast, Equalize, Invert, Posterize[Increasing],
  Solarize[Increasing], SolarizeAdd, Color/Contrast/Brightness/Sharpness[Increasing]) at
  magnitudes 0, 3.3, 5, 9, 10, both signs: exact (max |diff| 0). Measured: 0.
* geometric ops (Rotate, ShearX/Y, TranslateX/YRel) at magnitudes 0, 3.3, 9, 10, both signs,
  bilinear and bicubic: max |diff| <= 1 and mean |diff| <= 1e-4. Measured: Rotate exact;
  ShearX/Y and TranslateX/YRel at most 2 values of a case off by one (mean <= 2e-5 in a case,
  < 1e-6 over all), because the XLA sampler contracts multiply-adds into FMAs and a value within
  ~1e-13 of an integer can truncate to the other side; without FMA it is exact.
* Posterize with 0 bits (PosterizeIncreasing at magnitude 10, Posterize below 2.5): black, as
  Pillow < 10 computed it (newer Pillow refuses 0 bits, so timm 1.0 with it raises).
* level -> argument maps: equal (float64) to timm's `LEVEL_TO_ARG` for every op with an argument,
  except where timm 1.0's clamp of the enhance factor at 0.1 binds (magnitude 10, negative sign):
  0.5.4's 1 - 0.9 = 0.09999999999999998 there, the same float32 factor.
* ColorJitter with fixed factors and order: exact against PIL ImageEnhance Brightness /
  Contrast / Color applied in that order (torchvision's functional ops on PIL images).
* statistics over seeds (deterministic, the seeds are fixed): layers applied 0.5 +- 0.025, ops
  uniform (each within 25% of its expected count), magnitude mean 9 +- 0.03, std 0.5 +- 0.03,
  all in [0, 10]; sign and interpolation 0.5 +- 0.025; images left unchanged exactly when no
  layer was applied or two Inverts cancelled, 0.25 +- 0.07 of them; jitter factors uniform in
  [0.6, 1.4] (mean 1 +- 0.015, std 0.231 +- 0.01), each of the 6 orders 1/6 +- 0.03.
"""

from __future__ import annotations

import itertools
from unittest import mock

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image, ImageEnhance
from timm.data import auto_augment

from sequencer_jax.data import color_jitter as cj
from sequencer_jax.data import randaugment as ra

PAPER = 'rand-m9-mstd0.5-inc1'
GEOMETRIC = ('Rotate', 'ShearX', 'ShearY', 'TranslateXRel', 'TranslateYRel')
SIGNED = GEOMETRIC + ('ColorIncreasing', 'ContrastIncreasing', 'BrightnessIncreasing',
                      'SharpnessIncreasing')


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


def _diff(got: tf.Tensor, want: np.ndarray) -> np.ndarray:
  got = got.numpy()
  assert got.shape == want.shape and got.dtype == np.uint8
  return np.abs(got.astype(np.int32) - want)


@pytest.mark.parametrize('image_name', sorted(IMAGES))
@pytest.mark.parametrize('name', [n for n in ra.OPS if n not in GEOMETRIC])
def test_colour_ops_equal_pil(name, image_name):
  image = IMAGES[image_name]
  for magnitude in (0.0, 3.3, 5.0, 9.0, 10.0):
    for negate in ((False, True) if name in SIGNED else (False,)):
      want = _timm(image, name, magnitude, negate)
      diff = _diff(ra.apply_op(image, name, magnitude, negate), want)
      assert diff.max() == 0, (magnitude, negate, diff.mean())


@pytest.mark.parametrize('image_name', sorted(IMAGES))
@pytest.mark.parametrize('name', GEOMETRIC)
def test_geometric_ops_match_pil(name, image_name):
  image = IMAGES[image_name]
  for magnitude, negate, bicubic in itertools.product((0.0, 3.3, 9.0, 10.0), (False, True),
                                                      (False, True)):
    diff = _diff(ra.apply_op(image, name, magnitude, negate, bicubic),
                 _timm(image, name, magnitude, negate, bicubic))
    assert diff.max() <= 1 and diff.mean() <= 1e-4, (magnitude, negate, bicubic, diff.mean())


def test_posterize_zero_bits_is_black():
  image = IMAGES['224x224']
  assert ra.level_to_arg('PosterizeIncreasing', 10.0).numpy() == 0
  assert not ra.apply_op(image, 'PosterizeIncreasing', 10.0).numpy().any()


@pytest.mark.parametrize('name', [n for n in ra.OPS if auto_augment.LEVEL_TO_ARG[n] is not None])
def test_level_to_arg_equals_timm(name):
  levels = np.concatenate([np.linspace(0, 10, 41), np.random.RandomState(0).uniform(0, 10, 60)])
  for negate in (False, True):
    with mock.patch('random.random', return_value=0.75 if negate else 0.25):
      want = [auto_augment.LEVEL_TO_ARG[name](float(m), {})[0] for m in levels]
    got = ra.level_to_arg(name, tf.constant(levels), negate).numpy()
    clamped = (np.asarray(want) == 0.1) & (levels == 10.0) & negate
    np.testing.assert_array_equal(got[~clamped], np.asarray(want)[~clamped])
    np.testing.assert_array_equal(got[clamped], 1.0 - 0.9)
    assert np.float32(1.0 - 0.9) == np.float32(0.1)
  assert ra.level_to_arg('Equalize', 5.0) is None
  with pytest.raises(ValueError, match="unknown op 'Cutout'"):
    ra.level_to_arg('Cutout', 5.0)


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


def _layers(config: ra.RandAugmentConfig, count: int) -> ra.LayerParams:
  """sample_layers for seeds (i, 7), i < count, stacked [count, num_ops]."""
  seeds = tf.stack([tf.range(count), tf.fill([count], 7)], axis=1)
  ds = tf.data.Dataset.from_tensor_slices(seeds).map(lambda s: ra.sample_layers(s, config))
  return ra.LayerParams(*(t.numpy() for t in next(iter(ds.batch(count)))))


def test_sampled_layers_statistics():
  config = ra.parse_rand_augment(PAPER)
  layers = _layers(config, 5000)
  assert layers.op.shape == (5000, 2)
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
  assert fixed.op.shape == (50, 3) and np.all(fixed.magnitude == 7.0) and not fixed.bicubic.any()
  assert _layers(ra.RandAugmentConfig(interpolation='bicubic'), 50).bicubic.all()


def test_rand_augment_is_its_sampled_layers():
  """Output = the sampled layers applied one by one; unchanged exactly when none was applied
  (or two Inverts cancelled)."""
  config = ra.parse_rand_augment(PAPER)
  image = _image(24, 32, 3)
  unchanged = []
  for k in range(200):
    seed = tf.constant([k, 11])
    out = ra.rand_augment(image, seed, config).numpy()
    layers = ra.sample_layers(seed, config)
    want = image
    applied = []
    for op, apply, magnitude, negate, bicubic in zip(*layers, strict=True):
      if apply:
        applied.append(config.ops[int(op)])
        want = ra.apply_op(want, applied[-1], magnitude, negate, bicubic).numpy()
    np.testing.assert_array_equal(out, want, err_msg=f'seed {k}')
    same = np.array_equal(out, image)
    assert same == (not applied or applied == ['Invert', 'Invert']), (k, applied)
    unchanged.append(same)
  assert abs(np.mean(unchanged) - 0.25) < 0.07, np.mean(unchanged)


def test_graph_mode_dynamic_shapes_and_determinism():
  """In tf.data (graph mode, unknown image size, int64 seeds) = eager (int32 seeds); repeatable."""
  config = ra.parse_rand_augment(PAPER)
  images = [_image(24, 32, 4), IMAGES['168x200_flat']]  # Sizes other tests compiled eagerly.
  seeds = [[3, 9], [4, 0]]
  ds = tf.data.Dataset.zip(
      tf.data.Dataset.from_generator(lambda: iter(images),
                                     output_signature=tf.TensorSpec([None, None, 3], tf.uint8)),
      tf.data.Dataset.from_tensor_slices(tf.constant(seeds, tf.int64)))
  ds = ds.map(lambda x, seed: (ra.rand_augment(x, seed, config), cj.color_jitter(x, seed)))
  for (augmented, jittered), image, seed in zip(ds, images, seeds, strict=True):
    seed = tf.constant(seed, tf.int32)
    np.testing.assert_array_equal(augmented.numpy(), ra.rand_augment(image, seed, config).numpy())
    np.testing.assert_array_equal(jittered.numpy(), cj.color_jitter(image, seed).numpy())
  image = IMAGES['168x200_flat']
  for seed in ([3, 9], [12, 0]):
    np.testing.assert_array_equal(ra.rand_augment(image, tf.constant(seed), config).numpy(),
                                  ra.rand_augment(image, tf.constant(seed), config).numpy())


@pytest.mark.parametrize('image_name', sorted(IMAGES))
def test_color_jitter_equals_pil_enhance_in_order(image_name):
  image = IMAGES[image_name]
  enhancers = (ImageEnhance.Brightness, ImageEnhance.Contrast, ImageEnhance.Color)
  rng = np.random.RandomState(0)
  factor_sets = [rng.uniform(0.6, 1.4, 3) for _ in range(2)] + [np.array([0.6, 1.4, 0.6])]
  for order, factors in itertools.product(itertools.permutations(range(3)), factor_sets):
    pil = Image.fromarray(image)
    for index in order:
      pil = enhancers[index](pil).enhance(float(factors[index]))
    got = cj.apply_color_jitter(image, tf.constant(factors), tf.constant(order, tf.int32))
    assert _diff(got, np.asarray(pil)).max() == 0, (order, factors)


def test_color_jitter_random_parameters():
  count = 6000
  seeds = tf.stack([tf.range(count), tf.fill([count], 5)], axis=1)
  ds = tf.data.Dataset.from_tensor_slices(seeds).map(cj.color_jitter_params)
  factors, orders = (t.numpy() for t in next(iter(ds.batch(count))))
  assert factors.min() >= 0.6 and factors.max() <= 1.4
  assert np.all(np.abs(factors.mean(axis=0) - 1.0) < 0.015)
  assert np.all(np.abs(factors.std(axis=0) - 0.8 / np.sqrt(12)) < 0.01)
  assert np.all(np.abs(np.corrcoef(factors.T) - np.eye(3)) < 0.05)
  assert np.all(np.sort(orders, axis=1) == [0, 1, 2])
  frequencies = np.unique(orders, axis=0, return_counts=True)[1] / count
  assert len(frequencies) == 6 and np.all(np.abs(frequencies - 1 / 6) < 0.03), frequencies
  image = IMAGES['168x200_flat']
  seed = tf.constant([1, 2])
  np.testing.assert_array_equal(cj.color_jitter(image, seed).numpy(),
                                cj.apply_color_jitter(image, *cj.color_jitter_params(seed)).numpy())
  still, _ = cj.color_jitter_params(seed, brightness=0.0, contrast=0.0, saturation=0.0)
  np.testing.assert_array_equal(still.numpy(), [1.0, 1.0, 1.0])
  wide, _ = cj.color_jitter_params(seed, brightness=1.5)
  assert 0.0 <= wide.numpy()[0] <= 2.5
  with pytest.raises(ValueError, match='must be >= 0'):
    cj.color_jitter_params(seed, contrast=-0.1)
