"""Class names shipped as package data: ImageNet-1k's 1000 WordNet ids and names, in class order.

`imagenet1k.tsv` holds one `wnid<TAB>name` line per class, in the standard order (the sorted
WordNet ids, as ImageFolder and TFDS number them), which is the order of the released heads.
"""

from __future__ import annotations

import functools
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
