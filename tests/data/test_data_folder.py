"""Image folders (class ids as torchvision's ImageFolder), decoding of messy files, and the eval
transform against PIL (timm's): mean |diff| <= 0.5 and 99th percentile <= 3 grey levels of 255."""

from __future__ import annotations

import io
import math

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from sequencer_jax.data import folder, transforms
from sequencer_jax.errors import DatasetError
from sequencer_jax.models import DataConfig


def _image(h=40, w=50, seed=0):
  rng = np.random.RandomState(seed)
  small = Image.fromarray((rng.rand(max(2, h // 8), max(2, w // 8), 3) * 255).astype(np.uint8))
  smooth = np.asarray(small.resize((w, h), Image.BILINEAR)).astype(np.float32)
  return Image.fromarray(np.clip(smooth + rng.randn(h, w, 3) * 6, 0, 255).astype(np.uint8))


def _write(path, image, fmt='JPEG'):
  path.parent.mkdir(parents=True, exist_ok=True)
  image.save(path, fmt)


def _image_folder(root: str) -> tuple[folder.FolderSplit, folder.FolderSplit]:
  train = folder.list_split(root, 'train')
  return train, folder.list_split(root, 'val', list(train.classes))


def test_class_ids_follow_imagefolder_order(tmp_path):
  names = ['n02', 'N01', 'a', 'B', '_x', '10', '9']
  for i, name in enumerate(names):
    _write(tmp_path / 'train' / name / f'{i}.JPEG', _image(seed=i))
    _write(tmp_path / 'val' / name / 'sub' / f'v{i}.jpg', _image(seed=10 + i))
  (tmp_path / 'train' / 'a' / 'notes.txt').write_text('not an image')
  _write(tmp_path / 'train' / 'a' / 'b.PNG', _image(seed=99), 'PNG')
  train, val = _image_folder(str(tmp_path))
  assert train.classes == ('10', '9', 'B', 'N01', '_x', 'a', 'n02')  # Python's sorted order.
  assert val.classes == train.classes
  a = train.classes.index('a')
  assert [p.rsplit('/', 1)[1] for p, y in zip(train.paths, train.labels) if y == a] == \
      ['2.JPEG', 'b.PNG']
  assert len(val.paths) == 7 and sorted(val.labels) == list(range(7))
  assert all(train.classes[y] in p for p, y in zip(val.paths, val.labels))


def test_bad_folders_are_clear_errors(tmp_path):
  with pytest.raises(DatasetError, match='does not exist or is not a directory'):
    _image_folder(str(tmp_path / 'missing'))
  _write(tmp_path / 'train' / 'cat' / '1.jpg', _image())
  (tmp_path / 'train' / 'dog').mkdir()
  with pytest.raises(DatasetError, match='1 class folder.* hold no images: dog'):
    folder.list_split(str(tmp_path), 'train')
  _write(tmp_path / 'train' / 'dog' / '1.jpg', _image())
  _write(tmp_path / 'val' / 'cow' / '1.jpg', _image())
  with pytest.raises(DatasetError, match='class.*that the training split does not have: cow'):
    _image_folder(str(tmp_path))
  _write(tmp_path / 'train' / 'dog' / '2.tif', _image(), 'TIFF')
  with pytest.raises(DatasetError, match='formats TensorFlow cannot decode'):
    folder.list_split(str(tmp_path), 'train')


@pytest.mark.parametrize('mode, fmt', [('RGB', 'JPEG'), ('L', 'JPEG'), ('CMYK', 'JPEG'),
                                       ('RGB', 'PNG'), ('L', 'PNG')])
def test_messy_files_decode_to_rgb_like_pil(tmp_path, mode, fmt):
  path = tmp_path / 'img.JPEG'  # A PNG under a .JPEG name, as ImageNet has one.
  _write(path, _image().convert(mode), fmt)
  data = path.read_bytes()
  got = transforms.decode_rgb(tf.constant(data)).numpy()
  want = np.asarray(Image.open(io.BytesIO(data)).convert('RGB'))
  assert got.shape == want.shape and got.dtype == np.uint8
  np.testing.assert_array_equal(got, want)


def _pil_eval(image, size, crop_pct, interpolation):
  scale = int(math.floor(size / crop_pct))
  w, h = image.size
  if w <= h:
    new_w, new_h = scale, int(scale * h / w)
  else:
    new_w, new_h = int(scale * w / h), scale
  resized = image.resize((new_w, new_h), {'bicubic': Image.BICUBIC,
                                          'bilinear': Image.BILINEAR}[interpolation])
  top, left = int(round((new_h - size) / 2.0)), int(round((new_w - size) / 2.0))
  return np.asarray(resized.crop((left, top, left + size, top + size))).astype(np.float32)


@pytest.mark.parametrize('h, w, config', [
    (375, 500, DataConfig(224, 0.875)), (500, 375, DataConfig(224, 0.875)),
    (333, 333, DataConfig(224, 0.875)), (32, 32, DataConfig(224, 0.875)),
    (480, 640, DataConfig(392, 1.0)), (301, 299, DataConfig(224, 0.9)),
    (301, 299, DataConfig(160, 0.95, 'bilinear', (0.5, 0.5, 0.5), (0.25, 0.5, 0.75)))])
def test_eval_transform_matches_pil(h, w, config):
  """timm's eval transform with a model's data config (size, crop_pct, filter, mean, std)."""
  image = _image(h, w, seed=h + w)
  want = _pil_eval(image, config.input_size, config.crop_pct, config.interpolation)
  size = config.input_size
  # Eagerly, and as tf.data and predict run it: a graph, whose rounding can differ by one level.
  for transform in (transforms.eval_transform, tf.function(transforms.eval_transform)):
    got = transform(tf.constant(np.asarray(image)), config).numpy()
    assert got.shape == (size, size, 3) and got.dtype == np.float32
    pixels = (got * np.array(config.std) + np.array(config.mean)) * 255
    diff = np.abs(pixels - want)
    assert diff.mean() <= 0.5 and np.percentile(diff, 99) <= 3.0, (diff.mean(), diff.max())
