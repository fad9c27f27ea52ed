"""timm's evaluation transform, bit-exact to Pillow, split between the host and the device.

timm (torchvision on PIL images) resizes the shorter side to floor(input_size / crop_pct), the
longer one to int(that * long / short), with Pillow's BICUBIC or BILINEAR, then crops the centre
input_size square at offsets round((extent - input_size) / 2), half to even.

The crop is a window of the resize's output rows and columns, which reads a window of the source
image. For each image the host (`transforms.eval_example`, in the tf.data graph) decodes, works
out that geometry and places the source window at the origin of a uint8 canvas; for each batch
it computes the crop's Pillow coefficients relative to the windows (`add_coefficients`, NumPy:
`pil_resize.pillow_coefficients`), as integers. The device resizes (`pil_resize.resize`) and
normalises as timm's prefetcher does (`model_input`). An image whose window does not fit the
canvas (a source side beyond about canvas / input_size times the crop) is resized on the host by
Pillow itself and sent as its crop with identity coefficients: exact too, only slower
(`host_resized`).
"""

from __future__ import annotations

import jax
import numpy as np

from sequencer_jax.data import device_augment, pil_resize
from sequencer_jax.data.pil_resize import Coefficients
from sequencer_jax.models.data_config import DataConfig

# Each image's fields from the host's transform: the canvas, the source's (height, width), its
# resized (height, width), the crop's (top, left) in the resized image, the window's (top, left)
# in the source, and whether the host resized it (then the canvas holds the crop itself).
HOST_FIELDS = (('image', np.uint8), ('source_size', np.int32), ('resized_size', np.int32),
               ('crop_offset', np.int32), ('origin', np.int32), ('host_resized', np.bool_))
# The fields `add_coefficients` adds to a batch, which `model_input` reads with 'image'.
COEFFICIENT_FIELDS = (('row_start', np.int32), ('row_taps', np.int32), ('col_start', np.int32),
                      ('col_taps', np.int32), ('vertical', np.bool_))
FIELDS = HOST_FIELDS + COEFFICIENT_FIELDS


def canvas_size(input_size: int) -> int:
  """The evaluation canvas's side for `input_size`: the training canvas's, scaled from 224."""
  return max(input_size, round(input_size * pil_resize.CANVAS_SIZE / 224))


def shapes(config: DataConfig) -> dict[str, tuple[int, ...]]:
  """The shape of each of FIELDS for one image."""
  size, canvas = config.input_size, canvas_size(config.input_size)
  taps = pil_resize.max_taps(canvas, size)
  return {'image': (canvas, canvas, 3), 'source_size': (2,), 'resized_size': (2,),
          'crop_offset': (2,), 'origin': (2,), 'host_resized': (), 'row_start': (size,),
          'row_taps': (size, taps), 'col_start': (size,), 'col_taps': (size, taps), 'vertical': ()}


def add_coefficients(batch: dict[str, np.ndarray], config: DataConfig) -> dict[str, np.ndarray]:
  """The batch of HOST_FIELDS with each crop's coefficients (COEFFICIENT_FIELDS) added. Images
  resized on the host (and padding, marked so) get those of resizing the crop to itself: the
  identity."""
  size, canvas = config.input_size, canvas_size(config.input_size)
  taps = pil_resize.max_taps(canvas, size)
  host = np.asarray(batch['host_resized'], bool)
  source = np.where(host[:, None], size, batch['source_size'])  # [B, 2]: the identity's sides.
  resized = np.where(host[:, None], size, batch['resized_size'])
  first = np.where(host[:, None], 0, batch['crop_offset'])
  origin = np.where(host[:, None], 0, batch['origin'])
  bicubic = np.full(source.size, config.interpolation == 'bicubic')
  (start, weights), end = pil_resize.pillow_coefficients(
      source.reshape(-1), resized.reshape(-1), bicubic, first.reshape(-1), size, taps)
  start = start.reshape(len(host), 2, size) - origin[:, :, None]
  end = end.reshape(len(host), 2, size) - origin[:, :, None]
  if start.min() < 0 or end.max() > canvas:  # The host's window is conservative: never.
    raise AssertionError('a crop reads pixels outside its window on the canvas')
  weights = weights.reshape(len(host), 2, size, taps)
  vertical = pil_resize.vertical_first(source[:, 0], source[:, 1], resized[:, 0], resized[:, 1])
  return {**batch, 'row_start': start[:, 0], 'row_taps': weights[:, 0],
          'col_start': start[:, 1], 'col_taps': weights[:, 1], 'vertical': vertical}


def model_input(batch: dict[str, jax.Array], config: DataConfig) -> jax.Array:
  """The device's part: the batch's crops, resized as Pillow resizes and normalised as timm's
  prefetcher normalises, float32 (B, input_size, input_size, 3)."""
  images = pil_resize.resize(batch['image'], Coefficients(batch['row_start'], batch['row_taps']),
                             Coefficients(batch['col_start'], batch['col_taps']),
                             batch['vertical'])
  return device_augment.normalize(images, config.mean, config.std)
