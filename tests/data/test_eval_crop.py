"""timm's evaluation transform (the host's window, `transforms.eval_example`, and coefficients,
`eval_crop.add_coefficients`; the device's resize) against Pillow, the device's part compiled at
XLA's default optimisation level as evaluation compiles it (`production_jit`).

The reference is timm's `transforms_imagenet_eval` with its prefetcher, on PIL images as
torchvision runs it: the shorter side resized to floor(size / crop_pct) with Pillow 13's BICUBIC
or BILINEAR, the longer to int(that * long / short), the centre crop at round((extent - size) /
2), then its prefetcher's (x - 255 mean) / (255 std) in torch's float32. Bounds: the device's uint8 crop equal to
Pillow's on every pixel, and the normalised input equal to the prefetcher's (max |diff| 0), for
both filters, crop_pct 0.875, 0.9, 0.95 and 1.0, input sizes 224, 160 and 64, on noisy images
from 1 x 1 to 2000 x 1500 (upscaled and downscaled, both of Pillow's pass orders, images too
large for the canvas that the host resizes). A window shifted by one source pixel is caught.
The device's part holds no float64 operation.
"""

from __future__ import annotations

import math

import jax
import numpy as np
import pytest
import tensorflow as tf
import torch
from PIL import Image

from production import production_jit
from sequencer_jax.data import device_augment, eval_crop, pil_resize, transforms
from sequencer_jax.data.pil_resize import Coefficients
from sequencer_jax.models import DataConfig

CONFIGS = [DataConfig(224, 0.875), DataConfig(224, 1.0, 'bilinear'), DataConfig(160, 0.9),
           DataConfig(64, 0.95, 'bilinear', (0.5, 0.5, 0.5), (0.25, 0.5, 0.75))]


def _timm(image: np.ndarray, config: DataConfig) -> np.ndarray:
  """timm's eval transform of uint8 RGB pixels on PIL, to its uint8 crop."""
  pil = Image.fromarray(image)
  scale_size = math.floor(config.input_size / config.crop_pct)
  w, h = pil.size
  if w <= h:
    size = (scale_size, int(scale_size * h / w))
  else:
    size = (int(scale_size * w / h), scale_size)
  resample = Image.BICUBIC if config.interpolation == 'bicubic' else Image.BILINEAR
  pil = pil.resize(size, resample)
  crop = config.input_size
  top, left = int(round((pil.height - crop) / 2.0)), int(round((pil.width - crop) / 2.0))
  return np.asarray(pil)[top:top + crop, left:left + crop]


def _prefetcher(crops: np.ndarray, config: DataConfig) -> np.ndarray:
  """timm's PrefetchLoader normalisation of uint8 NHWC crops, in torch."""
  mean = torch.tensor([x * 255 for x in config.mean]).view(1, 3, 1, 1)
  std = torch.tensor([x * 255 for x in config.std]).view(1, 3, 1, 1)
  nchw = torch.from_numpy(crops).permute(0, 3, 1, 2).float().sub_(mean).div_(std)
  return nchw.permute(0, 2, 3, 1).numpy()


@production_jit
def _crops(batch: dict) -> jax.Array:
  return pil_resize.resize(batch['image'], Coefficients(batch['row_start'], batch['row_taps']),
                           Coefficients(batch['col_start'], batch['col_taps']), batch['vertical'])


_model_input = production_jit(eval_crop.model_input, static_argnames='config')


def _batch(images: list[np.ndarray], config: DataConfig) -> dict[str, np.ndarray]:
  """The host's part, as tf.data runs it: a graph per image, then the batch's coefficients."""
  host = tf.function(lambda image: transforms.eval_example(image, config),
                     input_signature=[tf.TensorSpec([None, None, 3], tf.uint8)])
  prepared = [{k: v.numpy() for k, v in host(tf.constant(image)).items()} for image in images]
  return eval_crop.add_coefficients(
      {name: np.stack([p[name] for p in prepared]) for name, _ in eval_crop.HOST_FIELDS}, config)


def _images(config: DataConfig, count: int, seed: int) -> list[np.ndarray]:
  rng = np.random.default_rng(seed)
  sizes = [(375, 500), (500, 333), (config.input_size, config.input_size), (1, 1), (3, 700),
           (2000, 1500), (31, 29), (900, 400)]
  sizes += [tuple(s) for s in rng.integers(8, 900, (count - len(sizes), 2))]
  return [rng.integers(0, 256, (*s, 3), dtype=np.uint8) for s in sizes]


@pytest.mark.parametrize('config', CONFIGS, ids=lambda c: f'{c.input_size}-{c.crop_pct}')
def test_the_eval_transform_equals_timms(config):
  images = _images(config, 24, seed=config.input_size)
  batch = _batch(images, config)
  for name, dtype in eval_crop.FIELDS:
    assert batch[name].shape[1:] == eval_crop.shapes(config)[name]
    assert batch[name].dtype == dtype
  want = np.stack([_timm(image, config) for image in images])
  # The normalisation is strictly increasing per channel: equal inputs mean equal crops.
  table = device_augment.normalization_table(config.mean, config.std)
  assert (np.diff(table, axis=0) > 0).all()
  np.testing.assert_array_equal(np.asarray(_model_input(batch, config=config)),
                                _prefetcher(want, config))
  # Both paths and both of Pillow's pass orders were taken.
  assert batch['host_resized'].any() and not batch['host_resized'].all()
  assert batch['vertical'].any() and not batch['vertical'].all()
  assert 'f64' not in _model_input.lower(batch, config=config).as_text()  # Integers and a table.


def test_the_host_sends_only_the_window_the_crop_reads():
  """A 375 x 500 photo at 224 / 0.875: 256 x 341, the crop's rows and columns read about 329 x
  329 source pixels; the window (a few pixels wider) sits at the canvas's origin, zeros around."""
  config = DataConfig(224, 0.875)
  image = np.random.default_rng(3).integers(1, 256, (375, 500, 3), dtype=np.uint8)
  prepared = {k: v.numpy() for k, v in transforms.eval_example(tf.constant(image), config).items()}
  prepared = eval_crop.add_coefficients({k: v[None] for k, v in prepared.items()}, config)
  prepared = {k: v[0] for k, v in prepared.items()}
  canvas = prepared['image']
  assert canvas.shape == (512, 512, 3) and not prepared['host_resized']
  rows, cols = canvas.any(axis=(1, 2)).sum(), canvas.any(axis=(0, 2)).sum()  # Pixels are >= 1.
  assert 329 <= rows <= 345 and 329 <= cols <= 345, (rows, cols)
  assert not canvas[rows:].any() and not canvas[:, cols:].any()
  assert prepared['resized_size'].tolist() == [256, 341]
  assert prepared['crop_offset'].tolist() == [16, 58]  # round(117 / 2) = 58: half to even.
  top, left = prepared['origin']
  np.testing.assert_array_equal(canvas[:rows, :cols], image[top:top + rows, left:left + cols])
  assert 10 <= top <= 20 and 60 <= left <= 80, (top, left)
  assert eval_crop.canvas_size(224) == 512 and eval_crop.canvas_size(64) == 146


def test_a_window_off_by_one_pixel_is_caught():
  config = DataConfig(224, 0.875)
  images = _images(config, 8, seed=5)
  batch = _batch(images, config)
  shifted = dict(batch, row_start=batch['row_start'] + np.where(batch['host_resized'], 0, 1)[:, None])
  want = np.stack([_timm(image, config) for image in images])
  differs = (np.asarray(_crops(shifted)) != want).reshape(len(images), -1).any(axis=1)
  np.testing.assert_array_equal(differs, ~batch['host_resized'])
