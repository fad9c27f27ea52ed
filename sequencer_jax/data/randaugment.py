"""timm's RandAugment in TensorFlow ops (CPU, for `tf.data`), on Pillow's ops (`pil_ops.py`).

RandAugment follows timm 0.5.4 `timm/data/auto_augment.py` (the paper trained with
`rand-m9-mstd0.5-inc1`):

* each of `num_ops` layers picks an op uniformly, with replacement, from 15 (the "increasing"
  set with `inc`, else the original set) and applies it with probability 0.5;
* its magnitude is N(m, mstd) (just m if mstd is 0), drawn per layer and clipped to [0, 10];
* the level-to-argument maps are timm's `_*_level_to_arg`: Rotate 30 m / 10 degrees, ShearX/Y
  0.3 m / 10, TranslateX/YRel 0.45 m / 10 of the width / height, each negated with probability
  1/2; the increasing enhance ops (Color, Contrast, Brightness, Sharpness) blend with factor
  1 +- 0.9 m / 10 (random sign), the original ones with 0.1 + 1.8 m / 10; PosterizeIncreasing
  keeps 4 - int(4 m / 10) bits (Posterize int(4 m / 10)), SolarizeIncreasing thresholds at
  256 - int(256 m / 10) (Solarize int(256 m / 10)), SolarizeAdd adds int(110 m / 10) below 128;
* geometric ops fill with timm's `img_mean` (124, 116, 104) and resample with bilinear or
  bicubic, chosen per layer with probability 1/2 (timm's `_RANDOM_INTERPOLATION`, as with
  `--train-interpolation random`), or always one of them.

Where timm 1.0 differs from 0.5.4 for this config, 0.5.4 is followed: `inc<anything>` selects the
increasing set (0.5.4 tests `bool(val)` of the string, 1.0 `bool(int(val))`), mstd > 100 is still
a Gaussian std (1.0 switches to uniform sampling), there are no `mmax`, `p` or `t` keys, and
the level maps have none of 1.0's clamps. Of those, only the enhance factor's lower bound 0.1 ever
binds: at magnitude 10 with the negative sign, 1 - 0.9 = 0.09999999999999998, which Pillow
rounds to the same float32 blend factor as 0.1.

All randomness comes from a `seed` tensor (shape [2], as `tf.random.stateless_*` expects).
"""


from __future__ import annotations

import dataclasses
import re
from typing import NamedTuple

import numpy as np
import tensorflow as tf

from sequencer_jax.data import pil_ops
from sequencer_jax.data.pil_ops import f64, no_autograph

IMG_MEAN_FILL = (124, 116, 104)
RAND_OPS = ('AutoContrast', 'Equalize', 'Invert', 'Rotate', 'Posterize', 'Solarize', 'SolarizeAdd',
            'Color', 'Contrast', 'Brightness', 'Sharpness', 'ShearX', 'ShearY', 'TranslateXRel',
            'TranslateYRel')
RAND_INCREASING_OPS = ('AutoContrast', 'Equalize', 'Invert', 'Rotate', 'PosterizeIncreasing',
                       'SolarizeIncreasing', 'SolarizeAdd', 'ColorIncreasing',
                       'ContrastIncreasing', 'BrightnessIncreasing', 'SharpnessIncreasing',
                       'ShearX', 'ShearY', 'TranslateXRel', 'TranslateYRel')
OPS = tuple(dict.fromkeys(RAND_INCREASING_OPS + RAND_OPS))
INTERPOLATIONS = ('random', 'bilinear', 'bicubic')

_MAX_LEVEL = 10.0
_PROB = 0.5
_SPEC_KEYS = ('m', 'n', 'mstd', 'inc')


@dataclasses.dataclass(frozen=True)
class RandAugmentConfig:
  """RandAugment settings; the defaults are timm's for a bare 'rand' spec."""
  num_ops: int = 2  # n: layers per image.
  magnitude: float = 10.0  # m, in [0, 10].
  magnitude_std: float = 0.0  # mstd.
  increasing: bool = False  # inc: the increasing op set.
  interpolation: str = 'random'  # Geometric ops: 'random' (per layer), 'bilinear' or 'bicubic'.
  fill: tuple[int, int, int] = IMG_MEAN_FILL  # Geometric ops' fill colour.

  def __post_init__(self):
    if self.interpolation not in INTERPOLATIONS:
      raise ValueError(f'interpolation must be one of {INTERPOLATIONS}, got {self.interpolation!r}')
    if self.num_ops < 0:
      raise ValueError(f'num_ops must be >= 0, got {self.num_ops}')

  @property
  def ops(self) -> tuple[str, ...]:
    return RAND_INCREASING_OPS if self.increasing else RAND_OPS


def parse_rand_augment(spec: str, **kwargs) -> RandAugmentConfig:
  """timm's RandAugment spec ('rand-m9-mstd0.5-inc1') -> config; kwargs set the other fields.

  Sections after 'rand' are <key><number> with key m (int), n (int), mstd (float) or inc (any
  number selects the increasing ops, as in timm 0.5.4).
  """
  head, *sections = spec.split('-')
  if head != 'rand':
    raise ValueError(f"RandAugment spec {spec!r} must start with 'rand', not {head!r}")
  values = {}
  for section in sections:
    match = re.fullmatch(r'(\D*)(\d.*)', section)
    if match is None:
      raise ValueError(f'RandAugment spec {spec!r}: section {section!r} is not <key><number>')
    key, value = match.groups()
    if key not in _SPEC_KEYS:
      raise ValueError(f'RandAugment spec {spec!r}: unsupported key {key!r} in section '
                       f'{section!r} (supported: {", ".join(_SPEC_KEYS)})')
    try:
      values[key] = float(value) if key == 'mstd' else int(value)
    except ValueError:
      raise ValueError(f'RandAugment spec {spec!r}: bad value {value!r} for {key!r} in section '
                       f'{section!r}') from None
  fields = {'num_ops': values.get('n', 2), 'magnitude': float(values.get('m', _MAX_LEVEL)),
            'magnitude_std': values.get('mstd', 0.0), 'increasing': 'inc' in values}
  return RandAugmentConfig(**{**fields, **kwargs})


# timm's level -> argument maps, as (multiplier, floored, signed, base, direction): the argument
# is base + direction * g, g = +-(magnitude / 10 * multiplier), floored first where marked.
_ARG_MAPS = {
    'Rotate': (30.0, False, True, 0.0, 1.0),
    'Posterize': (4.0, True, False, 0.0, 1.0),
    'PosterizeIncreasing': (4.0, True, False, 4.0, -1.0),
    'Solarize': (256.0, True, False, 0.0, 1.0),
    'SolarizeIncreasing': (256.0, True, False, 256.0, -1.0),
    'SolarizeAdd': (110.0, True, False, 0.0, 1.0),
    **dict.fromkeys(('ShearX', 'ShearY'), (0.3, False, True, 0.0, 1.0)),
    **dict.fromkeys(('TranslateXRel', 'TranslateYRel'), (0.45, False, True, 0.0, 1.0)),
    **dict.fromkeys(('Color', 'Contrast', 'Brightness', 'Sharpness'),
                    (1.8, False, False, 0.1, 1.0)),
    **dict.fromkeys(('ColorIncreasing', 'ContrastIncreasing', 'BrightnessIncreasing',
                     'SharpnessIncreasing'), (0.9, False, True, 1.0, 1.0)),
}
_NO_ARG = ('AutoContrast', 'Equalize', 'Invert')
_GEOMETRIC = ('Rotate', 'ShearX', 'ShearY', 'TranslateXRel', 'TranslateYRel')
# Each op's kernel op (`pil_ops.KINDS`); a geometric op's bicubic variant is the next kind.
_KIND = {'AutoContrast': 'auto_contrast', 'Equalize': 'equalize', 'Invert': 'invert',
         'Posterize': 'posterize', 'Solarize': 'solarize', 'SolarizeAdd': 'solarize_add',
         'Color': 'color', 'Contrast': 'contrast', 'Brightness': 'brightness',
         'Sharpness': 'sharpness', **dict.fromkeys(_GEOMETRIC, 'affine_bilinear')}


def _check_names(names: tuple[str, ...]) -> None:
  for name in names:
    if name not in OPS:
      raise ValueError(f'unknown op {name!r}; known: {OPS}')


def _level_to_args(names: tuple[str, ...], op, magnitude, negate) -> tf.Tensor:
  """timm's `LEVEL_TO_ARG` (float64) of the ops names[op] at `magnitude` with signs `negate`,
  all of one shape; 0 for the ops without an argument."""
  columns = zip(*(_ARG_MAPS.get(name, (0.0, False, False, 0.0, 1.0)) for name in names))
  # float64 and bool columns (numpy keeps the Python floats' doubles).
  multiplier, floored, signed, base, direction = (tf.gather(np.array(c), op) for c in columns)
  value = f64(magnitude) / _MAX_LEVEL * multiplier
  value = tf.where(floored, tf.floor(value), value)
  value = tf.where(signed & tf.cast(negate, tf.bool), -value, value)
  return base + direction * value


def level_to_arg(name: str, magnitude, negate=False) -> tf.Tensor | None:
  """timm's `LEVEL_TO_ARG[name]` (float64) at a clipped magnitude, with its random sign given.

  None for the ops without an argument (AutoContrast, Equalize, Invert).
  """
  _check_names((name,))
  if name in _NO_ARG:
    return None
  magnitude = f64(magnitude)
  negate = tf.broadcast_to(tf.cast(negate, tf.bool), tf.shape(magnitude))
  return _level_to_args((name,), tf.zeros(tf.shape(magnitude), tf.int32), magnitude, negate)


class LayerParams(NamedTuple):
  """Random choices of the RandAugment layers, each of shape [num_ops]."""
  op: tf.Tensor  # int32 index into config.ops
  applied: tf.Tensor  # bool
  magnitude: tf.Tensor  # float64, clipped to [0, 10]
  negate: tf.Tensor  # bool
  bicubic: tf.Tensor  # bool


@no_autograph
def sample_layers(seed: tf.Tensor, config: RandAugmentConfig) -> LayerParams:
  """Draws every random choice of `rand_augment` from `seed` (int32 or int64, same draws)."""
  n = config.num_ops
  seeds = tf.unstack(tf.random.experimental.stateless_split(tf.cast(seed, tf.int64), 5))

  def uniform(s):
    return tf.random.stateless_uniform([n], s, dtype=tf.float64)

  op = tf.random.stateless_uniform([n], seeds[0], minval=0, maxval=len(config.ops),
                                   dtype=tf.int32)
  magnitude = tf.fill([n], tf.constant(config.magnitude, tf.float64))
  if config.magnitude_std > 0:
    magnitude += config.magnitude_std * tf.random.stateless_normal([n], seeds[2], dtype=tf.float64)
  if config.interpolation == 'random':
    bicubic = uniform(seeds[4]) < 0.5
  else:
    bicubic = tf.fill([n], config.interpolation == 'bicubic')
  return LayerParams(op=op, applied=uniform(seeds[1]) <= _PROB,
                     magnitude=tf.clip_by_value(magnitude, 0.0, _MAX_LEVEL),
                     negate=uniform(seeds[3]) > 0.5, bicubic=bicubic)


@no_autograph
def _layer_ops(names: tuple[str, ...], layers: LayerParams, height, width) -> pil_ops.Ops:
  """The kernel ops (`pil_ops.Ops`) of RandAugment layers that pick from `names`, on an image
  of `height` x `width`; a layer not applied is the identity."""
  _check_names(names)
  arg = _level_to_args(names, layers.op, layers.magnitude, layers.negate)
  kind = tf.gather(tf.constant([pil_ops.KINDS.index(_KIND[n.removesuffix('Increasing')])
                                for n in names]), layers.op)
  geometric = tf.gather(tf.constant([n in _GEOMETRIC for n in names]), layers.op)
  kind += tf.cast(geometric & tf.cast(layers.bicubic, tf.bool), tf.int32)
  kind = tf.where(tf.cast(layers.applied, tf.bool), kind, pil_ops.KINDS.index('identity'))
  one, zero = tf.ones_like(arg), tf.zeros_like(arg)
  matrices = tf.stack([
      tf.stack([one, zero, zero, zero, one, zero], axis=-1),  # Not geometric.
      pil_ops.rotation_matrix(arg, height, width),
      tf.stack([one, arg, zero, zero, one, zero], axis=-1),  # ShearX
      tf.stack([one, zero, zero, arg, one, zero], axis=-1),  # ShearY
      tf.stack([one, zero, arg * f64(width), zero, one, zero], axis=-1),  # TranslateXRel
      tf.stack([one, zero, zero, zero, one, arg * f64(height)], axis=-1),  # TranslateYRel
  ], axis=1)
  geometry = tf.gather(tf.constant([_GEOMETRIC.index(n) + 1 if n in _GEOMETRIC else 0
                                    for n in names]), layers.op)
  return pil_ops.Ops(kind=kind, level=tf.cast(arg, tf.int32), factor=arg,
                     matrix=tf.gather(matrices, geometry, batch_dims=1))


@no_autograph
def apply_op(image: tf.Tensor, name: str, magnitude, negate=False, bicubic=False,
             fill: tuple[int, int, int] = IMG_MEAN_FILL) -> tf.Tensor:
  """timm's op `name` at a (clipped) magnitude on a uint8 RGB image [H, W, 3], with its random
  choices given: `negate` flips the argument's sign (signed ops), `bicubic` selects bicubic over
  bilinear resampling (geometric ops); Python bools or scalar bool tensors."""
  image = tf.convert_to_tensor(image, tf.uint8)
  layer = LayerParams(op=tf.constant([0]), applied=tf.constant([True]),
                      magnitude=tf.reshape(f64(magnitude), [1]),
                      negate=tf.reshape(negate, [1]), bicubic=tf.reshape(bicubic, [1]))
  shape = tf.shape(image)
  return pil_ops.apply(image, _layer_ops((name,), layer, shape[0], shape[1]), fill)


@no_autograph
def rand_augment(image: tf.Tensor, seed: tf.Tensor, config: RandAugmentConfig) -> tf.Tensor:
  """timm's RandAugment on a uint8 RGB image [H, W, 3]; `seed` is a [2] int tensor. One
  kernel call per layer."""
  image = tf.convert_to_tensor(image, tf.uint8)
  if config.num_ops == 0:
    return image
  shape = tf.shape(image)
  ops = _layer_ops(config.ops, sample_layers(seed, config), shape[0], shape[1])
  return pil_ops.apply(image, ops, config.fill)
