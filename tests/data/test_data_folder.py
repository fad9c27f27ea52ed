"""Image folders (class ids as torchvision's ImageFolder) and decoding of messy files (the eval
transform is tested in test_eval_crop.py)."""

from __future__ import annotations

import io

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from sequencer_jax.data import folder, transforms
from sequencer_jax.errors import DatasetError


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
