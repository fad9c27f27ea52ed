"""An image's size read from its header, before any decoding: the guard against pixel bombs.

A 1 MB PNG can claim 20000 x 20000 pixels and decode to 1.2 GB. `header_size` reads the height
and width that JPEG, PNG, GIF, BMP and WebP files declare, in TensorFlow ops (usable inside
tf.data), without decoding a pixel; `refuse_over_limit` stops an image over a limit.
"""

from __future__ import annotations

import tensorflow as tf

MAX_PIXELS = 89_478_485  # PIL's Image.MAX_IMAGE_PIXELS: its decompression-bomb limit.
_HEAD = 32  # Bytes read: every supported header declares its size within them.


def _matches(head: tf.Tensor, offset: int, signature: bytes) -> tf.Tensor:
  return tf.reduce_all(head[offset:offset + len(signature)] == tf.constant(list(signature),
                                                                            tf.int64))


def _little_endian(head: tf.Tensor, offset: int, length: int) -> tf.Tensor:
  return sum(head[offset + k] * (1 << (8 * k)) for k in range(length))


def _big_endian(head: tf.Tensor, offset: int, length: int) -> tf.Tensor:
  return sum(head[offset + k] * (1 << (8 * (length - 1 - k))) for k in range(length))


def _bmp(head: tf.Tensor) -> tf.Tensor:
  """BITMAPCOREHEADER (16-bit sizes) or the later headers (32-bit, height negative when the
  rows run top-down)."""
  def signed32(offset):
    value = _little_endian(head, offset, 4)
    return tf.where(value >= 1 << 31, value - (1 << 32), value)
  core = _little_endian(head, 14, 4) == 12
  return tf.where(core, tf.stack([_little_endian(head, 20, 2), _little_endian(head, 18, 2)]),
                  tf.stack([tf.abs(signed32(22)), tf.abs(signed32(18))]))


def _webp(head: tf.Tensor) -> tf.Tensor:
  """The three WebP variants: extended (VP8X canvas), lossless (VP8L) and lossy (VP8)."""
  vp8l_bits = _little_endian(head, 21, 4)
  return tf.case([
      (_matches(head, 12, b'VP8X'), lambda: tf.stack([_little_endian(head, 27, 3) + 1,
                                                      _little_endian(head, 24, 3) + 1])),
      (_matches(head, 12, b'VP8L'), lambda: tf.stack([vp8l_bits // (1 << 14) % (1 << 14) + 1,
                                                      vp8l_bits % (1 << 14) + 1])),
      (_matches(head, 12, b'VP8 '), lambda: tf.stack([_little_endian(head, 28, 2) % (1 << 14),
                                                      _little_endian(head, 26, 2) % (1 << 14)])),
  ], default=lambda: tf.constant([-1, -1], tf.int64))


def header_size(encoded: tf.Tensor) -> tf.Tensor:
  """[height, width] (int64) that the file's header declares; [-1, -1] for an unknown format.

  A JPEG whose header cannot be parsed raises, as its decoding would.
  """
  raw = tf.io.decode_raw(tf.strings.substr(encoded, 0, _HEAD), tf.uint8)
  head = tf.pad(tf.cast(raw, tf.int64), [[0, _HEAD - tf.shape(raw)[0]]])
  return tf.case([
      (tf.io.is_jpeg(encoded),
       lambda: tf.cast(tf.image.extract_jpeg_shape(encoded)[:2], tf.int64)),
      (_matches(head, 0, b'\x89PNG\r\n\x1a\n'),
       lambda: tf.stack([_big_endian(head, 20, 4), _big_endian(head, 16, 4)])),
      (_matches(head, 0, b'GIF8'),
       lambda: tf.stack([_little_endian(head, 8, 2), _little_endian(head, 6, 2)])),
      (_matches(head, 0, b'BM'), lambda: _bmp(head)),
      (_matches(head, 0, b'RIFF') & _matches(head, 8, b'WEBP'), lambda: _webp(head)),
  ], default=lambda: tf.constant([-1, -1], tf.int64))


def over_limit(height: int, width: int, max_pixels: int = MAX_PIXELS) -> str | None:
  """What to say of an image whose header declares `height` x `width` pixels, if that is over
  `max_pixels`; None if it is not."""
  if height * width <= max_pixels:
    return None
  return (f'its header claims {width} x {height} = {height * width:,} pixels, over the limit of '
          f'{max_pixels:,}; not decoded')


def refuse_over_limit(encoded: tf.Tensor, max_pixels: int = MAX_PIXELS) -> tf.Tensor:
  """`encoded`, once its header is checked: an image declaring more than `max_pixels` pixels
  raises InvalidArgumentError instead, before anything decodes it (tf.data pipelines then skip
  and name it as they do an undecodable file). Unknown formats pass, for the decoder to refuse."""
  size = header_size(encoded)
  check = tf.debugging.assert_less_equal(
      size[0] * size[1], tf.constant(max_pixels, tf.int64),
      message=f'the image header declares more than {max_pixels:,} pixels; not decoded')
  with tf.control_dependencies([check]):
    return tf.identity(encoded)
