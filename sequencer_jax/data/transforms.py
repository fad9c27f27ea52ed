"""Image transforms in TensorFlow (CPU), matching timm's PIL/torchvision ones."""

from __future__ import annotations

import math

import tensorflow as tf

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def decode_rgb(encoded: tf.Tensor) -> tf.Tensor:
  """Any JPEG (RGB, grayscale, CMYK), PNG, BMP or WebP, whatever its file name says -> uint8 RGB.

  JPEGs use the accurate integer DCT, as PIL (and so timm) does.
  """
  return tf.cond(
      tf.io.is_jpeg(encoded),
      lambda: tf.io.decode_jpeg(encoded, channels=3, dct_method='INTEGER_ACCURATE'),
      lambda: tf.ensure_shape(tf.io.decode_image(encoded, channels=3, expand_animations=False),
                              [None, None, 3]))


def normalize(image: tf.Tensor) -> tf.Tensor:
  """uint8 (or 0..255 float) RGB -> float32 normalised with the ImageNet mean and std."""
  image = tf.cast(image, tf.float32) / 255.0
  return (image - tf.constant(IMAGENET_MEAN)) / tf.constant(IMAGENET_STD)


def resize_shorter_side(image: tf.Tensor, size: int) -> tf.Tensor:
  """torchvision `Resize(size)` with PIL bicubic: shorter side -> size, longer side truncated.

  TF's antialiased bicubic (Keys, a = -0.5) is PIL's filter; the result is rounded and clipped
  to uint8 as PIL's is.
  """
  shape = tf.shape(image)
  h, w = shape[0], shape[1]
  short, long = tf.minimum(h, w), tf.maximum(h, w)
  new_long = tf.cast(tf.cast(size, tf.float64) * tf.cast(long, tf.float64) /
                     tf.cast(short, tf.float64), tf.int32)
  new_h, new_w = tf.cond(w <= h, lambda: (new_long, size), lambda: (size, new_long))
  resized = tf.image.resize(image, tf.stack([new_h, new_w]), method='bicubic', antialias=True)
  return tf.cast(tf.clip_by_value(tf.round(resized), 0.0, 255.0), tf.uint8)


def center_crop(image: tf.Tensor, size: int) -> tf.Tensor:
  """torchvision `CenterCrop(size)`: offsets round((extent - size) / 2), half to even."""
  shape = tf.shape(image)
  top = tf.cast(tf.round(tf.cast(shape[0] - size, tf.float64) / 2.0), tf.int32)
  left = tf.cast(tf.round(tf.cast(shape[1] - size, tf.float64) / 2.0), tf.int32)
  return image[top:top + size, left:left + size]


def eval_transform(image: tf.Tensor, size: int, crop_pct: float = 0.875) -> tf.Tensor:
  """timm's validation transform: resize the shorter side to floor(size / crop_pct) with
  bicubic, centre-crop `size`, normalise. uint8 RGB in, float32 (size, size, 3) out."""
  image = resize_shorter_side(image, int(math.floor(size / crop_pct)))
  return normalize(center_crop(image, size))
