"""The metrics of the ImageNet evaluation suites, as their papers define them (NumPy, no TensorFlow).

Every metric is fed batches of per-image top-5 predictions (indices into the model's 1000
ImageNet-1k classes, best first) with the images' labels (ImageNet-1k indices) and their
indices in the set, and returns its figures:

* `TopK`: top-1/top-5 accuracy (ImageNet, V2, Sketch; and A and R, whose predictions are taken
  over their 200 classes only, by the evaluation step), and the mean cross-entropy when the step
  gives each image's loss (training's `accuracy` evaluations, labelled in the model's classes).
* `RealAccuracy`: ReaL (Beyer et al. 2020): a prediction is correct when it is in the image's
  set of ReaL labels; images whose set is empty are left out.
* `CorruptionError`: ImageNet-C (Hendrycks & Dietterich 2019): top-1 per corruption (mean over
  severities), the corruption error CE_c = sum_s E_{s,c} / sum_s E^AlexNet_{s,c}, and mCE, the
  mean CE over the 15 standard corruptions, beside the un-normalised mCE (the mean top-1 error
  over them, validate_c.py's second figure); a partial set is reported as partial.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from typing import Any

import numpy as np

CORRUPTIONS = ('gaussian_noise', 'shot_noise', 'impulse_noise', 'defocus_blur', 'glass_blur',
               'motion_blur', 'zoom_blur', 'snow', 'frost', 'fog', 'brightness', 'contrast',
               'elastic_transform', 'pixelate', 'jpeg_compression')
SEVERITIES = (1, 2, 3, 4, 5)
# AlexNet's top-1 error per corruption and severity 1..5 (Hendrycks & Dietterich 2019), which
# normalise the corruption errors.
ALEXNET_ERRORS = {
    'gaussian_noise': (0.69528, 0.82542, 0.93554, 0.98138, 0.99452),
    'shot_noise': (0.71224, 0.85108, 0.93574, 0.98182, 0.99146),
    'impulse_noise': (0.78374, 0.89808, 0.9487, 0.9872, 0.99548),
    'defocus_blur': (0.65624, 0.73202, 0.85036, 0.91364, 0.94714),
    'glass_blur': (0.64308, 0.75054, 0.88806, 0.91622, 0.93344),
    'motion_blur': (0.5843, 0.70048, 0.82108, 0.8975, 0.92638),
    'zoom_blur': (0.70008, 0.76992, 0.80784, 0.84198, 0.87198),
    'snow': (0.71726, 0.88392, 0.86468, 0.9187, 0.94952),
    'frost': (0.6139, 0.79734, 0.8879, 0.89942, 0.9343),
    'fog': (0.67474, 0.7605, 0.84378, 0.8726, 0.945),
    'brightness': (0.4514, 0.48502, 0.54048, 0.62166, 0.7244),
    'contrast': (0.64548, 0.7615, 0.88874, 0.9776, 0.9927),
    'elastic_transform': (0.52596, 0.70116, 0.55686, 0.64076, 0.80554),
    'pixelate': (0.52218, 0.5462, 0.73728, 0.87092, 0.91262),
    'jpeg_compression': (0.51002, 0.54718, 0.57294, 0.65458, 0.74778),
}


class Metric(abc.ABC):
  """Accumulates batches of top-5 predictions; `result()` gives the figures so far."""

  @abc.abstractmethod
  def update(self, predictions: np.ndarray, labels: np.ndarray, indices: np.ndarray,
             losses: np.ndarray | None = None) -> None:
    """`predictions`: (n, 5) class indices, best first; `labels`: (n,) ImageNet-1k indices;
    `indices`: the images' indices in the evaluated set (for the metrics that look up
    per-image annotations); `losses`: (n,) each image's cross-entropy, when computed."""

  @abc.abstractmethod
  def result(self) -> dict[str, Any]:
    """The figures, and `images`: how many images they count."""


class TopK(Metric):
  """Top-1 and top-5 accuracy against one label per image; with losses, their mean as `loss`."""

  def __init__(self):
    self.hits = np.zeros(2)
    self.count = 0
    self.loss_sum: float | None = None

  def update(self, predictions: np.ndarray, labels: np.ndarray, indices: np.ndarray,
             losses: np.ndarray | None = None) -> None:
    correct = predictions == labels[:, None]
    self.hits += [correct[:, 0].sum(), correct.any(axis=1).sum()]
    self.count += len(labels)
    if losses is not None:
      self.loss_sum = (self.loss_sum or 0.0) + float(np.sum(losses, dtype=np.float64))

  def result(self) -> dict[str, Any]:
    top1, top5_ = self.hits / max(self.count, 1)
    result = {'top1': float(top1), 'top5': float(top5_), 'images': self.count}
    if self.loss_sum is not None:
      result['loss'] = self.loss_sum / max(self.count, 1)
    return result


class RealAccuracy(Metric):
  """ReaL accuracy: top-k is correct when any of its k classes is in the image's label set."""

  def __init__(self, label_sets: Sequence[Sequence[int]]):
    self.label_sets = [frozenset(s) for s in label_sets]
    self.hits = np.zeros(2)
    self.count = 0

  def update(self, predictions: np.ndarray, labels: np.ndarray, indices: np.ndarray,
             losses: np.ndarray | None = None) -> None:
    for row, index in zip(predictions, indices):
      real = self.label_sets[index]
      if real:  # Images without a ReaL label are left out.
        self.hits += [row[0] in real, any(int(c) in real for c in row)]
        self.count += 1

  def result(self) -> dict[str, Any]:
    top1, top5_ = self.hits / max(self.count, 1)
    return {'top1': float(top1), 'top5': float(top5_), 'images': self.count}


class CorruptionError(Metric):
  """ImageNet-C: top-1/top-5 per (corruption, severity), CE per corruption and mCE."""

  def __init__(self, corruptions: Sequence[str], severities: Sequence[int]):
    self.cells = [f'{c}/{s}' for c, s in zip(corruptions, severities)]
    self.hits: dict[str, np.ndarray] = {}
    self.counts: dict[str, int] = {}

  def update(self, predictions: np.ndarray, labels: np.ndarray, indices: np.ndarray,
             losses: np.ndarray | None = None) -> None:
    correct = predictions == labels[:, None]
    for row, index in zip(correct, indices):
      cell = self.cells[index]
      self.hits[cell] = self.hits.get(cell, np.zeros(2)) + [row[0], row.any()]
      self.counts[cell] = self.counts.get(cell, 0) + 1

  def result(self) -> dict[str, Any]:
    per_cell = {cell: self.hits[cell] / self.counts[cell] for cell in self.hits}
    per_corruption: dict[str, dict[str, Any]] = {}
    for cell, (top1, _) in sorted(per_cell.items()):
      corruption, severity = cell.rsplit('/', 1)
      per_corruption.setdefault(corruption, {'top1_by_severity': {}})['top1_by_severity'][
          int(severity)] = float(top1)
    for corruption, figures in per_corruption.items():
      by_severity = figures['top1_by_severity']
      figures['top1'] = float(np.mean(list(by_severity.values())))
      complete = corruption in ALEXNET_ERRORS and sorted(by_severity) == list(SEVERITIES)
      figures['ce'] = (float(sum(1 - by_severity[s] for s in SEVERITIES)
                             / sum(ALEXNET_ERRORS[corruption])) if complete else None)
    total = sum(self.counts.values())
    complete = [c for c in CORRUPTIONS if per_corruption.get(c, {}).get('ce') is not None]
    result: dict[str, Any] = {
        'top1': float(sum(h[0] for h in self.hits.values()) / max(total, 1)),
        'top5': float(sum(h[1] for h in self.hits.values()) / max(total, 1)),
        'images': total, 'corruptions': per_corruption,
        'mce': (float(np.mean([per_corruption[c]['ce'] for c in CORRUPTIONS]))
                if len(complete) == len(CORRUPTIONS) else None)}
    # validate_c.py's second figure: the mean top-1 error over the corruptions, not divided by
    # AlexNet's.
    result['unnormalized_mce'] = (
        float(np.mean([1 - per_corruption[c]['top1'] for c in CORRUPTIONS]))
        if result['mce'] is not None else None)
    if result['mce'] is None:  # A partial set: its mean CE is named as such, never as mCE.
      result['partial'] = {
          'missing': [c for c in CORRUPTIONS if c not in complete],
          'mean_ce_of_complete': (float(np.mean([per_corruption[c]['ce'] for c in complete]))
                                  if complete else None)}
    return result
