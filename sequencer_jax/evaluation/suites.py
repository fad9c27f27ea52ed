"""The ImageNet evaluation suites: each set read as it is distributed, labelled in ImageNet-1k's
class indices, with the metric its paper defines.

| NAME | folder layout | TFDS | metric |
|---|---|---|---|
| imagenet | `<wnid>/*` | imagenet2012:validation | top-1/top-5 |
| real | ILSVRC2012_val_*.JPEG (flat or in `<wnid>/`) | imagenet2012_real:validation | ReaL |
| imagenet_v2, imagenet_sketch | `<wnid>/*` (V2: `<0..999>/*`) | imagenet_v2, imagenet_sketch:test | top-1/5 |
| imagenet_a, imagenet_r | `<wnid>/*`, 200 of them | imagenet_a:test, imagenet_r:test | top-1/5 of 200 |
| imagenet_c | `<corruption>/<severity>/<wnid>/*` | imagenet2012_corrupted/<c>_<s>:validation | CE, mCE |

WordNet-id folders map to the model's ImageNet-1k indices, never to a new 0..K-1 labelling. Every
set goes through the model's eval transform except ImageNet-C: its images are distributed at
224 x 224, already cropped, and reach the model unchanged (crop_pct 1.0, as validate_c.py feeds
them), normalised with the model's mean and std.

Beside the suites, `accuracy_set` is any split labelled in the model's own classes (training's
`accuracy` evaluations): top-1, top-5 and the mean cross-entropy.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import re
from collections.abc import Callable

import numpy as np
import tensorflow_datasets as tfds

from sequencer_jax.data import folder, sources
from sequencer_jax.data.folder import FolderSplit
from sequencer_jax.errors import DatasetError
from sequencer_jax.evaluation import metrics
from sequencer_jax.labels import imagenet1k_wnids, imagenet_real_labels, subset_indices, subset_wnids
from sequencer_jax.models import DataConfig

SUITES = ('imagenet', 'real', 'imagenet_v2', 'imagenet_sketch', 'imagenet_a', 'imagenet_r',
          'imagenet_c')
DEFAULT_SPLITS = {'imagenet2012': 'validation', 'imagenet2012_real': 'validation',
                  'imagenet_v2': 'test', 'imagenet_sketch': 'test', 'imagenet_a': 'test',
                  'imagenet_r': 'test', 'imagenet2012_corrupted': 'validation'}
ACCURACY = 'accuracy'
IMAGENET_C_SIZE = 224  # ImageNet-C's images: centre crops of ImageNet's validation set.
_REAL_FILE = re.compile(r'ILSVRC2012_val_(\d{8})\.')


@dataclasses.dataclass
class EvalSet:
  """One named evaluation: its images, a new empty metric per call of `new_metric`, the class
  subset its logits are restricted to (ImageNet-A/R), and `label_map`, which takes the source's
  labels to ImageNet-1k indices (None: they already are)."""

  name: str
  suite: str
  source: sources.Source
  new_metric: Callable[[], metrics.Metric]
  classes: tuple[int, ...] | None = None
  label_map: np.ndarray | None = None
  with_loss: bool = False  # The labels are the model's classes: the metric gets each loss.
  fixed_size: int | None = None  # Images distributed cropped at this size, fed unchanged.
  labelled: bool = True  # Each image's ImageNet-1k label is known (flat ReaL folders: not).

  def data_config(self, model: DataConfig) -> DataConfig:
    """The transform of this set's images for a model whose eval transform is `model`."""
    if self.fixed_size is None:
      return model
    return dataclasses.replace(model, input_size=self.fixed_size, crop_pct=1.0)


def accuracy_set(name: str, source: sources.Source) -> EvalSet:
  """Top-1, top-5 and the mean cross-entropy on `source`, labelled in the model's classes."""
  return EvalSet(name, ACCURACY, source, metrics.TopK, with_loss=True)


def _wnid_index() -> dict[str, int]:
  return {wnid: i for i, wnid in enumerate(imagenet1k_wnids())}


def _wnid_folder(root: str, allowed: tuple[str, ...] | None = None) -> FolderSplit:
  """`root/<wnid>/...` with labels in ImageNet-1k indices; other folder names are an error.

  ImageNetV2's tars name the folders by class index (0..999) instead: read as such."""
  split = folder.list_split(os.path.dirname(root), os.path.basename(root))
  index = _wnid_index()
  if allowed is None and all(c.isdigit() and int(c) < 1000 for c in split.classes):
    index = {c: int(c) for c in split.classes}
  unknown = [c for c in split.classes if c not in (allowed or index)]
  if unknown:
    what = 'the set\'s 200 classes' if allowed else 'ImageNet-1k WordNet ids'
    raise DatasetError(f'{root}: {len(unknown)} folder(s) are not {what}: '
                       f'{", ".join(unknown[:5])}')
  return FolderSplit(split.paths, tuple(index[split.classes[y]] for y in split.labels),
                     imagenet1k_wnids())


def _real_folder(root: str) -> tuple[FolderSplit, list[tuple[int, ...]], bool]:
  """ImageNet's validation images under their ILSVRC2012 names, their ReaL label sets, and
  whether their original labels are known (images in WordNet-id folders; flat: label 0)."""
  paths = sorted(os.path.join(d, f) for d, _, files in os.walk(root) for f in files
                 if _REAL_FILE.match(f))
  if not paths:
    raise DatasetError(f'{root} holds no ILSVRC2012_val_*.JPEG files, which key ReaL\'s labels')
  real = imagenet_real_labels()
  sets = [real[int(_REAL_FILE.match(os.path.basename(p))[1]) - 1] for p in paths]
  index = _wnid_index()
  labels = [index.get(os.path.basename(os.path.dirname(p))) for p in paths]
  known = None not in labels
  return (FolderSplit(tuple(paths), tuple(labels) if known else (0,) * len(paths),
                      imagenet1k_wnids()), sets, known)


def _corruption_folder(root: str) -> tuple[FolderSplit, list[str], list[int]]:
  """`root/<corruption>/<severity>/<wnid>/...`, every corruption and severity found."""
  paths: list[str] = []
  labels: list[int] = []
  corruptions: list[str] = []
  severities: list[int] = []
  for corruption in sorted(e.name for e in os.scandir(root) if e.is_dir()):
    for severity in sorted(e.name for e in os.scandir(os.path.join(root, corruption))
                           if e.is_dir()):
      if not severity.isdigit():
        raise DatasetError(f'{os.path.join(root, corruption, severity)}: expected the layout '
                           f'<corruption>/<severity 1-5>/<wnid>/')
      split = _wnid_folder(os.path.join(root, corruption, severity))
      paths += split.paths
      labels += split.labels
      corruptions += [corruption] * len(split.paths)
      severities += [int(severity)] * len(split.paths)
  if not paths:
    raise DatasetError(f'{root} holds no <corruption>/<severity>/<wnid>/ images')
  return FolderSplit(tuple(paths), tuple(labels), imagenet1k_wnids()), corruptions, severities


def _tfds_labels(source: sources.TfdsSource) -> np.ndarray:
  """A TFDS split's labels in ImageNet-1k indices (its class names are WordNet ids)."""
  index = _wnid_index()
  names = source.class_names
  if any(n not in index for n in names):
    raise DatasetError(f'{source.name}: its labels are not ImageNet-1k WordNet ids')
  return np.asarray([index[n] for n in names])


def _tfds_column(source: sources.TfdsSource, key: str) -> list:
  """One feature of every example of the split, in the split's order (ReaL's label sets, which
  the pipeline does not carry)."""
  dataset = source.builder.as_dataset(split=source.split, shuffle_files=False,
                                      decoders={'image': tfds.decode.SkipDecoding()})
  return [row[key] for row in dataset.map(lambda r: {key: r[key]}).as_numpy_iterator()]


def open_eval(name: str, suite: str, dataset: str, split: str | None = None,
              data_dir: str | None = None) -> EvalSet:
  """The evaluation `name` of `suite` (see SUITES) on `dataset`: a folder laid out as the set is
  distributed (`split`: a subfolder), or a TFDS name (`split`: default per dataset)."""
  if suite not in SUITES:
    raise DatasetError(f'unknown evaluation {suite!r}; expected one of {", ".join(SUITES)}')
  if os.path.isdir(dataset):
    root = os.path.join(dataset, split) if split else dataset
    if not os.path.isdir(root):
      raise DatasetError(f'{root} does not exist')
    if suite == 'real':
      split_files, sets, known = _real_folder(root)
      return EvalSet(name, suite, sources.FolderSource(split_files),
                     functools.partial(metrics.RealAccuracy, sets), labelled=known)
    if suite == 'imagenet_c':
      split_files, corruptions, severities = _corruption_folder(root)
      return EvalSet(name, suite, sources.FolderSource(split_files),
                     functools.partial(metrics.CorruptionError, corruptions, severities),
                     fixed_size=IMAGENET_C_SIZE)
    subset = suite if suite in ('imagenet_a', 'imagenet_r') else None
    source = sources.FolderSource(_wnid_folder(root, subset_wnids(subset) if subset else None))
    label_map = None
  else:
    base = dataset.split('/')[0]
    cell = re.fullmatch(r'imagenet2012_corrupted/(\w+)_(\d)', dataset)
    if suite == 'imagenet_c' and not cell:
      raise DatasetError(f'{dataset}: ImageNet-C from TFDS is imagenet2012_corrupted/'
                         f'<corruption>_<severity>, one per --eval (or use the folder layout)')
    source = sources.TfdsSource(dataset, split or DEFAULT_SPLITS.get(base, 'test'), data_dir)
    if suite == 'real':
      sets = [tuple(int(c) for c in s) for s in _tfds_column(source, 'real_label')]
      return EvalSet(name, suite, source, functools.partial(metrics.RealAccuracy, sets))
    label_map = _tfds_labels(source)
    if suite == 'imagenet_c':
      count = source.num_examples
      return EvalSet(name, suite, source, functools.partial(
          metrics.CorruptionError, [cell[1]] * count, [int(cell[2])] * count),
          label_map=label_map, fixed_size=IMAGENET_C_SIZE)
    subset = suite if suite in ('imagenet_a', 'imagenet_r') else None
  classes = subset_indices(subset) if subset else None
  return EvalSet(name, suite, source, metrics.TopK, classes, label_map)

