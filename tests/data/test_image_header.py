"""Image sizes read from headers, without decoding: every format the decoders read, and the refusal
of an image over the pixel limit inside a graph."""

from __future__ import annotations

import io

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from sequencer_jax.data import image_header

FORMATS = [('JPEG', 'RGB', {}), ('JPEG', 'L', {}), ('JPEG', 'CMYK', {}), ('PNG', 'RGBA', {}),
           ('PNG', 'P', {}), ('PNG', 'I;16', {}), ('GIF', 'P', {}), ('BMP', 'RGB', {}),
           ('WEBP', 'RGB', {'lossless': True}), ('WEBP', 'RGB', {'quality': 80}),
           ('WEBP', 'RGBA', {'quality': 80})]


def _encoded(fmt, mode, kwargs, height, width):
  image = Image.fromarray(np.random.default_rng(height).integers(0, 256, (height, width, 3),
                                                                   dtype=np.uint8))
  buffer = io.BytesIO()
  image.convert(mode).save(buffer, fmt, **kwargs)
  return buffer.getvalue()


@pytest.mark.parametrize('fmt, mode, kwargs', FORMATS, ids=lambda v: str(v))
def test_every_format_declares_its_size(fmt, mode, kwargs):
  for height, width in ((37, 53), (300, 17)):
    data = _encoded(fmt, mode, kwargs, height, width)
    assert image_header.header_size(tf.constant(data)).numpy().tolist() == [height, width]


def test_unknown_formats_and_the_limit_in_a_graph():
  assert image_header.header_size(tf.constant(b'hello')).numpy().tolist() == [-1, -1]
  data = tf.constant(_encoded('PNG', 'RGB', {}, 40, 30))
  check = tf.function(lambda d, limit: image_header.refuse_over_limit(d, limit))
  assert check(data, 1200).numpy() == data.numpy()  # 1,200 pixels: at the limit, passed.
  with pytest.raises(tf.errors.InvalidArgumentError, match='more than 1,199 pixels'):
    check(data, 1199)
