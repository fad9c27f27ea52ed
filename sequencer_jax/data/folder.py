"""Image folders in the layout the original README asks for: root/{train,val}/<class>/<image>.

Class ids are assigned exactly as torchvision's `ImageFolder` assigns them (class directory names
in Python's sorted order, files found by a sorted walk, the same extensions), so the label ids of
the released checkpoints line up. Validation uses the training split's class ids.
"""

from __future__ import annotations

import dataclasses
import os

from sequencer_jax.errors import DatasetError

# torchvision's IMG_EXTENSIONS, compared case-insensitively as ImageFolder does.
IMG_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.ppm', '.bmp', '.pgm', '.tif', '.tiff', '.webp')
# Of those, the ones TensorFlow's decoders read.
DECODABLE_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.bmp', '.webp')


@dataclasses.dataclass(frozen=True)
class FolderSplit:
  """The files of one split, their class ids, and the class names (index = id)."""

  paths: tuple[str, ...]
  labels: tuple[int, ...]
  classes: tuple[str, ...]


def find_classes(directory: str) -> list[str]:
  """The class directory names of `directory`, sorted as ImageFolder sorts them."""
  if not os.path.isdir(directory):
    raise DatasetError(f'{directory} does not exist or is not a directory; expected the layout '
                       f'root/train/<class>/*.JPEG and root/val/<class>/*.JPEG')
  classes = sorted(e.name for e in os.scandir(directory) if e.is_dir())
  if not classes:
    raise DatasetError(f'{directory} has no class directories')
  return classes


def list_split(root: str, split: str, classes: list[str] | None = None) -> FolderSplit:
  """Lists root/split; `classes` (default: the split's own) fixes the class ids."""
  directory = os.path.join(root, split)
  found = find_classes(directory)
  classes = list(classes) if classes is not None else found
  unknown = sorted(set(found) - set(classes))
  if unknown:
    raise DatasetError(f'{directory} has {len(unknown)} class(es) that the training split does '
                       f'not have: {", ".join(unknown[:10])}')
  paths: list[str] = []
  labels: list[int] = []
  empty, undecodable = [], []
  for name in found:
    count = 0
    for dirpath, _, filenames in sorted(os.walk(os.path.join(directory, name), followlinks=True)):
      for filename in sorted(filenames):
        extension = os.path.splitext(filename)[1].lower()
        if extension not in IMG_EXTENSIONS:
          continue
        if extension not in DECODABLE_EXTENSIONS:
          undecodable.append(os.path.join(dirpath, filename))
          continue
        paths.append(os.path.join(dirpath, filename))
        labels.append(classes.index(name))
        count += 1
    if count == 0:
      empty.append(name)
  if undecodable:
    raise DatasetError(f'{len(undecodable)} file(s) in formats TensorFlow cannot decode '
                       f'(convert them to JPEG or PNG): {", ".join(undecodable[:5])}')
  if empty:
    raise DatasetError(f'{directory}: {len(empty)} class folder(s) hold no images: '
                       f'{", ".join(empty[:10])}')
  return FolderSplit(tuple(paths), tuple(labels), tuple(classes))
