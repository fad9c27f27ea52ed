"""Image transforms in TensorFlow (CPU), matching timm's PIL/torchvision ones."""

from __future__ import annotations

import math
from collections.abc import Callable

import tensorflow as tf

from sequencer_jax.models.data_config import IMAGENET_MEAN, IMAGENET_STD, DataConfig


def decode_rgb(encoded: tf.Tensor) -> tf.Tensor:
  """Any JPEG (RGB, grayscale, CMYK), PNG, BMP or WebP, whatever its file name says -> uint8 RGB.

  JPEGs use the accurate integer DCT, as PIL (and so timm) does.
  """
  return tf.cond(
      tf.io.is_jpeg(encoded),
      lambda: tf.io.decode_jpeg(encoded, channels=3, dct_method='INTEGER_ACCURATE'),
      lambda: tf.ensure_shape(tf.io.decode_image(encoded, channels=3, expand_animations=False),
                              [None, None, 3]))


def normalize(image: tf.Tensor, mean: tuple[float, ...] = IMAGENET_MEAN,
              std: tuple[float, ...] = IMAGENET_STD) -> tf.Tensor:
  """uint8 (or 0..255 float) RGB -> float32 normalised with `mean` and `std` (0..1 scale)."""
  image = tf.cast(image, tf.float32) / 255.0
  return (image - tf.constant(mean, tf.float32)) / tf.constant(std, tf.float32)


def resize_shorter_side(image: tf.Tensor, size: int, method: str = 'bicubic') -> tf.Tensor:
  """torchvision `Resize(size)` with PIL's filter: shorter side -> size, longer side truncated.

  TF's antialiased bicubic (Keys, a = -0.5) and bilinear are PIL's filters; the result is
  rounded and clipped to uint8 as PIL's is.
  """
  shape = tf.shape(image)
  h, w = shape[0], shape[1]
  short, long = tf.minimum(h, w), tf.maximum(h, w)
  new_long = tf.cast(tf.cast(size, tf.float64) * tf.cast(long, tf.float64) /
                     tf.cast(short, tf.float64), tf.int32)
  new_h, new_w = tf.cond(w <= h, lambda: (new_long, size), lambda: (size, new_long))
  resized = tf.image.resize(image, tf.stack([new_h, new_w]), method=method, antialias=True)
  return tf.cast(tf.clip_by_value(tf.round(resized), 0.0, 255.0), tf.uint8)


def center_crop(image: tf.Tensor, size: int) -> tf.Tensor:
  """torchvision `CenterCrop(size)`: offsets round((extent - size) / 2), half to even."""
  shape = tf.shape(image)
  top = tf.cast(tf.round(tf.cast(shape[0] - size, tf.float64) / 2.0), tf.int32)
  left = tf.cast(tf.round(tf.cast(shape[1] - size, tf.float64) / 2.0), tf.int32)
  return image[top:top + size, left:left + size]


def eval_transform(image: tf.Tensor, config: DataConfig) -> tf.Tensor:
  """timm's validation transform with a model's data config: resize the shorter side to
  floor(input_size / crop_pct), centre-crop input_size, normalise. uint8 RGB in, float32
  (input_size, input_size, 3) out."""
  image = resize_shorter_side(image, int(math.floor(config.input_size / config.crop_pct)),
                              config.interpolation)
  return normalize(center_crop(image, config.input_size), config.mean, config.std)


def _uniform(seed: tf.Tensor, low: float | tf.Tensor = 0.0, high: float | tf.Tensor = 1.0,
             shape: tuple[int, ...] = ()) -> tf.Tensor:
  return tf.random.stateless_uniform(shape, seed, minval=low, maxval=high, dtype=tf.float32)


def _randint(seed: tf.Tensor, high: tf.Tensor) -> tf.Tensor:
  """Python's `random.randint(0, high)`: both ends included."""
  return tf.random.stateless_uniform((), seed, minval=0, maxval=high + 1, dtype=tf.int32)


def sample_box(attempts: tf.Tensor, place: tf.Tensor, height: tf.Tensor, width: tf.Tensor,
               area_fraction: tuple[float, float], log_aspect: tuple[float, float],
               fallback: Callable[[], tf.Tensor]) -> tf.Tensor:
  """timm's ten-attempt box sampling of RandomResizedCrop: [top, left, h, w] inside the image.

  Ten draws of an area fraction U(area_fraction) and an aspect ratio w / h = exp(U(log_aspect));
  the first non-empty box of at most the image is placed uniformly (`place`). When no draw
  fits, `fallback()`.
  """
  area_seed, aspect_seed = tf.unstack(tf.random.experimental.stateless_split(attempts, 2))
  target_area = _uniform(area_seed, *area_fraction, (10,)) * tf.cast(height * width, tf.float32)
  aspect = tf.exp(_uniform(aspect_seed, *log_aspect, (10,)))
  ws = tf.cast(tf.round(tf.sqrt(target_area * aspect)), tf.int32)
  hs = tf.cast(tf.round(tf.sqrt(target_area / aspect)), tf.int32)
  fits = (ws <= width) & (hs <= height) & (ws > 0) & (hs > 0)
  first = tf.argmax(tf.cast(fits, tf.int32), output_type=tf.int32)

  def placed() -> tf.Tensor:
    h, w = hs[first], ws[first]
    top_seed, left_seed = tf.unstack(tf.random.experimental.stateless_split(place, 2))
    return tf.stack([_randint(top_seed, height - h), _randint(left_seed, width - w), h, w])

  return tf.cond(tf.reduce_any(fits), placed, fallback)


def random_resized_crop_window(height: tf.Tensor, width: tf.Tensor, seed: tf.Tensor,
                               scale: tuple[float, float] = (0.08, 1.0),
                               ratio: tuple[float, float] = (3 / 4, 4 / 3)) -> tf.Tensor:
  """timm's `RandomResizedCropAndInterpolation.get_params`: [top, left, h, w] of the crop.

  Ten attempts of area fraction U(scale) and log-uniform aspect ratio; the first that fits is
  placed uniformly; if none fits, the largest centred crop within `ratio`.
  """
  attempts, place = tf.unstack(tf.random.experimental.stateless_split(seed, 2))

  def fallback() -> tf.Tensor:
    in_ratio = tf.cast(width, tf.float32) / tf.cast(height, tf.float32)
    w = tf.where(in_ratio > max(ratio),
                 tf.cast(tf.round(tf.cast(height, tf.float32) * max(ratio)), tf.int32), width)
    h = tf.where(in_ratio < min(ratio),
                 tf.cast(tf.round(tf.cast(width, tf.float32) / min(ratio)), tf.int32), height)
    return tf.stack([(height - h) // 2, (width - w) // 2, h, w])

  return sample_box(attempts, place, height, width, scale,
                    (math.log(ratio[0]), math.log(ratio[1])), fallback)


def resize_to(image: tf.Tensor, size: int, method: tf.Tensor | str) -> tf.Tensor:
  """PIL's `resize((size, size), BILINEAR or BICUBIC)` (antialiased), uint8 in and out.

  `method` is 'bilinear', 'bicubic', or a boolean tensor (True: bicubic) for a random choice.
  """
  def resize(name):
    out = tf.image.resize(image, (size, size), method=name, antialias=True)
    return tf.cast(tf.clip_by_value(tf.round(out), 0.0, 255.0), tf.uint8)

  if isinstance(method, str):
    return resize(method)
  return tf.cond(method, lambda: resize('bicubic'), lambda: resize('bilinear'))


def decode_crop_on_canvas(encoded: tf.Tensor, seed: tf.Tensor, canvas_size: int, out_size: int,
                          scale: tuple[float, float] = (0.08, 1.0),
                          ratio: tuple[float, float] = (3 / 4, 4 / 3),
                          interpolation: str = 'random',
                          fused: bool = True) -> dict[str, tf.Tensor]:
  """The host's part of timm's RandomResizedCropAndInterpolation: decode, draw the box and the
  filter, and place the crop at the origin of a zero uint8 canvas (canvas_size, canvas_size, 3).

  Returns {'image': the canvas, 'crop_size': int32 (height, width) of the crop on it,
  'bicubic': the filter drawn (bool), 'host_resized': bool}. The resize to `out_size` runs in
  the train step (`pil_resize.resize_crops`). A crop larger than the canvas on either side is
  resized here (`resize_to`, the filter drawn) and placed as an out_size crop, which the step's
  resize leaves unchanged.

  `interpolation` is 'bilinear', 'bicubic' or 'random' (either, with probability 1/2, as timm's
  default `--train-interpolation random`). With `fused`, JPEGs decode only the crop window, which
  is much faster for small crops; libjpeg then upsamples chroma at the window's edge from the edge
  itself, so pixels in the outermost chroma block row/column can differ from a full decode.
  """
  if canvas_size < out_size:
    raise ValueError(f'the canvas ({canvas_size}) is smaller than the output size ({out_size})')
  crop_seed, interp_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
  if interpolation == 'random':
    bicubic = _uniform(interp_seed) < 0.5
  elif interpolation in ('bilinear', 'bicubic'):
    bicubic = tf.constant(interpolation == 'bicubic')
  else:
    raise ValueError(f"interpolation must be 'random', 'bilinear' or 'bicubic', "
                     f'got {interpolation!r}')

  def window(shape):
    return random_resized_crop_window(shape[0], shape[1], crop_seed, scale, ratio)

  def fused_jpeg():
    return tf.image.decode_and_crop_jpeg(encoded, window(tf.io.extract_jpeg_shape(encoded)),
                                         channels=3, dct_method='INTEGER_ACCURATE')

  def decode_then_crop():
    image = decode_rgb(encoded)
    top, left, h, w = tf.unstack(window(tf.shape(image)))
    return image[top:top + h, left:left + w]

  if fused:
    crop = tf.cond(tf.io.is_jpeg(encoded), fused_jpeg, decode_then_crop)
  else:
    crop = decode_then_crop()
  shape = tf.shape(crop)
  too_large = tf.reduce_any(shape[:2] > canvas_size)
  crop = tf.cond(too_large, lambda: resize_to(crop, out_size, bicubic), lambda: crop)
  crop_size = tf.shape(crop)[:2]
  canvas = tf.pad(crop, [[0, canvas_size - crop_size[0]], [0, canvas_size - crop_size[1]], [0, 0]])
  return {'image': tf.ensure_shape(canvas, [canvas_size, canvas_size, 3]),
          'crop_size': tf.cast(crop_size, tf.int32), 'bicubic': bicubic,
          'host_resized': too_large}
