"""The training augmentation that runs inside the jitted step, in the order of timm 0.5.4's
transforms and prefetcher, which the paper's training used (no TensorFlow here).

The host pipeline yields each image's RandomResizedCrop window on a uint8 canvas, with its size
and the filter drawn for it (`pipeline.train_batches`). Then, per image, with draws of its own:

1. the resize of the crop to `image_size`, Pillow's (`pil_resize.py`, bit-exact), and
   `RandomHorizontalFlip` (`hflip`);
2. `RandAugment` (`randaugment.py`), or torchvision's `ColorJitter` when it is off;

then, as the original `train.py` with `--mixup 0.8 --cutmix 1.0 --reprob 0.25` and its
prefetcher on:

3. `FastCollateMixup`: Mixup/CutMix per group of `group_size` consecutive images (the original's
   per-GPU batch of 256): one lambda and one CutMix box per group, each image mixed with its
   mirror in the reversed group, the mixed pixels rounded back to uint8; smoothed, mixed targets.
4. Normalisation with the ImageNet mean and std (the prefetcher's `(x - 255 mean) / (255 std)`).
5. `RandomErasing` (pixel mode, one box) per image, on the normalised images: with probability
   `reprob`, up to ten attempts of area fraction U(0.02, 1/3) and log-uniform aspect ratio in
   (0.3, 1/0.3); the first box strictly inside the image is placed uniformly and filled with
   per-pixel N(0, 1) noise.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from sequencer_jax.data import color_jitter, pil_resize, randaugment
from sequencer_jax.data.mixup import MixupConfig, mixup_cutmix, smooth_one_hot
from sequencer_jax.models.data_config import IMAGENET_MEAN, IMAGENET_STD

ERASE_AREA = (0.02, 1 / 3)
ERASE_LOG_ASPECT = (math.log(0.3), -math.log(0.3))
ERASE_ATTEMPTS = 10


@dataclasses.dataclass(frozen=True)
class DeviceAugment:
  """The step's augmentation; each field names its timm flag."""

  num_classes: int
  image_size: int  # --img-size: the resize's output
  hflip: float = 0.5  # --hflip
  # --aa rand-m9-mstd0.5-inc1 (None: off), with --train-interpolation random.
  rand_augment: randaugment.RandAugmentConfig | None = randaugment.parse_rand_augment(
      'rand-m9-mstd0.5-inc1')
  color_jitter: float = 0.4  # --color-jitter, only when rand_augment is None
  label_smoothing: float = 0.1  # --smoothing
  mixup: MixupConfig | None = None  # --mixup, --cutmix, ... (None: both off)
  group_size: int = 256  # -b of the original's per-GPU batch: one lambda per group
  reprob: float = 0.25  # --reprob
  mean: tuple[float, float, float] = IMAGENET_MEAN
  std: tuple[float, float, float] = IMAGENET_STD

  def __post_init__(self):
    if self.mixup is not None and (self.mixup.label_smoothing != self.label_smoothing
                                   or self.mixup.num_classes != self.num_classes):
      raise ValueError(f'the mixup config (smoothing {self.mixup.label_smoothing}, '
                       f'{self.mixup.num_classes} classes) disagrees with label_smoothing '
                       f'{self.label_smoothing} and num_classes {self.num_classes}')
    if not 0.0 <= self.hflip <= 1.0 or self.color_jitter < 0:
      raise ValueError(f'hflip {self.hflip} must be in [0, 1] and color_jitter '
                       f'{self.color_jitter} >= 0')
    if self.group_size < 1 or not 0.0 <= self.reprob <= 1.0:
      raise ValueError(f'group_size {self.group_size} must be >= 1 and reprob {self.reprob} '
                       f'in [0, 1]')


def normalization_table(mean: tuple[float, ...], std: tuple[float, ...]) -> np.ndarray:
  """timm's prefetcher normalisation of every uint8 level, float32 [256, channels]: (x - m) / s
  with m and s float32 of the doubles 255 mean and 255 std, in float32 as torch computes it."""
  levels = np.arange(256, dtype=np.float32)[:, None]
  return ((levels - np.array([255 * m for m in mean], np.float32))
          / np.array([255 * s for s in std], np.float32))


def normalize(images: jax.Array, mean: tuple[float, ...] = IMAGENET_MEAN,
              std: tuple[float, ...] = IMAGENET_STD) -> jax.Array:
  """uint8 (0..255) images [..., C] -> float32, as timm's prefetcher: (x - 255 mean) / (255 std).

  A lookup in `normalization_table`, computed on the host: the compilers turn a division by a
  constant into a multiplication by its reciprocal (1 ulp off), and TPUs divide inexactly."""
  table = jnp.asarray(normalization_table(mean, std))
  return table[images.astype(jnp.int32), jnp.arange(table.shape[1])]


def mix_groups(images: jax.Array, labels: jax.Array, rng: jax.Array, config: MixupConfig,
               group_size: int) -> tuple[jax.Array, jax.Array]:
  """Mixup/CutMix with its own draws per group of `group_size` consecutive images (a batch
  smaller than one group is one group)."""
  size = images.shape[0]
  group = min(group_size, size)
  if size % group:
    raise ValueError(f'the batch of {size} does not split into groups of {group} for mixup '
                     f'(aug.mixup_group_size)')
  count = size // group
  grouped = images.reshape(count, group, *images.shape[1:])
  mixed, targets = jax.vmap(lambda x, y, key: mixup_cutmix(x, y, key, config))(
      grouped, labels.reshape(count, group), jax.random.split(rng, count))
  return mixed.reshape(images.shape), targets.reshape(size, -1)


@dataclasses.dataclass(frozen=True)
class ErasingDraws:
  """The random numbers of RandomErasing for a batch of n images, as timm draws them."""

  apply: jax.Array  # (n,) U(0, 1): erase when <= reprob
  area: jax.Array  # (n, 10) U(0.02, 1/3): area fraction of each attempt
  log_aspect: jax.Array  # (n, 10) U(log 0.3, -log 0.3)
  top: jax.Array  # (n,) U(0, 1): placement of the box that fits
  left: jax.Array  # (n,) U(0, 1)
  noise: jax.Array  # (n, H, W, C) N(0, 1)


def erasing_draws(rng: jax.Array, shape: tuple[int, ...]) -> ErasingDraws:
  """Fresh draws for a batch of `shape` (n, H, W, C)."""
  keys = jax.random.split(rng, 6)
  n = shape[0]
  return ErasingDraws(
      apply=jax.random.uniform(keys[0], (n,)),
      area=jax.random.uniform(keys[1], (n, ERASE_ATTEMPTS), minval=ERASE_AREA[0],
                              maxval=ERASE_AREA[1]),
      log_aspect=jax.random.uniform(keys[2], (n, ERASE_ATTEMPTS), minval=ERASE_LOG_ASPECT[0],
                                    maxval=ERASE_LOG_ASPECT[1]),
      top=jax.random.uniform(keys[3], (n,)), left=jax.random.uniform(keys[4], (n,)),
      noise=jax.random.normal(keys[5], shape))


def erasing_boxes(draws: ErasingDraws, height: int, width: int, reprob: float) -> jax.Array:
  """(n, 4) [top, left, h, w] of each image's box ([0, 0, 0, 0]: nothing erased)."""
  target = draws.area * (height * width)
  aspect = jnp.exp(draws.log_aspect)
  h = jnp.round(jnp.sqrt(target * aspect)).astype(jnp.int32)
  w = jnp.round(jnp.sqrt(target / aspect)).astype(jnp.int32)
  fits = (w < width) & (h < height)
  first = jnp.argmax(fits, axis=1)
  h = jnp.take_along_axis(h, first[:, None], 1)[:, 0]
  w = jnp.take_along_axis(w, first[:, None], 1)[:, 0]
  # Python's random.randint(0, n), both ends included, from a uniform draw.
  top = jnp.minimum(jnp.floor(draws.top * (height - h + 1)), height - h).astype(jnp.int32)
  left = jnp.minimum(jnp.floor(draws.left * (width - w + 1)), width - w).astype(jnp.int32)
  erase = (draws.apply <= reprob) & jnp.any(fits, axis=1)
  return jnp.where(erase[:, None], jnp.stack([top, left, h, w], axis=1), 0)


def erase(images: jax.Array, draws: ErasingDraws, reprob: float) -> jax.Array:
  """RandomErasing of normalised NHWC `images` with `draws`."""
  _, height, width, _ = images.shape
  top, left, h, w = jnp.moveaxis(erasing_boxes(draws, height, width, reprob), 1, 0)
  rows = jnp.arange(height)[None, :, None]
  cols = jnp.arange(width)[None, None, :]
  inside = ((rows >= top[:, None, None]) & (rows < (top + h)[:, None, None])
            & (cols >= left[:, None, None]) & (cols < (left + w)[:, None, None]))
  return jnp.where(inside[..., None], draws.noise.astype(images.dtype), images)


class TransformDraws(NamedTuple):
  """The random choices of `pil_transform` for a batch of n images."""

  flip: jax.Array  # (n,) bool
  layers: randaugment.LayerParams | None  # RandAugment's, when it is on
  jitter: tuple[jax.Array, jax.Array] | None  # ColorJitter's (factors, order), when it is on


def transform_draws(rng: jax.Array, batch: int, config: DeviceAugment) -> TransformDraws:
  """Fresh draws for `batch` images."""
  flip_rng, colour_rng = jax.random.split(rng)
  layers = jitter = None
  if config.rand_augment is not None:
    layers = randaugment.sample_layers(colour_rng, batch, config.rand_augment)
  elif config.color_jitter > 0:
    strength = config.color_jitter
    jitter = color_jitter.color_jitter_params(colour_rng, batch, strength, strength, strength)
  return TransformDraws(flip=jax.random.uniform(flip_rng, (batch,)) < config.hflip,
                        layers=layers, jitter=jitter)


def pil_transform(canvas: jax.Array, crop_size: jax.Array, bicubic: jax.Array,
                  draws: TransformDraws, config: DeviceAugment) -> jax.Array:
  """timm's PIL transforms after the crop, with `draws`: resize to `image_size` with each
  image's filter, horizontal flip, RandAugment (or ColorJitter). uint8 canvases [B, S, S, 3] with
  their crops' (height, width) -> uint8 [B, image_size, image_size, 3]."""
  images = pil_resize.resize_crops(canvas, crop_size, bicubic, config.image_size, draws.flip)
  if draws.layers is not None:
    return randaugment.rand_augment(images, draws.layers, config.rand_augment)
  if draws.jitter is not None:
    return color_jitter.apply_color_jitter(images, *draws.jitter)
  return images


def augment_batch(batch: Mapping[str, jax.Array], rng: jax.Array,
                  config: DeviceAugment) -> tuple[jax.Array, jax.Array]:
  """The host's batch ('image' canvases, 'crop_size', 'bicubic', integer 'label') -> normalised,
  augmented, mixed, erased images and soft targets."""
  pil_rng, mix_rng, erase_rng = jax.random.split(rng, 3)
  canvas = batch['image']
  images = pil_transform(canvas, batch['crop_size'], batch['bicubic'],
                         transform_draws(pil_rng, canvas.shape[0], config), config)
  labels = batch['label']
  if config.mixup is None:
    targets = smooth_one_hot(labels, config.num_classes, config.label_smoothing)
  else:
    images, targets = mix_groups(images, labels, mix_rng, config.mixup, config.group_size)
  images = normalize(images, config.mean, config.std)
  if config.reprob > 0:
    images = erase(images, erasing_draws(erase_rng, images.shape), config.reprob)
  return images, targets
