"""Label data shipped with the package: ImageNet-1k's classes, the A/R subsets, ReaL's labels.

`imagenet1k.tsv` holds one `wnid<TAB>name` line per class, in the standard order (the sorted
WordNet ids, as ImageFolder and TFDS number them), which is the order of the released heads.
`imagenet_a.txt` / `imagenet_r.txt` list the 200 WordNet ids of ImageNet-A and -R;
`imagenet_real.json` holds ReaL's label sets of the validation images.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Sequence
from importlib import resources


@functools.cache
def _imagenet1k() -> tuple[tuple[str, str], ...]:
  text = resources.files(__package__).joinpath('imagenet1k.tsv').read_text(encoding='utf-8')
  return tuple(tuple(line.split('\t', 1)) for line in text.splitlines())


def imagenet1k_wnids() -> tuple[str, ...]:
  """The 1000 WordNet ids, index = class id."""
  return tuple(wnid for wnid, _ in _imagenet1k())


def imagenet1k_names() -> tuple[str, ...]:
  """The 1000 class names (WordNet lemmas, e.g. 'tench, Tinca tinca'), index = class id."""
  return tuple(name for _, name in _imagenet1k())


def readable_names(names: Sequence[str]) -> tuple[str, ...]:
  """`names` with ImageNet-1k WordNet ids replaced by their class names (other names kept)."""
  by_wnid = dict(_imagenet1k())
  return tuple(by_wnid.get(name, name) for name in names)


def _lines(filename: str) -> tuple[str, ...]:
  text = resources.files(__package__).joinpath(filename).read_text(encoding='utf-8')
  return tuple(line for line in text.splitlines() if line)


def subset_wnids(name: str) -> tuple[str, ...]:
  """The 200 WordNet ids of ImageNet-A (`imagenet_a`) or ImageNet-R (`imagenet_r`), in their
  ImageNet-1k order (the lists of timm's imagenet_a/r_indices.txt)."""
  if name not in ('imagenet_a', 'imagenet_r'):
    raise ValueError(f'no class subset for {name!r}; expected imagenet_a or imagenet_r')
  return _lines(f'{name}.txt')


def subset_indices(name: str) -> tuple[int, ...]:
  """The ImageNet-1k class indices of `subset_wnids(name)`."""
  index = {wnid: i for i, wnid in enumerate(imagenet1k_wnids())}
  return tuple(index[wnid] for wnid in subset_wnids(name))


@functools.cache
def imagenet_real_labels() -> tuple[tuple[int, ...], ...]:
  """ReaL's label sets (Beyer et al. 2020) of the 50,000 ILSVRC2012 validation images, in file
  order (ILSVRC2012_val_00000001 first); 3,163 sets are empty."""
  text = resources.files(__package__).joinpath('imagenet_real.json').read_text(encoding='utf-8')
  return tuple(tuple(labels) for labels in json.loads(text))
