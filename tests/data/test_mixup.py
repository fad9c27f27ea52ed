"""Mixup/CutMix and label smoothing against timm's `Mixup` (batch mode), plus the lambda distribution."""

from __future__ import annotations

from unittest import mock

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from timm.data import mixup as timm_mixup
from timm.data.mixup import Mixup, mixup_target

from sequencer_jax.data.mixup import MixupConfig, cutmix_box, mix_with_reversed, mixup_cutmix

B, H, W, K = 6, 32, 24, 10


def _batch(seed=0):
  rng = np.random.RandomState(seed)
  return rng.randn(B, H, W, 3).astype(np.float32), rng.randint(0, K, B)


def _timm_mix(images, labels, lam, use_cutmix, np_seed):
  """timm's Mixup with its lambda / switch decision fixed; its box centre comes from np.random."""
  mixer = Mixup(mixup_alpha=0.8, cutmix_alpha=1.0, label_smoothing=0.1, num_classes=K)
  mixer._params_per_batch = lambda: (lam, use_cutmix)
  x = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()
  np.random.seed(np_seed)
  x, target = mixer(x, torch.from_numpy(labels))
  return x.permute(0, 2, 3, 1).numpy(), target.numpy()


def test_mixup_equals_timm():
  images, labels = _batch()
  want_x, want_y = _timm_mix(images, labels, 0.3, False, 0)
  got_x, got_y = mix_with_reversed(jnp.asarray(images), jnp.asarray(labels), jnp.asarray(False),
                                   jnp.asarray(0.3), jnp.asarray(0), jnp.asarray(0), K, 0.1)
  np.testing.assert_allclose(got_x, want_x, rtol=0, atol=1e-6)
  np.testing.assert_allclose(got_y, want_y, rtol=0, atol=1e-6)


@pytest.mark.parametrize('lam, np_seed', [(0.75, 1), (0.75, 7), (1 - (12 / 32) ** 2, 3)])
def test_cutmix_equals_timm_with_the_corrected_lambda(lam, np_seed):
  """Equal to timm where timm 0.5.4 and current timm agree (even cut sizes: 16 x 12 for lam 0.75).

  For lam = 1 - (12/32)^2 the cut is 12 x 9, where they differ by a pixel; there only the lambda
  correction is checked.
  """
  images, labels = _batch(np_seed)
  np.random.seed(np_seed)
  cy, cx = np.random.randint(0, H), np.random.randint(0, W)
  got_x, got_y = mix_with_reversed(jnp.asarray(images), jnp.asarray(labels), jnp.asarray(True),
                                   jnp.asarray(lam, jnp.float32), jnp.asarray(cy),
                                   jnp.asarray(cx), K, 0.1)
  want_x, want_y = _timm_mix(images, labels, lam, True, np_seed)
  cut_h, cut_w = int(H * np.sqrt(1 - lam)), int(W * np.sqrt(1 - lam))
  if cut_h % 2 == 0 and cut_w % 2 == 0:
    np.testing.assert_allclose(got_x, want_x, rtol=0, atol=1e-6)
    np.testing.assert_allclose(got_y, want_y, rtol=0, atol=1e-6)
  # Whatever the parity, the targets carry the lambda of the box actually pasted.
  pasted = np.any(np.asarray(got_x) != images, axis=-1)[0].mean()
  lam_used = np.asarray(got_y)[0, labels[0]] - 0.01 if labels[0] != labels[-1] else None
  if lam_used is not None:
    assert lam_used == pytest.approx((1 - pasted) * 0.9, abs=1e-5)


def test_cutmix_box_is_timm_0_5_4_for_odd_sizes_and_clips():
  # lam = 1 - 0.3^2: cut 9 x 7 on 32 x 24 -> half-widths 4 and 3, upper edge cy + 4 (timm 0.5.4).
  lam = jnp.asarray(1 - 0.3 ** 2, jnp.float32)
  box = [int(v) for v in cutmix_box(H, W, lam, jnp.asarray(10), jnp.asarray(5))]
  assert box == [6, 14, 2, 8]
  box = [int(v) for v in cutmix_box(H, W, lam, jnp.asarray(1), jnp.asarray(23))]
  assert box == [0, 5, 20, 24]  # Clipped at the borders.
  images, labels = _batch()
  _, targets = mix_with_reversed(jnp.asarray(images), jnp.asarray(labels), jnp.asarray(True), lam,
                                 jnp.asarray(1), jnp.asarray(23), K, 0.0)
  area = 5 * 4 / (H * W)
  y = np.asarray(targets)
  for i in range(B):
    expected = np.zeros(K)
    expected[labels[i]] += 1 - area
    expected[labels[B - 1 - i]] += area
    np.testing.assert_allclose(y[i], expected, rtol=0, atol=1e-6)


def test_label_smoothing_values_and_sums():
  labels = np.array([0, 3, 9, 3, 1, 2])
  want = mixup_target(torch.from_numpy(labels), K, lam=0.6, smoothing=0.1).numpy()
  _, got = mix_with_reversed(jnp.zeros((B, H, W, 3)), jnp.asarray(labels), jnp.asarray(False),
                             jnp.asarray(0.6), jnp.asarray(0), jnp.asarray(0), K, 0.1)
  np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)
  np.testing.assert_allclose(np.asarray(got).sum(-1), 1.0, rtol=0, atol=1e-6)
  off = mixup_cutmix(jnp.zeros((B, H, W, 3)), jnp.asarray(labels), jax.random.key(0),
                     MixupConfig(K, prob=0.0))[1]
  np.testing.assert_allclose(np.unique(np.asarray(off)), [0.01, 0.91], rtol=0, atol=1e-6)


def test_lambda_distribution_and_switch_probability():
  config = MixupConfig(K, label_smoothing=0.0)
  images = jnp.zeros((2, H, W, 3))
  labels = jnp.asarray([0, 1])

  def draw(key):
    mixed, targets = mixup_cutmix(images.at[0].set(1.0), labels, key, config)
    is_cut = jnp.any(mixed[0] == 0.0) | jnp.all(mixed[0] == 1.0)  # Cut pixels are exactly 0.
    return targets[0, 0], is_cut

  lam, is_cut = jax.jit(jax.vmap(draw))(jax.random.split(jax.random.key(0), 20000))
  lam, is_cut = np.asarray(lam), np.asarray(is_cut)
  assert is_cut.mean() == pytest.approx(0.5, abs=0.02)
  mix = lam[~is_cut]
  # Beta(0.8, 0.8): mean 1/2, variance 0.8^2 / (1.6^2 * 2.6) = 0.0962.
  assert mix.mean() == pytest.approx(0.5, abs=0.01)
  assert mix.var() == pytest.approx(0.64 / (2.56 * 2.6), abs=0.004)
  # CutMix, Beta(1, 1) corrected to the clipped box: the distribution of timm's own draws, with
  # timm 0.5.4's box (the paper's; current timm's box is a pixel larger for odd cut sizes, which
  # moves the mean corrected lambda from 0.705 to 0.692 at this size).
  def rand_bbox_0_5_4(img_shape, lam, margin=0.0, count=None):
    ratio = np.sqrt(1 - lam)
    img_h, img_w = img_shape[-2:]
    cut_h, cut_w = int(img_h * ratio), int(img_w * ratio)
    cy, cx = np.random.randint(0, img_h, size=count), np.random.randint(0, img_w, size=count)
    return (np.clip(cy - cut_h // 2, 0, img_h), np.clip(cy + cut_h // 2, 0, img_h),
            np.clip(cx - cut_w // 2, 0, img_w), np.clip(cx + cut_w // 2, 0, img_w))

  np.random.seed(0)
  with mock.patch.object(timm_mixup, 'rand_bbox', rand_bbox_0_5_4):
    timm_lams = np.array([timm_mixup.cutmix_bbox_and_lam((H, W), np.random.beta(1.0, 1.0))[1]
                          for _ in range(20000)])
  cut = lam[is_cut]
  assert cut.min() >= 0.0 and cut.max() <= 1.0
  assert cut.mean() == pytest.approx(timm_lams.mean(), abs=0.01)
  assert np.median(cut) == pytest.approx(np.median(timm_lams), abs=0.02)
