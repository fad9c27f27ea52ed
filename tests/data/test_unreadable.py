"""Files that cannot be decoded say why, in words: `unreadable.reason` on files the decoders really
refuse, and those reasons in predict, in evaluation's skipped images and in training's."""

from __future__ import annotations

import io
import json
import struct
import zlib

import jax
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

import sequencer_jax
from sequencer_jax import predict as predict_command
from sequencer_jax.data import pipeline, sources, transforms, unreadable
from sequencer_jax.models import DataConfig, SequencerArch


def _encoded(fmt: str, mode: str = 'RGB', size: tuple[int, int] = (20, 24)) -> bytes:
  pixels = np.random.default_rng(0).integers(0, 256, (*size, 3), dtype=np.uint8)
  buffer = io.BytesIO()
  Image.fromarray(pixels).convert(mode).save(buffer, fmt)
  return buffer.getvalue()


def _chunk(kind: bytes, body: bytes) -> bytes:
  return struct.pack('>I', len(body)) + kind + body + struct.pack('>I', zlib.crc32(kind + body))


def _png(depth: int = 8, colour: int = 0, idat: bytes | None = None,
         rows: bytes = bytes(20)) -> bytes:
  """A 4 x 4 PNG from its parts: greyscale rows, each a filter byte and 4 pixels."""
  ihdr = struct.pack('>IIBBBBB', 4, 4, depth, colour, 0, 0, 0)
  return (b'\x89PNG\r\n\x1a\n' + _chunk(b'IHDR', ihdr)
          + _chunk(b'IDAT', zlib.compress(rows) if idat is None else idat) + _chunk(b'IEND', b''))


def _jpeg_cut_in_its_scan() -> bytes:
  data = _encoded('JPEG')
  scan = data.index(b'\xff\xda')
  return data[:(scan + len(data)) // 2]


def _jpeg_frame(data: bytes, frame: bytes | None) -> bytes:
  """The JPEG with its baseline frame header (SOF0) retyped as `frame`, or removed."""
  start = data.index(b'\xff\xc0')
  if frame is not None:
    return data[:start + 1] + frame + data[start + 2:]
  return data[:start] + data[start + 2 + int.from_bytes(data[start + 2:start + 4], 'big'):]


def _png_with_bad_ihdr_checksum() -> bytes:
  data = _encoded('PNG')
  return data[:29] + bytes(4) + data[33:]  # The IHDR chunk's CRC: bytes 29 to 33.


CASES = {
    'empty': (lambda: b'', 'empty file'),
    'text': (lambda: b'<html><body>404 Not Found</body></html>\n', 'not an image (text)'),
    'binary': (lambda: bytes(range(256)), 'not an image (unknown format)'),
    'tiff': (lambda: b'II*\x00' + bytes(64), 'unsupported image format: TIFF'),
    'jpeg cut in its scan': (_jpeg_cut_in_its_scan, 'truncated JPEG'),
    'jpeg cut in its header': (lambda: _encoded('JPEG')[:300], 'truncated JPEG'),
    'jpeg bad marker': (lambda: b'\xff\xd8\xff this is no JPEG',
                        'damaged JPEG: invalid marker 0x20'),
    'jpeg without frame': (lambda: _jpeg_frame(_encoded('JPEG'), None),
                           'damaged JPEG: its image data come before its frame header'),
    'jpeg lossless': (lambda: _jpeg_frame(_encoded('JPEG'), b'\xc3'),
                      'unsupported JPEG: lossless or hierarchical coding'),
    'png truncated': (lambda: _encoded('PNG')[:700], 'truncated PNG'),
    'png bad checksum': (_png_with_bad_ihdr_checksum,
                         'damaged PNG: bad checksum in its IHDR chunk'),
    'png corrupt pixels': (lambda: _png(idat=b'\x78\x9c' + bytes(range(64))),
                           'damaged PNG: its compressed pixel data are corrupt'),
    'png short pixels': (lambda: _png(idat=zlib.compress(bytes(20))[:-6]),
                         'damaged PNG: its compressed pixel data end early'),
    'png invalid depth': (lambda: _png(depth=4, colour=2),
                          'unsupported PNG: colour type 2 at bit depth 4'),
    'png altered signature': (lambda: b'\x89PNG\n\x1a\n' + _encoded('PNG')[8:],
                              'damaged PNG: its signature is altered (a text-mode transfer?)'),
    'gif truncated': (lambda: _encoded('GIF', 'P')[:200], 'truncated GIF'),
    'bmp truncated': (lambda: _encoded('BMP')[:500], 'truncated BMP'),
    'bmp 1 bit': (lambda: _encoded('BMP', '1'), 'unsupported BMP: 1 bit(s) per pixel'),
    'webp truncated': (lambda: _encoded('WEBP')[:40], 'truncated WebP'),
    'jpeg xl damaged': (lambda: b'\xff\x0a' + bytes(32),
                        'damaged JPEG XL: Failed to decode JXL header'),
    'avif': (lambda: _encoded('AVIF'), 'unsupported image format: HEIF or AVIF'),
}


@pytest.fixture(scope='module')
def decode():
  return tf.function(transforms.decode_rgb)


@pytest.mark.parametrize('case', CASES)
def test_each_refused_file_gets_its_reason(decode, case):
  make, expected = CASES[case]
  data = make()
  with pytest.raises(tf.errors.InvalidArgumentError) as refused:
    decode(tf.constant(data))
  assert unreadable.reason(data, refused.value.message) == expected


def test_a_sound_structure_falls_back_on_the_decoders_words(decode):
  bad_filter = _png(rows=b'\x09' + bytes(19))  # Filter type 9 does not exist.
  with pytest.raises(tf.errors.InvalidArgumentError) as refused:
    decode(tf.constant(bad_filter))
  message = refused.value.message
  assert message.startswith('Graph execution error:')
  detail = f'Invalid PNG data, size {len(bad_filter)}'  # The last line of TensorFlow's message.
  assert unreadable.reason(bad_filter, message) == f'damaged PNG: {detail}'
  assert unreadable.reason(bad_filter) == 'damaged PNG'
  with pytest.raises(tf.errors.InvalidArgumentError) as eager:
    tf.io.decode_image(tf.constant(b''))
  assert unreadable.decoder_detail(eager.value.message) == 'Input is empty'


# The bad files of the folder tests: name, content, reason.
BAD_FILES = {
    'trunc.jpg': (_jpeg_cut_in_its_scan, 'truncated JPEG'),
    'empty.jpg': (lambda: b'', 'empty file'),
    'text.png': (lambda: b'hello, I am a text file\n', 'not an image (text)'),
    'damaged.png': (_png_with_bad_ihdr_checksum, 'damaged PNG: bad checksum in its IHDR chunk'),
}


def _write_bad_files(directory) -> dict[str, str]:
  directory.mkdir(parents=True, exist_ok=True)
  for name, (make, _) in BAD_FILES.items():
    (directory / name).write_bytes(make())
  return {str(directory / name): why for name, (_, why) in BAD_FILES.items()}


def _write_good_files(directory, count: int) -> None:
  directory.mkdir(parents=True, exist_ok=True)
  for i in range(count):
    Image.fromarray(np.full((16, 16, 3), 40 * i, np.uint8)).save(directory / f'good{i}.png')


def test_predict_says_why(tmp_path, capsys):
  arch = SequencerArch(layers=(1, 1), patch_sizes=(4, 2), embed_dims=(16, 32), hidden_sizes=(4, 8))
  model = sequencer_jax.Sequencer(arch, num_classes=2)
  shapes = jax.eval_shape(model.init, jax.random.key(0), np.zeros((1, 32, 32, 3), np.float32))
  params = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), shapes['params'])  # No compile.
  model_dir = str(tmp_path / 'model')
  sequencer_jax.save_model(model_dir, sequencer_jax.ModelRecord(arch, 2, ('a', 'b'),
                                                                DataConfig(32, 0.9)), params)
  expected = _write_bad_files(tmp_path / 'bad')
  status = predict_command.main(['--model', model_dir, *expected, '--format', 'json'])
  out, _ = capsys.readouterr()
  assert status == 1
  assert {e['path']: e['error'] for e in json.loads(out)} == {
      path: f'{path} cannot be read as an image: {why}' for path, why in expected.items()}


def test_evaluation_says_why_it_skipped(tmp_path, caplog):
  _write_good_files(tmp_path / 'train' / 'c', 1)
  _write_good_files(tmp_path / 'val' / 'c', 2)
  expected = _write_bad_files(tmp_path / 'val' / 'c')
  val = sources.open_source(str(tmp_path), 'val')
  evaluated = pipeline.eval_batches(val, batch_size=4, data_config=DataConfig(8, 1.0))
  assert sum(int(b['mask'].sum()) for b in evaluated) == 2
  assert evaluated.skipped == expected
  for path, why in expected.items():
    assert f'skipped {path}: {why};' in caplog.text


def test_training_says_why_it_skipped(tmp_path, caplog):
  _write_good_files(tmp_path / 'train' / 'c', 4)
  expected = _write_bad_files(tmp_path / 'train' / 'c')
  train = sources.open_source(str(tmp_path), 'train')
  # 4 steps of 2 need 8 images: the second pass over the order shows every bad file.
  batches = pipeline.train_batches(train, global_batch=2, image_size=8, seed=0, epoch=0,
                                   augment=pipeline.TrainAugment(canvas_size=16))
  assert len(list(batches)) == 4
  assert batches.skipped == expected
  for path, why in expected.items():
    assert f'skipped {path}: {why};' in caplog.text


def test_a_file_that_cannot_be_read_says_so(tmp_path):
  _write_good_files(tmp_path / 'val' / 'c', 1)
  val = sources.open_source(str(tmp_path), 'val', train_split='val')
  (tmp_path / 'val' / 'c' / 'good0.png').unlink()
  assert pipeline.skip_reason(val, 0, 1, None, 0) == 'cannot be read: No such file or directory'
