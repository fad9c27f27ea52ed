"""timm's RandAugment in JAX on batches of images, on Pillow's ops (`pil_ops.py`).

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

The batch runs inside the jitted training step, each image with its own layers
(`sample_layers`: jax.random draws, magnitudes in float32). A layer is three passes over the
batch, whichever op each image drew: one lookup-table pass (AutoContrast, Equalize, Invert,
Posterize, Solarize, SolarizeAdd, Brightness, Contrast; the identity table for the other ops),
one blend pass (Color with the grey image, Sharpness with SMOOTH; factor 1 for the others) and
one affine warp (Rotate, ShearX/Y, TranslateX/YRel with a per-image matrix and filter; the
identity matrix for the others). The level -> argument maps and the matrices are computed in
float64 from the float32 magnitudes, as timm computes them from Python floats, so that a
magnitude m gives what timm gives for float(float32(m)), bit for bit.
"""


from __future__ import annotations

import dataclasses
import functools
import re
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from sequencer_jax.data import pil_ops

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
# The pass that applies each op, and its kind there.
_TABLE_OF = {'AutoContrast': 'auto_contrast', 'Equalize': 'equalize', 'Invert': 'invert',
             'Posterize': 'posterize', 'Solarize': 'solarize', 'SolarizeAdd': 'solarize_add',
             'Brightness': 'brightness', 'Contrast': 'contrast'}
_BLEND_OF = {'Color': 'color', 'Sharpness': 'sharpness'}
_WARP_OF = {name: name for name in _GEOMETRIC}


def _pass_of(name: str) -> str:
  base = name.removesuffix('Increasing')
  return 'table' if base in _TABLE_OF else 'blend' if base in _BLEND_OF else 'warp'


# `apply_op`'s op sets: the ops of one pass (one compilation per pass and batch shape).
_PASS_OPS = {kind: tuple(n for n in OPS if _pass_of(n) == kind)
             for kind in ('table', 'blend', 'warp')}


def _check_names(names: tuple[str, ...]) -> None:
  for name in names:
    if name not in OPS:
      raise ValueError(f'unknown op {name!r}; known: {OPS}')


def _level_to_args(names: tuple[str, ...], op: jax.Array, magnitude: jax.Array,
                   negate: jax.Array) -> jax.Array:
  """timm's `LEVEL_TO_ARG` (float64) of the ops names[op] at float64 `magnitude` with signs
  `negate`, all of one shape; 0 for the ops without an argument. Call it inside
  `jax.enable_x64(True)`."""
  columns = zip(*(_ARG_MAPS.get(name, (0.0, False, False, 0.0, 1.0)) for name in names))
  # float64 and bool columns (numpy keeps the Python floats' doubles).
  multiplier, floored, signed, base, direction = (jnp.asarray(np.array(c))[op] for c in columns)
  value = pil_ops.rounded(pil_ops.divide(magnitude.astype(jnp.float64), _MAX_LEVEL) * multiplier)
  value = jnp.where(floored, jnp.floor(value), value)
  value = jnp.where(signed & negate, -value, value)
  return base + direction * value  # direction is +-1: an exact product.


_jit_level_to_args = jax.jit(_level_to_args, static_argnums=0)  # As compiled in the step.


def level_to_arg(name: str, magnitude, negate=False) -> np.ndarray | None:
  """timm's `LEVEL_TO_ARG[name]` (float64) at a clipped magnitude, with its random sign given.

  None for the ops without an argument (AutoContrast, Equalize, Invert).
  """
  _check_names((name,))
  if name in _NO_ARG:
    return None
  with jax.enable_x64(True):
    magnitude = jnp.asarray(magnitude, jnp.float64)
    negate = jnp.broadcast_to(jnp.asarray(negate, bool), magnitude.shape)
    op = jnp.zeros(magnitude.shape, jnp.int32)
    return np.asarray(_jit_level_to_args((name,), op, magnitude, negate))


class LayerParams(NamedTuple):
  """Random choices of the RandAugment layers of a batch, each of shape [B, num_ops]."""
  op: jax.Array  # int32 index into config.ops
  applied: jax.Array  # bool
  magnitude: jax.Array  # float32, clipped to [0, 10]
  negate: jax.Array  # bool
  bicubic: jax.Array  # bool


@functools.partial(jax.jit, static_argnames=('batch', 'config'))
def sample_layers(key: jax.Array, batch: int, config: RandAugmentConfig) -> LayerParams:
  """Draws every random choice of `rand_augment` for `batch` images from `key`, with timm
  0.5.4's distributions (a layer is skipped when `random.random() > 0.5`)."""
  shape = (batch, config.num_ops)
  op_key, uniform_key, normal_key = jax.random.split(key, 3)
  op = jax.random.randint(op_key, shape, 0, len(config.ops), dtype=jnp.int32)
  # One uniform draw for the three coin flips: every separate draw adds to the compile time.
  applied, negate, bicubic = jax.random.uniform(uniform_key, (3,) + shape)
  magnitude = jnp.full(shape, config.magnitude, jnp.float32)
  if config.magnitude_std > 0:
    magnitude = magnitude + config.magnitude_std * jax.random.normal(normal_key, shape,
                                                                     jnp.float32)
  if config.interpolation == 'random':
    bicubic = bicubic < 0.5
  else:
    bicubic = jnp.full(shape, config.interpolation == 'bicubic')
  return LayerParams(op=op, applied=applied <= _PROB,
                     magnitude=jnp.clip(magnitude, 0.0, _MAX_LEVEL), negate=negate > 0.5,
                     bicubic=bicubic)


def _choice(names: tuple[str, ...], op: jax.Array, applied: jax.Array,
            kind_of: dict[str, str]) -> tuple[tuple[str, ...], jax.Array]:
  """The kinds of one pass among `names`, and each image's choice [B] int32: 0 for none (an op
  of another pass, or no op), i + 1 for kinds[i]."""
  base = [name.removesuffix('Increasing') for name in names]
  kinds = tuple(dict.fromkeys(kind_of[b] for b in base if b in kind_of))
  codes = np.array([kinds.index(kind_of[b]) + 1 if b in kind_of else 0 for b in base], np.int32)
  return kinds, jnp.where(applied, jnp.asarray(codes)[op], 0)


def _select(choice: jax.Array, options: list[jax.Array]) -> jax.Array:
  """options[choice[b]][b] for every image b; options of shape [B, ...]."""
  stacked = jnp.stack(options, axis=1)
  index = choice.reshape(choice.shape + (1,) * (stacked.ndim - 1))
  return jnp.take_along_axis(stacked, index, axis=1)[:, 0]


def _warp_matrix(kind: str, arg: jax.Array, height: int, width: int) -> jax.Array:
  """The affine matrix [B, 6] (float64) of geometric op `kind` at its argument `arg`."""
  one, zero = jnp.ones_like(arg), jnp.zeros_like(arg)
  if kind == 'Rotate':
    return pil_ops.rotation_matrix(arg, height, width)
  columns = {'ShearX': (one, arg, zero, zero, one, zero),
             'ShearY': (one, zero, zero, arg, one, zero),
             'TranslateXRel': (one, zero, pil_ops.rounded(arg * float(width)), zero, one, zero),
             'TranslateYRel': (one, zero, zero, zero, one, pil_ops.rounded(arg * float(height)))
             }[kind]
  return jnp.stack(columns, axis=-1)


def _table(kind: str, images: jax.Array, hist: jax.Array | None, level: jax.Array,
           products: jax.Array) -> jax.Array:
  """The lookup tables [B, 3, 256] or [B, 256] of table op `kind`."""
  b = images.shape[0]
  if kind == 'auto_contrast':
    return pil_ops.auto_contrast_lut(hist)
  if kind == 'equalize':
    return pil_ops.equalize_lut(hist)
  if kind == 'invert':
    return pil_ops.invert_lut(b)
  if kind == 'posterize':
    return pil_ops.posterize_lut(level)
  if kind == 'solarize':
    return pil_ops.solarize_lut(level)
  if kind == 'solarize_add':
    return pil_ops.solarize_add_lut(level)
  if kind == 'brightness':
    return pil_ops.blend_lut(jnp.zeros([b], jnp.int32), products)
  return pil_ops.blend_lut(pil_ops.mean_grey(images), products)  # contrast


def _layer(images: jax.Array, op: jax.Array, applied: jax.Array, magnitude: jax.Array,
           negate: jax.Array, bicubic: jax.Array, names: tuple[str, ...],
           fill: tuple[int, int, int]) -> jax.Array:
  """One RandAugment layer on a batch, image b applying names[op[b]] if applied[b] (each
  argument [B]): a table pass, a blend pass and an affine pass, each the identity for the
  images whose op is of another pass. Passes that no op of `names` uses are left out.

  The affine pass comes last: its 16 gathers read a materialised image, while XLA fuses the
  cheap passes into their consumers (a blend pass after the affine one would recompute the
  float64 interpolation for each of SMOOTH's nine taps)."""
  b, h, w, _ = images.shape
  with jax.enable_x64(True):
    arg = _level_to_args(names, op, magnitude.astype(jnp.float64), negate)
    level = arg.astype(jnp.int32)  # Posterize, Solarize, SolarizeAdd: whole numbers.
    factor = arg.astype(jnp.float32)  # The enhance ops' blend factor, as Pillow rounds it.
  kinds, choice = _choice(names, op, applied, _TABLE_OF)
  if kinds:
    hist = (pil_ops.histogram(images) if {'auto_contrast', 'equalize'} & set(kinds) else None)
    products = pil_ops.blend_products(factor)
    tables = [jnp.broadcast_to(t.reshape(b, -1, 256), (b, 3, 256)) for t in
              [pil_ops.identity_lut(b)] + [_table(k, images, hist, level, products)
                                           for k in kinds]]
    images = pil_ops.lookup(images, _select(choice, tables))
  kinds, choice = _choice(names, op, applied, _BLEND_OF)
  if kinds:
    sharpness = (kinds == ('sharpness',) if len(kinds) == 1
                 else choice == kinds.index('sharpness') + 1)
    images = pil_ops.enhance(images, jnp.where(choice > 0, factor, 1.0), sharpness)
  kinds, choice = _choice(names, op, applied, _WARP_OF)
  if kinds:
    with jax.enable_x64(True):  # `arg` is float64 again in here.
      identity = jnp.broadcast_to(jnp.asarray([1.0, 0.0, 0.0, 0.0, 1.0, 0.0], jnp.float64),
                                  (b, 6))
      matrix = _select(choice, [identity] + [_warp_matrix(k, arg, h, w) for k in kinds])
      images = pil_ops.affine(images, matrix, bicubic, fill)
  return images


@functools.partial(jax.jit, static_argnames=('names', 'fill'))
def _rand_augment(images: jax.Array, layers: LayerParams, names: tuple[str, ...],
                  fill: tuple[int, int, int]) -> jax.Array:
  """The layers ([B, n] each) applied in order, one scan step each."""
  def step(x, layer):
    return _layer(x, *layer, names=names, fill=fill), None

  layers = LayerParams(op=jnp.asarray(layers.op, jnp.int32),
                       applied=jnp.asarray(layers.applied, bool),
                       magnitude=jnp.asarray(layers.magnitude, jnp.float32),
                       negate=jnp.asarray(layers.negate, bool),
                       bicubic=jnp.asarray(layers.bicubic, bool))
  out, _ = jax.lax.scan(step, jnp.asarray(images, jnp.uint8),
                        jax.tree.map(lambda a: jnp.moveaxis(a, 1, 0), layers))
  return out


def rand_augment(images: jax.Array, layers: LayerParams, config: RandAugmentConfig) -> jax.Array:
  """timm's RandAugment on uint8 RGB images [B, H, W, 3]: the `layers` (`sample_layers`)
  applied in order, each image its own. Jittable; three passes over the batch per layer."""
  if config.num_ops == 0:
    return jnp.asarray(images, jnp.uint8)
  return _rand_augment(images, layers, names=config.ops,
                       fill=tuple(int(v) for v in config.fill))


def apply_op(images: jax.Array, name: str, magnitude, negate=False, bicubic=False,
             fill: tuple[int, int, int] = IMG_MEAN_FILL) -> jax.Array:
  """timm's op `name` at a (clipped) magnitude on every image of a uint8 RGB batch [B, H, W, 3],
  with its random choices given: `negate` flips the argument's sign (signed ops), `bicubic`
  selects bicubic over bilinear resampling (geometric ops). `magnitude` (as float32), `negate`
  and `bicubic` are scalars or [B] arrays. The layer of `rand_augment` runs, over the ops of
  `name`'s pass (one compilation per pass and batch shape for all ops)."""
  _check_names((name,))
  images = jnp.asarray(images, jnp.uint8)
  b = images.shape[0]
  names = _PASS_OPS[_pass_of(name)]

  def column(value, dtype):
    return jnp.broadcast_to(jnp.asarray(value, dtype), (b,))[:, None]

  layers = LayerParams(op=jnp.full((b, 1), names.index(name), jnp.int32),
                       applied=jnp.ones((b, 1), bool), magnitude=column(magnitude, jnp.float32),
                       negate=column(negate, bool), bicubic=column(bicubic, bool))
  return _rand_augment(images, layers, names=names, fill=tuple(int(v) for v in fill))
