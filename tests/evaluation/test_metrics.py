"""Each suite's metric on constructed predictions, against a computation by hand."""

from __future__ import annotations

import numpy as np
import pytest

from sequencer_jax.evaluation import metrics
from sequencer_jax.labels import imagenet_real_labels, subset_indices, subset_wnids


def _predictions(*rows):
  return np.asarray(rows)


def test_top_k_counts_the_first_and_any_of_five():
  metric = metrics.TopK()
  # Image 0: top-1 hit. Image 1: label 4th. Image 2: missing. Image 3: top-1.
  metric.update(_predictions([3, 1, 2, 4, 5], [1, 2, 3, 7, 9]), np.array([3, 7]),
                np.array([0, 1]))
  metric.update(_predictions([5, 6, 8, 9, 2], [0, 1, 2, 3, 4]), np.array([1, 0]),
                np.array([2, 3]))
  assert metric.result() == {'top1': 2 / 4, 'top5': 3 / 4, 'images': 4}


def test_real_leaves_out_images_without_labels():
  sets = [(5,), (), (2, 9), (4,)]
  metric = metrics.RealAccuracy(sets)
  metric.update(_predictions([5, 0, 1, 3, 4], [1, 2, 3, 4, 6], [9, 8, 7, 6, 5],
                             [0, 1, 2, 3, 8]), np.zeros(4, int), np.arange(4))
  # Image 1 has no ReaL label: out. Image 0: top-1 in set. Image 2: 9 (top-1) in {2, 9}.
  # Image 3: 4 not in its top-5.
  assert metric.result() == {'top1': 2 / 3, 'top5': 2 / 3, 'images': 3}


def test_the_shipped_label_data():
  real = imagenet_real_labels()
  assert len(real) == 50000 and sum(not s for s in real) == 3163
  for name in ('imagenet_a', 'imagenet_r'):
    assert len(subset_wnids(name)) == 200 and list(subset_indices(name)) == sorted(
        subset_indices(name))
  assert subset_indices('imagenet_a')[:3] == (6, 11, 13)  # timm's imagenet_a_indices.txt
  with pytest.raises(ValueError, match='no class subset'):
    subset_wnids('imagenet')


def _corruption_metric(accuracy_by_cell, images_per_cell=10):
  """A CorruptionError fed predictions with the given top-1 accuracy per (corruption, severity)."""
  labels, corruptions, severities, rows = [], [], [], []
  for (corruption, severity), accuracy in accuracy_by_cell.items():
    for i in range(images_per_cell):
      labels.append(1)
      corruptions.append(corruption)
      severities.append(severity)
      rows.append([1, 2, 3, 4, 5] if i < accuracy * images_per_cell else [0, 2, 3, 4, 5])
  metric = metrics.CorruptionError(corruptions, severities)
  metric.update(np.asarray(rows), np.asarray(labels), np.arange(len(rows)))
  return metric.result()


def test_imagenet_c_corruption_errors_and_mce():
  rng = np.random.default_rng(0)
  accuracy = {(c, s): rng.integers(0, 11) / 10 for c in metrics.CORRUPTIONS
              for s in metrics.SEVERITIES}
  result = _corruption_metric(accuracy)
  by_hand = {}
  for c in metrics.CORRUPTIONS:
    errors = [1 - accuracy[c, s] for s in metrics.SEVERITIES]
    by_hand[c] = sum(errors) / sum(metrics.ALEXNET_ERRORS[c])
    assert result['corruptions'][c]['ce'] == pytest.approx(by_hand[c], rel=1e-12)
    assert result['corruptions'][c]['top1'] == pytest.approx(
        np.mean([accuracy[c, s] for s in metrics.SEVERITIES]))
  assert result['mce'] == pytest.approx(np.mean(list(by_hand.values())), rel=1e-12)
  # validate_c.py's un-normalised mCE: the mean over corruptions of the mean error.
  raw = np.mean([np.mean([1 - accuracy[c, s] for s in metrics.SEVERITIES])
                 for c in metrics.CORRUPTIONS])
  assert result['unnormalized_mce'] == pytest.approx(raw, rel=1e-12)
  assert result['images'] == 750 and 'partial' not in result
  assert result['top1'] == pytest.approx(np.mean(list(accuracy.values())))


def test_alexnet_constants_are_the_published_means():
  """The per-corruption means quoted with the paper (e.g. 0.886428 for Gaussian noise)."""
  means = {'gaussian_noise': 0.886428, 'shot_noise': 0.894468, 'impulse_noise': 0.922640,
           'defocus_blur': 0.819880, 'glass_blur': 0.826268, 'motion_blur': 0.785948,
           'zoom_blur': 0.798360, 'snow': 0.866816, 'frost': 0.826572, 'fog': 0.819324,
           'brightness': 0.564592, 'contrast': 0.853204, 'elastic_transform': 0.646056,
           'pixelate': 0.717840, 'jpeg_compression': 0.606500}
  assert sorted(means) == sorted(metrics.CORRUPTIONS)
  for c, mean in means.items():
    assert np.mean(metrics.ALEXNET_ERRORS[c]) == pytest.approx(mean, abs=1e-6), c


def test_a_partial_imagenet_c_is_reported_as_partial():
  accuracy = {('fog', s): 0.5 for s in metrics.SEVERITIES}
  accuracy.update({('snow', 1): 0.9, ('snow', 2): 0.8})  # Severities missing.
  result = _corruption_metric(accuracy)
  assert result['mce'] is None and result['unnormalized_mce'] is None
  assert result['corruptions']['snow']['ce'] is None
  assert result['corruptions']['fog']['ce'] == pytest.approx(2.5 / sum(
      metrics.ALEXNET_ERRORS['fog']))
  assert 'snow' in result['partial']['missing'] and 'fog' not in result['partial']['missing']
  assert result['partial']['mean_ce_of_complete'] == result['corruptions']['fog']['ce']
