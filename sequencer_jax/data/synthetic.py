"""A small generated image-folder dataset for the offline demo and the end-to-end tests.

Each class is a visually distinct pattern (stripes of three orientations, a checkerboard, a grid
of dots, a disc) drawn with random colours, position, scale and phase over a noisy background,
written as JPEGs in the ImageFolder layout root/{train,val}/<class>/<i>.JPEG.
"""

from __future__ import annotations

import os

import numpy as np
import tensorflow as tf

CLASSES = ('checkerboard', 'diagonal_stripes', 'disc', 'dots', 'horizontal_stripes',
           'vertical_stripes')


def _pattern(name: str, size: int, rng: np.random.Generator) -> np.ndarray:
  """A boolean (size, size) foreground mask of class `name`."""
  y, x = np.mgrid[0:size, 0:size].astype(np.float32) + 0.5
  period = rng.uniform(0.15, 0.3) * size
  phase = rng.uniform(0, period)
  cy, cx = rng.uniform(0.35, 0.65, size=2) * size
  radius = rng.uniform(0.2, 0.35) * size
  distance = np.hypot(y - cy, x - cx)
  if name == 'horizontal_stripes':
    return ((y + phase) % period) < period / 2
  if name == 'vertical_stripes':
    return ((x + phase) % period) < period / 2
  if name == 'checkerboard':
    return (((y + phase) // (period / 1.5)) + ((x + phase) // (period / 1.5))) % 2 == 0
  if name == 'disc':
    return distance < radius
  if name == 'diagonal_stripes':
    return ((x + y + phase) % period) < period / 2
  if name == 'dots':
    return np.hypot((y + phase) % period - period / 2,
                    (x + phase) % period - period / 2) < period / 4
  raise ValueError(f'unknown class {name!r}; known: {", ".join(CLASSES)}')


def make_image(name: str, size: int, rng: np.random.Generator) -> np.ndarray:
  """One uint8 RGB (size, size, 3) image of class `name`."""
  background, foreground = rng.uniform(0, 255, size=(2, 3))
  while np.abs(background - foreground).max() < 80:
    foreground = rng.uniform(0, 255, size=3)
  image = np.where(_pattern(name, size, rng)[..., None], foreground, background)
  image = image + rng.normal(0, 12, size=image.shape)
  return np.clip(image, 0, 255).astype(np.uint8)


def write_image_folder(root: str, *, train_per_class: int, val_per_class: int, size: int,
                       seed: int = 0) -> None:
  """Writes the dataset under `root`, which must not exist yet (nothing is overwritten)."""
  if os.path.exists(root):
    raise FileExistsError(f'{root} already exists; refusing to write the demo dataset into it')
  rng = np.random.default_rng(seed)
  staging = f'{root}.incomplete'
  for split, count in (('train', train_per_class), ('val', val_per_class)):
    for name in CLASSES:
      directory = os.path.join(staging, split, name)
      os.makedirs(directory, exist_ok=True)
      for i in range(count):
        encoded = tf.io.encode_jpeg(make_image(name, size, rng), quality=90)
        tf.io.write_file(os.path.join(directory, f'{i}.JPEG'), encoded)
  os.rename(staging, root)
