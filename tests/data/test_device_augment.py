"""The train step's augmentation against timm's on the same draws: FastCollateMixup on uint8
images (rounding included), the prefetcher's normalisation, RandomErasing after it; and the
groups that fix one lambda per 256 images. Compiled as the training step compiles (XLA's
default optimisation level, `production_jit`), not at the suite's -O0."""

from __future__ import annotations

import math
from unittest import mock

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from timm.data import random_erasing as timm_erasing
from timm.data.mixup import FastCollateMixup

from production import production_jit
from sequencer_jax.data import device_augment as dev
from sequencer_jax.data import randaugment
from sequencer_jax.data.mixup import MixupConfig, mix_with_reversed, mixup_cutmix

B, H, W, K = 6, 32, 24, 10


def _uint8_batch(seed=0):
  rng = np.random.default_rng(seed)
  return rng.integers(0, 256, (B, H, W, 3), dtype=np.uint8), rng.integers(0, K, B)


def _timm_fast_collate(images, labels, lam, use_cutmix, np_seed):
  """timm's FastCollateMixup (the original's collate with the prefetcher) with its lambda and
  switch fixed; its box centre comes from np.random."""
  mixer = FastCollateMixup(mixup_alpha=0.8, cutmix_alpha=1.0, label_smoothing=0.1,
                           num_classes=K)
  mixer._params_per_batch = lambda: (lam, use_cutmix)
  np.random.seed(np_seed)
  output, target = mixer([(np.ascontiguousarray(x.transpose(2, 0, 1)), int(y))
                          for x, y in zip(images, labels)])
  return output.permute(0, 2, 3, 1).numpy(), target.numpy()


@pytest.mark.parametrize('lam', [0.3, 0.5, 0.8137])
def test_uint8_mixup_equals_fast_collate_mixup(lam):
  """Pixels equal exactly (rounded half to even back to uint8, as np.rint), eagerly and under
  jit as in the train step (where XLA could fuse the two products into an FMA); targets to
  1e-6."""
  images, labels = _uint8_batch()
  want_x, want_y = _timm_fast_collate(images, labels, lam, False, 0)
  for mix in (mix_with_reversed, production_jit(mix_with_reversed, static_argnums=(6, 7))):
    got_x, got_y = mix(jnp.asarray(images), jnp.asarray(labels), jnp.asarray(False),
                       jnp.asarray(lam, jnp.float32), jnp.asarray(0), jnp.asarray(0), K, 0.1)
    assert got_x.dtype == jnp.uint8
    np.testing.assert_array_equal(np.asarray(got_x), want_x)
    np.testing.assert_allclose(got_y, want_y, rtol=0, atol=1e-6)


def test_uint8_cutmix_equals_fast_collate_mixup():
  """An even cut (16 x 12 for lambda 0.75), where timm 0.5.4's box and today's agree."""
  images, labels = _uint8_batch(3)
  np.random.seed(5)
  cy, cx = np.random.randint(0, H), np.random.randint(0, W)
  want_x, want_y = _timm_fast_collate(images, labels, 0.75, True, 5)
  got_x, got_y = mix_with_reversed(jnp.asarray(images), jnp.asarray(labels), jnp.asarray(True),
                                   jnp.asarray(0.75, jnp.float32), jnp.asarray(cy),
                                   jnp.asarray(cx), K, 0.1)
  np.testing.assert_array_equal(np.asarray(got_x), want_x)
  np.testing.assert_allclose(got_y, want_y, rtol=0, atol=1e-6)


def test_normalisation_is_the_prefetchers():
  images, _ = _uint8_batch(1)
  mean = torch.tensor([x * 255 for x in dev.IMAGENET_MEAN]).view(1, 3, 1, 1)
  std = torch.tensor([x * 255 for x in dev.IMAGENET_STD]).view(1, 3, 1, 1)
  want = torch.from_numpy(images).permute(0, 3, 1, 2).float().sub_(mean).div_(std)
  got = production_jit(dev.normalize)(images)
  np.testing.assert_array_equal(np.asarray(got), want.permute(0, 2, 3, 1).numpy())
  every_level = np.arange(256, dtype=np.uint8).reshape(1, 16, 16, 1).repeat(3, axis=-1)
  want = torch.from_numpy(every_level).permute(0, 3, 1, 2).float().sub_(mean).div_(std)
  np.testing.assert_array_equal(np.asarray(production_jit(dev.normalize)(every_level)),
                                want.permute(0, 2, 3, 1).numpy())


def test_each_group_draws_its_own_lambda():
  config = MixupConfig(K)
  mix_groups = jax.jit(dev.mix_groups, static_argnames=('config', 'group_size'))
  mix_one_group = jax.jit(mixup_cutmix, static_argnames='config')
  images = np.random.default_rng(2).integers(0, 256, (8, H, W, 3), dtype=np.uint8)
  labels = np.arange(8) % K
  key = jax.random.key(4)
  mixed, targets = (np.asarray(a) for a in mix_groups(images, labels, key, config=config,
                                                       group_size=4))
  for g, group_key in enumerate(jax.random.split(key, 2)):
    want_x, want_y = mix_one_group(images[4 * g:4 * g + 4], labels[4 * g:4 * g + 4], group_key,
                                   config=config)
    np.testing.assert_array_equal(mixed[4 * g:4 * g + 4], want_x)
    np.testing.assert_allclose(targets[4 * g:4 * g + 4], want_y, rtol=0, atol=1e-7)
  # Each image mixes with its mirror within its group, never across groups.
  lams = targets[np.arange(8), labels]
  assert not np.allclose(lams[:4], lams[4:])
  # A batch smaller than a group is one group (of 4, the shape compiled above).
  whole, _ = mix_groups(images[:4], labels[:4], key, config=config, group_size=256)
  np.testing.assert_array_equal(whole, mix_one_group(images[:4], labels[:4],
                                                     jax.random.split(key, 1)[0],
                                                     config=config)[0])
  with pytest.raises(ValueError, match='batch of 8 does not split into groups of 3'):
    dev.mix_groups(images, labels, key, config, group_size=3)


@production_jit  # One compilation for both probabilities, as the step compiles.
def _erase_with_draws(images, key, reprob):
  """RandomErasing with fresh draws: the erased images, the draws (as a dict of their fields)
  and each image's box."""
  _, h, w, _ = images.shape
  draws = dev.erasing_draws(key, images.shape)
  return dev.erase(images, draws, reprob), vars(draws), dev.erasing_boxes(draws, h, w, reprob)


def _timm_erase(images_nchw, draws, boxes, reprob):
  """timm's RandomErasing (pixel mode) on a batch, its Python draws replaced by ours (`draws`,
  placing each image's box at `boxes`)."""
  n, c, h, w = images_nchw.shape
  calls = []
  for i in range(n):
    calls.append(('random', float(draws.apply[i])))
    if draws.apply[i] <= reprob:
      for k in range(dev.ERASE_ATTEMPTS):
        calls += [('uniform', float(draws.area[i, k])), ('uniform', float(draws.log_aspect[i, k]))]
        ta = float(draws.area[i, k]) * h * w
        ar = math.exp(float(draws.log_aspect[i, k]))
        if int(round(math.sqrt(ta / ar))) < w and int(round(math.sqrt(ta * ar))) < h:
          calls += [('randint', int(boxes[i, 0])), ('randint', int(boxes[i, 1]))]
          break
  replay = iter(calls)

  def draw(kind):
    def f(*args):
      got_kind, value = next(replay)
      assert got_kind == kind, (got_kind, kind)
      return value
    return f

  noise = torch.from_numpy(np.array(draws.noise)).permute(0, 3, 1, 2)
  current = {}

  def pixels(per_pixel, rand_color, patch_size, dtype, device):
    top, left = current['box']
    return noise[current['i'], :, top:top + patch_size[1], left:left + patch_size[2]]

  eraser = timm_erasing.RandomErasing(probability=reprob, mode='pixel', device='cpu')
  with mock.patch.object(timm_erasing.random, 'random', draw('random')), \
       mock.patch.object(timm_erasing.random, 'uniform', draw('uniform')), \
       mock.patch.object(timm_erasing.random, 'randint', draw('randint')), \
       mock.patch.object(timm_erasing, '_get_pixels', pixels):
    out = images_nchw.clone()
    for i in range(n):
      current.update(i=i, box=(int(boxes[i, 0]), int(boxes[i, 1])))
      eraser._erase(out[i], c, h, w, out.dtype)
  assert next(replay, None) is None  # timm drew exactly what we drew.
  return out


@pytest.mark.parametrize('reprob', [0.25, 1.0])
def test_random_erasing_equals_timm_on_the_same_draws(reprob):
  images = np.random.default_rng(6).standard_normal((64, 28, 36, 3)).astype(np.float32)
  got, draws, boxes = jax.device_get(_erase_with_draws(images, jax.random.key(7), reprob))
  want = _timm_erase(torch.from_numpy(images).permute(0, 3, 1, 2), dev.ErasingDraws(**draws),
                     boxes, reprob)
  np.testing.assert_array_equal(got, want.permute(0, 2, 3, 1).numpy())
  erased = np.any(got != images, axis=(1, 2, 3))
  assert erased.mean() == (1.0 if reprob == 1.0 else pytest.approx(reprob, abs=0.15))


def test_the_step_order_transform_mix_normalise_erase():
  rng = np.random.default_rng(8)
  batch = {'image': rng.integers(0, 256, (B, 40, 40, 3), dtype=np.uint8),
           'crop_size': rng.integers(8, 41, (B, 2)).astype(np.int32),
           'bicubic': rng.random(B) < 0.5, 'label': rng.integers(0, K, B)}
  config = dev.DeviceAugment(num_classes=K, image_size=24, mixup=MixupConfig(K), group_size=3,
                             reprob=0.5)

  @jax.jit  # One compilation for the step's augmentation and its stages.
  def step_and_stages(batch, key):
    pil_key, mix_key, erase_key = jax.random.split(key, 3)
    images = dev.pil_transform(batch['image'], batch['crop_size'], batch['bicubic'],
                               dev.transform_draws(pil_key, B, config), config)
    mixed, targets = dev.mix_groups(images, batch['label'], mix_key, config.mixup, 3)
    erased = dev.erase(dev.normalize(mixed), dev.erasing_draws(erase_key, mixed.shape), 0.5)
    return dev.augment_batch(batch, key, config), images, (erased, targets)

  (got_x, got_y), images, (want_x, want_y) = step_and_stages(batch, jax.random.key(9))
  assert images.shape == (B, 24, 24, 3) and images.dtype == jnp.uint8
  np.testing.assert_array_equal(got_x, want_x)
  np.testing.assert_array_equal(got_y, want_y)
  with pytest.raises(ValueError, match='disagrees with label_smoothing 0.2'):
    dev.DeviceAugment(num_classes=K, image_size=24, label_smoothing=0.2, mixup=MixupConfig(K))
  with pytest.raises(ValueError, match='hflip 1.5 must be in'):
    dev.DeviceAugment(num_classes=K, image_size=24, hflip=1.5)


def test_the_papers_config_gives_the_papers_step_augmentation():
  from configs import default
  from sequencer_jax.train import config as train_config
  config = default.get_config()
  augment = train_config.device_augment(config)
  assert (augment.image_size, augment.hflip) == (224, 0.5)
  assert augment.rand_augment == randaugment.RandAugmentConfig(
      num_ops=2, magnitude=9.0, magnitude_std=0.5, increasing=True, interpolation='random')
  assert (augment.group_size, augment.reprob, augment.label_smoothing) == (256, 0.25, 0.1)
  assert (augment.mixup.mixup_alpha, augment.mixup.cutmix_alpha) == (0.8, 1.0)
  config.aug.mixup = config.aug.cutmix = 0.0
  assert train_config.device_augment(config).mixup is None
  config.aug.auto_augment = ''
  assert train_config.device_augment(config).rand_augment is None
  config.aug.auto_augment = 'rand-x9'
  with pytest.raises(train_config.ConfigError, match="config.aug: .*unsupported key 'x'"):
    train_config.device_augment(config)
  config.aug.remode = 'const'
  with pytest.raises(train_config.ConfigError, match="remode 'const' and recount 1: only"):
    train_config.device_augment(config)
  assert train_config.train_augment(config).canvas_size == 512
  config.data.canvas_size = 200
  with pytest.raises(train_config.ConfigError,
                     match='config.data.canvas_size 200 is smaller than config.data.image_size 224'):
    train_config.train_augment(config)
