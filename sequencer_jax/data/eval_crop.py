"""timm's evaluation transform, bit-exact to Pillow, split between the host and the device.

timm (torchvision on PIL images) resizes the shorter side to floor(input_size / crop_pct), the
longer one to int(that * long / short), with Pillow's BICUBIC or BILINEAR, then crops the centre
input_size square at offsets round((extent - input_size) / 2), half to even.

The crop is a window of the resize's output rows and columns, so the host (`prepare`, NumPy)
computes only those rows' and columns' Pillow coefficients (`pil_resize.pillow_coefficients`),
takes the source pixels they read and sends them at the origin of a uint8 canvas with the
coefficients, as integers. The device resizes them (`pil_resize.resize`) and normalises them as
timm's prefetcher does (`model_input`). An image whose window does not fit the canvas (a source
side beyond about canvas / input_size times the crop) is resized on the host by Pillow itself
and sent as its crop with identity coefficients: exact too, only slower (`host_resized`).
"""

from __future__ import annotations

import math

import jax
import numpy as np

from sequencer_jax.data import device_augment, pil_resize
from sequencer_jax.data.pil_resize import Coefficients
from sequencer_jax.models.data_config import DataConfig

# What `prepare` returns for one image, in this order, with each entry's dtype.
FIELDS = (('image', np.uint8), ('row_start', np.int32), ('row_taps', np.int32),
          ('col_start', np.int32), ('col_taps', np.int32), ('vertical', np.bool_),
          ('host_resized', np.bool_))


def canvas_size(input_size: int) -> int:
  """The evaluation canvas's side for `input_size`: the training canvas's, scaled from 224."""
  return max(input_size, round(input_size * pil_resize.CANVAS_SIZE / 224))


def shapes(config: DataConfig) -> dict[str, tuple[int, ...]]:
  """The shape of each field of `prepare` for one image."""
  size, canvas = config.input_size, canvas_size(config.input_size)
  taps = pil_resize.max_taps(canvas, size)
  return {'image': (canvas, canvas, 3), 'row_start': (size,), 'row_taps': (size, taps),
          'col_start': (size,), 'col_taps': (size, taps), 'vertical': (), 'host_resized': ()}


def resized_size(height: int, width: int, config: DataConfig) -> tuple[int, int]:
  """torchvision's `Resize(floor(input_size / crop_pct))` of a PIL image: (height, width)."""
  short_side = math.floor(config.input_size / config.crop_pct)
  short, long = min(height, width), max(height, width)
  long_side = int(short_side * long / short)
  return (long_side, short_side) if width <= height else (short_side, long_side)


def _offset(extent: int, size: int) -> int:
  return int(round((extent - size) / 2.0))  # torchvision's CenterCrop; Python rounds half to even.


def _identity(size: int, taps: int) -> Coefficients:
  weights = np.zeros((size, taps), np.int32)
  weights[:, 0] = 1 << pil_resize.PRECISION_BITS
  return Coefficients(np.arange(size, dtype=np.int32), weights)


def prepare(image: np.ndarray, config: DataConfig) -> dict[str, np.ndarray]:
  """The host's part of timm's eval transform of one uint8 RGB image (H, W, 3): the source
  window on the canvas and its coefficients (the fields of `FIELDS`, shaped as `shapes`)."""
  height, width = image.shape[:2]
  size, canvas = config.input_size, canvas_size(config.input_size)
  taps = pil_resize.max_taps(canvas, size)
  new_h, new_w = resized_size(height, width, config)
  bicubic = np.array([config.interpolation == 'bicubic'] * 2)
  (start, weights), end = pil_resize.pillow_coefficients(
      np.array([height, width]), np.array([new_h, new_w]), bicubic,
      np.array([_offset(new_h, size), _offset(new_w, size)]), size, taps)
  low, high = start.min(axis=1), end.max(axis=1)
  fits = ((high - low) <= canvas).all() and ((end - start) <= taps).all()
  out = np.zeros(shapes(config)['image'], np.uint8)
  if fits:
    (top, left), (bottom, right) = low, high
    out[:bottom - top, :right - left] = image[top:bottom, left:right]
    rows = Coefficients(start[0] - top, weights[0])
    cols = Coefficients(start[1] - left, weights[1])
    vertical = pil_resize.vertical_first(height, width, new_h, new_w)
  else:
    resized = pil_resize.pillow_resize(image, new_h, new_w, config.interpolation == 'bicubic')
    top, left = _offset(new_h, size), _offset(new_w, size)
    out[:size, :size] = resized[top:top + size, left:left + size]
    rows = cols = _identity(size, taps)
    vertical = False
  return {'image': out, 'row_start': rows.start, 'row_taps': rows.taps,
          'col_start': cols.start, 'col_taps': cols.taps, 'vertical': np.bool_(vertical),
          'host_resized': np.bool_(not fits)}


def model_input(batch: dict[str, jax.Array], config: DataConfig) -> jax.Array:
  """The device's part: the prepared batch's crops, resized as Pillow resizes and normalised as
  timm's prefetcher normalises, float32 (B, input_size, input_size, 3)."""
  images = pil_resize.resize(batch['image'], Coefficients(batch['row_start'], batch['row_taps']),
                             Coefficients(batch['col_start'], batch['col_taps']),
                             batch['vertical'])
  return device_augment.normalize(images, config.mean, config.std)
