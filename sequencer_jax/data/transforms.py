"""The host's image transforms in TensorFlow (CPU): decoding, timm's RandomResizedCrop window on
a canvas, and the host's part of the eval transform; the resizes themselves are Pillow's
(`pil_resize`, `eval_crop`)."""

from __future__ import annotations

import math
from collections.abc import Callable

import tensorflow as tf

from sequencer_jax.data import eval_crop, pil_resize
from sequencer_jax.models.data_config import DataConfig


def decode_rgb(encoded: tf.Tensor) -> tf.Tensor:
  """Any JPEG (RGB, grayscale, CMYK), PNG, BMP or WebP, whatever its file name says -> uint8 RGB.

  JPEGs use the accurate integer DCT, as PIL (and so timm) does.
  """
  return tf.cond(
      tf.io.is_jpeg(encoded),
      lambda: tf.io.decode_jpeg(encoded, channels=3, dct_method='INTEGER_ACCURATE'),
      lambda: tf.ensure_shape(tf.io.decode_image(encoded, channels=3, expand_animations=False),
                              [None, None, 3]))


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


def pillow_resize(image: tf.Tensor, size: int, bicubic: tf.Tensor) -> tf.Tensor:
  """Pillow's `resize((size, size), BICUBIC if bicubic else BILINEAR)` of uint8 RGB pixels
  (`pil_resize.pillow_resize`, on the host)."""
  resized = tf.numpy_function(
      lambda pixels, cubic: pil_resize.pillow_resize(pixels, size, size, bool(cubic)),
      [image, bicubic], tf.uint8, stateful=False)
  return tf.ensure_shape(resized, [size, size, 3])


def _source_window(first: tf.Tensor, count: int, n: tf.Tensor, m: tf.Tensor
                   ) -> tuple[tf.Tensor, tf.Tensor]:
  """[low, high): the source pixels that output positions first .. first + count - 1 of Pillow's
  resize of n pixels to m read, widened to be safe (int64 arithmetic): a position's taps lie
  within its centre +- support + 1, and the support is at most 2 max(n / m, 1)."""
  reach = 2 * ((tf.maximum(n, m) + m - 1) // m) + 2
  low = tf.maximum(tf.constant(0, tf.int64), (first * n) // m - reach)
  high = tf.minimum(n, ((first + count) * n + m - 1) // m + reach)
  return low, high


def eval_example(image: tf.Tensor, config: DataConfig) -> dict[str, tf.Tensor]:
  """The host's part of timm's eval transform of decoded uint8 RGB (`eval_crop`): the geometry
  and the source window on the canvas, or, for a window larger than the canvas, the crop
  resized here by Pillow. The fields of `eval_crop.HOST_FIELDS`."""
  size, canvas = config.input_size, eval_crop.canvas_size(config.input_size)
  shape = tf.cast(tf.shape(image)[:2], tf.int64)
  h, w = shape[0], shape[1]
  short_side = math.floor(size / config.crop_pct)
  short, long = tf.minimum(h, w), tf.maximum(h, w)
  long_side = tf.cast(tf.cast(short_side * long, tf.float64) / tf.cast(short, tf.float64),
                      tf.int64)  # Python's int(short_side * long / short).
  resized = tf.where(w <= h, tf.stack([long_side, short_side]), tf.stack([short_side, long_side]))
  offset = tf.cast(tf.round(tf.cast(resized - size, tf.float64) / 2.0), tf.int64)  # Half to even.
  rows = _source_window(offset[0], size, h, resized[0])
  cols = _source_window(offset[1], size, w, resized[1])
  fits = (rows[1] - rows[0] <= canvas) & (cols[1] - cols[0] <= canvas)

  def host_resized() -> tf.Tensor:
    crop = tf.numpy_function(
        lambda pixels, height, width, top, left: pil_resize.pillow_resize(
            pixels, height, width, config.interpolation == 'bicubic')[
                top:top + size, left:left + size],
        [image, resized[0], resized[1], offset[0], offset[1]], tf.uint8, stateful=False)
    return tf.ensure_shape(crop, [size, size, 3])

  window = tf.cond(fits, lambda: image[rows[0]:rows[1], cols[0]:cols[1]], host_resized)
  extent = tf.shape(window)[:2]
  placed = tf.pad(window, [[0, canvas - extent[0]], [0, canvas - extent[1]], [0, 0]])
  origin = tf.where(fits, tf.stack([rows[0], cols[0]]), tf.zeros(2, tf.int64))
  return {'image': tf.ensure_shape(placed, [canvas, canvas, 3]),
          'source_size': tf.cast(shape, tf.int32), 'resized_size': tf.cast(resized, tf.int32),
          'crop_offset': tf.cast(offset, tf.int32), 'origin': tf.cast(origin, tf.int32),
          'host_resized': tf.logical_not(fits)}


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
  resized here by Pillow (`pillow_resize`, the filter drawn) and placed as an out_size crop,
  which the step's resize leaves unchanged.

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
  crop = tf.cond(too_large, lambda: pillow_resize(crop, out_size, bicubic), lambda: crop)
  crop_size = tf.shape(crop)[:2]
  canvas = tf.pad(crop, [[0, canvas_size - crop_size[0]], [0, canvas_size - crop_size[1]], [0, 0]])
  return {'image': tf.ensure_shape(canvas, [canvas_size, canvas_size, 3]),
          'crop_size': tf.cast(crop_size, tf.int32), 'bicubic': bicubic,
          'host_resized': too_large}
