"""The whole training transform, host and step together, against timm's on the same draws.

Photograph-like JPEGs (smooth random colour fields at several scales plus pixel noise, 4:3 and
3:4 and 3:2) go through the host pipeline (`pipeline.train_transform`: the crop window decoded
onto a canvas) and the step's `device_augment.pil_transform` (resize with the drawn filter,
flip, RandAugment rand-m9-mstd0.5-inc1 with per-layer filters). timm's transforms get the same
draws: PIL's decode of the whole file, the same box, `crop` + `resize` with the same filter, the
same flip, then each applied RandAugment layer as timm's `AugmentOp` at the same magnitude, sign
and filter. Bound: mean |diff| at most 0.5 grey levels per image (the fused decode differs from
a full decode at the window's chroma edge; everything after the crop is exact to PIL or within
the per-op bounds of test_randaugment.py). Measured: see the module's assertion messages.
"""

from __future__ import annotations

import io
from unittest import mock

import jax
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image
from timm.data import auto_augment

from production import production_jit
from sequencer_jax.data import device_augment, pipeline, randaugment, transforms

SHAPES = ((150, 200), (200, 150), (120, 180))  # (height, width)
CANVAS, OUT, COUNT = 208, 64, 24


def _photo(h: int, w: int, rng: np.random.Generator) -> bytes:
  field = np.zeros((h, w, 3), np.float32)
  for cells, amplitude in ((4, 60.0), (12, 35.0), (40, 30.0)):
    coarse = rng.normal(0.0, amplitude, (cells, cells, 3)).astype(np.float32)
    for c in range(3):
      layer = Image.fromarray(coarse[..., c], mode='F').resize((w, h), Image.BICUBIC)
      field[..., c] += np.asarray(layer)
  field += rng.uniform(60.0, 190.0, 3).astype(np.float32) + rng.normal(0.0, 8.0, field.shape)
  buffer = io.BytesIO()
  Image.fromarray(np.clip(field, 0, 255).astype(np.uint8)).save(buffer, 'JPEG', quality=90)
  return buffer.getvalue()


def _timm_op(image: Image.Image, name: str, magnitude: float, negate: bool,
             bicubic: bool) -> Image.Image:
  if name.startswith('Posterize') and auto_augment.LEVEL_TO_ARG[name](magnitude, {})[0] == 0:
    return Image.new('RGB', image.size)  # Pillow <= 12's 0-bit posterize; Pillow 13 refuses.
  hparams = {'img_mean': randaugment.IMG_MEAN_FILL,
             'interpolation': Image.BICUBIC if bicubic else Image.BILINEAR}
  op = auto_augment.AugmentOp(name, prob=1.0, magnitude=magnitude, hparams=hparams)
  with mock.patch('random.random', return_value=0.75 if negate else 0.25):
    return op(image)


# Compiled as in the training step (XLA's default optimisation level, not the suite's -O0).
_pil_transform = production_jit(device_augment.pil_transform, static_argnames='config')


@pytest.mark.parametrize('fused, bound', [(True, 0.5), (False, 0.0)])
def test_host_and_step_together_equal_timms_transform_on_the_same_draws(fused, bound):
  rng = np.random.default_rng(0)
  files = [_photo(*SHAPES[i % len(SHAPES)], rng) for i in range(COUNT)]
  augment = pipeline.TrainAugment(canvas_size=CANVAS, fused_decode=fused)
  seeds = [tf.constant([3, i], tf.int64) for i in range(COUNT)]
  host = [{k: v.numpy() for k, v in pipeline.train_transform(
      tf.constant(f), s, OUT, augment).items()} for f, s in zip(files, seeds)]
  stack = lambda key: np.stack([h[key] for h in host])
  assert not stack('host_resized').any()
  config = device_augment.DeviceAugment(num_classes=10, image_size=OUT)
  draws = device_augment.transform_draws(jax.random.key(1), COUNT, config)
  ours = np.asarray(_pil_transform(stack('image'), stack('crop_size'), stack('bicubic'), draws,
                                   config=config))
  layers = jax.tree.map(np.asarray, draws.layers)
  assert layers.applied.any() and not layers.applied.all()
  names = config.rand_augment.ops
  means = []
  for i, (encoded, seed) in enumerate(zip(files, seeds)):
    crop_seed = tf.random.experimental.stateless_split(
        tf.random.experimental.stateless_split(seed, 3)[0], 2)[0]
    image = Image.open(io.BytesIO(encoded)).convert('RGB')
    top, left, h, w = transforms.random_resized_crop_window(
        image.height, image.width, crop_seed).numpy()
    np.testing.assert_array_equal(host[i]['crop_size'], [h, w])
    bicubic = bool(host[i]['bicubic'])
    image = image.crop((left, top, left + w, top + h)).resize(
        (OUT, OUT), Image.BICUBIC if bicubic else Image.BILINEAR)
    if draws.flip[i]:
      image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    for op, applied, magnitude, negate, layer_bicubic in zip(
        layers.op[i], layers.applied[i], layers.magnitude[i], layers.negate[i],
        layers.bicubic[i]):
      if applied:
        image = _timm_op(image, names[op], float(magnitude), bool(negate), bool(layer_bicubic))
    means.append(np.abs(ours[i].astype(np.float32) - np.asarray(image)).mean())
  assert max(means) <= bound, np.round(means, 3)
