"""Where images come from: an extracted image folder, or a prepared TFDS dataset.

A source yields encoded images and labels, one epoch of one process's share at a time. Shares are
contiguous, near-equal parts of the split (folders: sizes differ by at most one; TFDS:
`tfds.even_splits`), so that over all processes every example is read exactly once. Nothing is ever downloaded: a TFDS dataset that is
not prepared in `data_dir` is an immediate error saying how to prepare it.
"""

from __future__ import annotations

import abc
import dataclasses
import os

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from sequencer_jax.data import folder
from sequencer_jax.errors import DatasetError

# Datasets this project knows how to read from TFDS, and the label feature of each.
TFDS_LABEL_KEYS = {
    'imagenet2012': 'label',
    'cifar10': 'label',
    'cifar100': 'label',
    'oxford_flowers102': 'label',
    'cars196': 'label',
    'imagenet_v2': 'label',
    'imagenet2012_real': 'original_label',
    'imagenet_a': 'label',
    'imagenet_r': 'label',
    'imagenet_sketch': 'label',
    'imagenet2012_corrupted': 'label',
}
# These need files that TFDS cannot download: the user puts them in <data_dir>/downloads/manual.
_MANUAL = {
    'imagenet2012': 'ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar (from image-net.org)',
    'imagenet2012_real': 'ILSVRC2012_img_val.tar (from image-net.org)',
    'imagenet2012_corrupted': 'ILSVRC2012_img_val.tar (from image-net.org)',
}


def shard_bounds(num_examples: int, index: int, count: int) -> tuple[int, int]:
  """[start, end) of share `index` of `count` contiguous shares; sizes differ by at most one."""
  if not 0 <= index < count:
    raise ValueError(f'shard index {index} is not in [0, {count})')
  base, extra = divmod(num_examples, count)
  start = index * base + min(index, extra)
  return start, start + base + (index < extra)


class Source(abc.ABC):
  """One split of a dataset: `num_examples` images with labels in [0, num_classes)."""

  num_examples: int
  num_classes: int
  class_names: tuple[str, ...]  # Index = label; ImageNet's as WordNet ids.

  def shard_size(self, index: int, count: int) -> int:
    start, end = shard_bounds(self.num_examples, index, count)
    return end - start

  def shard_start(self, index: int, count: int) -> int:
    """The index in the whole split of share `index`'s first example (shares are contiguous)."""
    return sum(self.shard_size(i, count) for i in range(index))

  @abc.abstractmethod
  def records(self, index: int, count: int, shuffle_seed: int | None = None) -> tf.data.Dataset:
    """One epoch of share `index` of `count` as {'image': encoded bytes, 'label': int32}.

    With `shuffle_seed`, the order is shuffled reproducibly (the caller folds the epoch in);
    without, it is the split's order.
    """

  def describe(self, index: int, count: int, shuffle_seed: int | None, position: int) -> str:
    """A name for the example at `position` of `records(index, count, shuffle_seed)`."""
    return f'example {position} of share {index}/{count}'

  def read_encoded(self, index: int, count: int, shuffle_seed: int | None,
                   position: int) -> bytes | None:
    """The encoded image at `position` of `records(index, count, shuffle_seed)`, read again
    outside tf.data to say why it could not be decoded; None where one record cannot be read
    cheaply. OSError if it cannot be read."""
    return None


@dataclasses.dataclass
class FolderSource(Source):
  """An extracted folder split, read file by file with tf.data (no build step, no copy)."""

  split: folder.FolderSplit

  def __post_init__(self):
    self.num_examples = len(self.split.paths)
    self.num_classes = len(self.split.classes)
    self.class_names = self.split.classes

  def _order(self, index: int, count: int, shuffle_seed: int | None) -> np.ndarray:
    start, end = shard_bounds(self.num_examples, index, count)
    order = np.arange(start, end)
    if shuffle_seed is not None:
      order = np.random.default_rng(shuffle_seed).permutation(order)
    return order

  def records(self, index: int, count: int, shuffle_seed: int | None = None) -> tf.data.Dataset:
    order = self._order(index, count, shuffle_seed)
    paths = np.asarray(self.split.paths, dtype=object)[order]
    labels = np.asarray(self.split.labels, dtype=np.int32)[order]
    dataset = tf.data.Dataset.from_tensor_slices({'path': paths, 'label': labels})
    return dataset.map(lambda r: {'image': tf.io.read_file(r['path']), 'label': r['label']},
                       num_parallel_calls=tf.data.AUTOTUNE)

  def describe(self, index: int, count: int, shuffle_seed: int | None, position: int) -> str:
    return self.split.paths[self._order(index, count, shuffle_seed)[position]]

  def read_encoded(self, index: int, count: int, shuffle_seed: int | None,
                   position: int) -> bytes | None:
    with open(self.describe(index, count, shuffle_seed, position), 'rb') as f:
      return f.read()


class TfdsSource(Source):
  """A split of a TFDS dataset prepared in `data_dir`; images stay encoded until the pipeline."""

  def __init__(self, name: str, split: str, data_dir: str | None = None):
    base = name.split('/')[0]
    if base not in TFDS_LABEL_KEYS:
      raise DatasetError(f'{name!r} is neither an existing image folder nor a supported TFDS '
                         f'dataset ({", ".join(sorted(TFDS_LABEL_KEYS))})')
    self.builder = tfds.builder(name, data_dir=data_dir)
    if not self.builder.is_prepared():
      root = self.builder.data_dir[:-len(self.builder.info.full_name)].rstrip('/')
      raise DatasetError(prepare_instructions(name, root))
    try:
      self.num_examples = self.builder.info.splits[split].num_examples
    except (KeyError, ValueError) as e:
      raise DatasetError(f'{name} has no split {split!r} ({e}); it has '
                         f'{", ".join(sorted(self.builder.info.splits))}') from e
    self.name, self.split = name, split
    self.label_key = TFDS_LABEL_KEYS[base]
    self.num_classes = self.builder.info.features[self.label_key].num_classes
    self.class_names = tuple(self.builder.info.features[self.label_key].names)

  def _share(self, index: int, count: int) -> str:
    shard_bounds(self.num_examples, index, count)  # Validates the index.
    return tfds.even_splits(self.split, n=count, drop_remainder=False)[index]

  def shard_size(self, index: int, count: int) -> int:
    return self.builder.info.splits[self._share(index, count)].num_examples

  def records(self, index: int, count: int, shuffle_seed: int | None = None) -> tf.data.Dataset:
    read_config = tfds.ReadConfig(shuffle_seed=shuffle_seed, skip_prefetch=True,
                                  try_autocache=False)
    dataset = self.builder.as_dataset(
        split=self._share(index, count), shuffle_files=shuffle_seed is not None,
        read_config=read_config, decoders={'image': tfds.decode.SkipDecoding()})
    if shuffle_seed is not None:
      dataset = dataset.shuffle(16_384, seed=shuffle_seed)
    key = self.label_key
    return dataset.map(lambda r: {'image': r['image'], 'label': tf.cast(r[key], tf.int32)},
                       num_parallel_calls=tf.data.AUTOTUNE)


def prepare_instructions(name: str, data_dir: str) -> str:
  """How to get TFDS dataset `name` into the TFDS root `data_dir`. Nothing downloads at run time."""
  base = name.split('/')[0]
  build = f'`tfds build {name} --data_dir={data_dir}`'
  if base in _MANUAL:
    how = (f'Put {_MANUAL[base]} in {os.path.join(data_dir, "downloads", "manual")}, then run '
           f'{build} (it extracts and re-encodes the images once).')
  else:
    how = f'Run {build} on a machine with internet access, and copy {data_dir} here if needed.'
  return (f'TFDS dataset {name!r} is not prepared in {data_dir}; nothing is downloaded at run '
          f'time. {how} Or point the config at an extracted image folder instead.')


def open_source(dataset: str, split: str, data_dir: str | None = None,
                train_split: str = 'train') -> Source:
  """`dataset` is a TFDS name (e.g. 'imagenet2012', 'cifar10') or an image-folder root path.

  For a folder, `split` is the subdirectory ('train', 'val'); class ids always come from
  `train_split`, as ImageFolder's do for the released checkpoints.
  """
  if os.path.isdir(dataset):
    classes = None if split == train_split else folder.find_classes(
        os.path.join(dataset, train_split))
    return FolderSource(folder.list_split(dataset, split, classes))
  return TfdsSource(dataset, split, data_dir)
