"""Predict: every image format, the model's own transform, top-k with class names, the three
output formats, unreadable files and pixel bombs named while the rest is predicted."""

from __future__ import annotations

import csv
import io
import json
import struct
import zlib

import jax
import numpy as np
import pytest
from PIL import Image

import sequencer_jax
from sequencer_jax import inference
from sequencer_jax import predict as predict_command
from sequencer_jax.models import DataConfig, SequencerArch
from random_params import random_variables

CLASSES = ('cat', 'dog', 'fish')
ARCH = SequencerArch(layers=(1,), patch_sizes=(4,), embed_dims=(16,), hidden_sizes=(4,))
CONFIG = DataConfig(32, 0.9, 'bilinear', (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))


@pytest.fixture(scope='module')
def model_dir(tmp_path_factory):
  model = sequencer_jax.Sequencer(ARCH, num_classes=3)
  params = random_variables(model, np.zeros((1, 32, 32, 3), np.float32))['params']
  path = str(tmp_path_factory.mktemp('model') / 'small')
  sequencer_jax.save_model(path, sequencer_jax.ModelRecord(ARCH, 3, CLASSES, CONFIG), params)
  return path


@pytest.fixture(scope='module')
def classifier(model_dir):
  return inference.Classifier.from_source(model_dir, batch_size=4)


@pytest.fixture(scope='module')
def reference_forward(classifier):
  """The model's forward on one image at a time, jitted once for the module."""
  return jax.jit(classifier.model.apply)


def _photo(h=45, w=60, seed=0) -> Image.Image:
  rng = np.random.default_rng(seed)
  return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))


FORMATS = [('rgb.jpg', 'RGB', 'JPEG'), ('grey.jpeg', 'L', 'JPEG'), ('cmyk.JPG', 'CMYK', 'JPEG'),
           ('alpha.png', 'RGBA', 'PNG'), ('palette.png', 'P', 'PNG'), ('lossy.webp', 'RGB', 'WEBP'),
           ('bitmap.bmp', 'RGB', 'BMP')]


def _write_images(root) -> list[str]:
  paths = []
  for i, (name, mode, fmt) in enumerate(FORMATS):
    path = root / f'sub{i % 2}' / name
    path.parent.mkdir(parents=True, exist_ok=True)
    _photo(seed=i).convert(mode).save(path, fmt)
    paths.append(str(path))
  (root / 'sub0' / 'notes.txt').write_text('not an image, and not an image suffix')
  return sorted(paths)


def _run(capsys, *argv):
  status = predict_command.main([str(a) for a in argv])
  out, err = capsys.readouterr()
  return status, out, err


def _expected_probabilities(classifier, forward, path):
  """The model on the tested eval transform (tests/data) of PIL's decoding, one image at a time."""
  x = classifier.preprocess(Image.open(path))[None]
  return np.asarray(jax.nn.softmax(forward(classifier.variables, x)))[0]


@pytest.mark.slow  # End to end: a command, or a benchmark.
def test_a_folder_of_every_format_is_predicted_as_json(model_dir, classifier, reference_forward,
                                                       tmp_path, capsys):
  paths = _write_images(tmp_path / 'images')
  status, out, _ = _run(capsys, '--model', model_dir, tmp_path / 'images', '--format', 'json',
                        '--topk', 2, '--batch-size', 3)
  assert status == 0
  entries = json.loads(out)
  assert [e['path'] for e in entries] == paths  # Recursive, sorted, only images.
  for entry in entries:
    assert set(entry) == {'path', 'topk'} and len(entry['topk']) == 2
    for item in entry['topk']:
      assert set(item) == {'index', 'label', 'probability'}
      assert item['label'] == CLASSES[item['index']]
    expected = _expected_probabilities(classifier, reference_forward, entry['path'])
    top = np.argsort(-expected)[:2]
    assert [i['index'] for i in entry['topk']] == top.tolist()
    np.testing.assert_allclose([i['probability'] for i in entry['topk']], expected[top],
                               rtol=1e-5)  # Batching and padding change nothing.


def test_table_and_csv(model_dir, tmp_path, capsys):
  path = tmp_path / 'one.png'
  _photo().save(path)
  status, out, _ = _run(capsys, '--model', model_dir, path, '--topk', 3)
  assert status == 0
  lines = out.splitlines()
  assert lines[0] == str(path) and len(lines) == 4
  assert sorted(line.split()[-1] for line in lines[1:]) == sorted(CLASSES)
  status, out, _ = _run(capsys, '--model', model_dir, path, '--format', 'csv', '--topk', 1)
  rows = list(csv.DictReader(io.StringIO(out)))
  assert status == 0 and len(rows) == 1 and rows[0]['rank'] == '1'
  assert rows[0]['label'] in CLASSES and 0 < float(rows[0]['probability']) <= 1


def _png_header_only(width: int, height: int) -> bytes:
  """A PNG whose header claims width x height, followed by no pixel data worth decoding."""
  ihdr = struct.pack('>IIBBBBB', width, height, 8, 2, 0, 0, 0)
  chunk = struct.pack('>I', len(ihdr)) + b'IHDR' + ihdr
  return (b'\x89PNG\r\n\x1a\n' + chunk + struct.pack('>I', zlib.crc32(b'IHDR' + ihdr))
          + b'\x00' * 64)


@pytest.mark.slow  # End to end: a command, or a benchmark.
def test_bad_files_are_named_and_the_others_predicted(model_dir, tmp_path, capsys):
  good = tmp_path / 'good.jpg'
  _photo().save(good)
  (tmp_path / 'garbage.jpg').write_bytes(b'\xff\xd8\xff this is no JPEG')
  (tmp_path / 'text.png').write_text('hello')
  (tmp_path / 'bomb.png').write_bytes(_png_header_only(20000, 20000))
  files = [good, tmp_path / 'garbage.jpg', tmp_path / 'text.png', tmp_path / 'bomb.png']
  status, out, _ = _run(capsys, '--model', model_dir, *files, '--format', 'json')
  assert status == 1
  entries = {e['path']: e for e in json.loads(out)}
  assert 'topk' in entries[str(good)]
  assert entries[str(tmp_path / 'garbage.jpg')]['error'] == (
      f'{tmp_path / "garbage.jpg"} cannot be read as an image: damaged JPEG: invalid marker 0x20')
  assert entries[str(tmp_path / 'text.png')]['error'] == (
      f'{tmp_path / "text.png"} cannot be read as an image: not an image (text)')
  assert entries[str(tmp_path / 'bomb.png')]['error'] == (
      f'{tmp_path / "bomb.png"}: its header claims 20000 x 20000 = 400,000,000 pixels, over the '
      f'limit of 89,478,485; not decoded')
  status, out, err = _run(capsys, '--model', model_dir, *files)
  assert status == 1 and out.startswith(str(good))
  assert [line.split(':')[0] for line in err.splitlines()] == ['error'] * 3


def test_over_the_pixel_limit_is_never_decoded(classifier, tmp_path):
  small, large = tmp_path / 'small.png', tmp_path / 'large.webp'
  _photo(20, 20).save(small)
  _photo(40, 50).save(large, 'WEBP')
  decoded = []
  decode = classifier._decode
  classifier._decode = lambda encoded: decoded.append(1) or decode(encoded)
  try:
    results = list(classifier.predict_files([str(small), str(large)], max_pixels=1000))
  finally:
    classifier._decode = decode
  assert 'topk' in results[0] and 'over the limit of 1,000; not decoded' in results[1]['error']
  assert len(decoded) == 1


def test_the_python_api_takes_pil_images_and_arrays(classifier, tmp_path):
  photo = _photo()
  path = tmp_path / 'p.png'
  photo.save(path)
  from_pil, from_array, grey = classifier.predict(
      [photo, np.asarray(photo), np.asarray(photo.convert('L'))], topk=3)
  from_file = next(classifier.predict_files([str(path)], topk=3))['topk']
  assert from_pil == from_array == from_file
  assert sum(i['probability'] for i in from_pil) == pytest.approx(1.0, abs=1e-5)
  assert len(grey) == 3
  with pytest.raises(inference.ImageError, match='expected uint8 pixels'):
    classifier.predict([np.zeros((8, 8, 3), np.float32)])
  with pytest.raises(inference.ImageError, match=r'got shape \(8, 8, 2\)'):
    classifier.predict([np.zeros((8, 8, 2), np.uint8)])


def test_bad_input_gets_one_line(model_dir, tmp_path, capsys):
  (tmp_path / 'empty').mkdir()
  (tmp_path / 'empty' / 'notes.txt').write_text('no images')
  _photo().save(tmp_path / 'x.jpg')
  for argv, message in [
      (['--model', model_dir, tmp_path / 'empty'], 'empty holds no images'),
      (['--model', model_dir, tmp_path / 'missing.jpg'], 'missing.jpg does not exist'),
      (['--model', tmp_path / 'no_model', tmp_path / 'x.jpg'], 'no_model does not exist; a model '
                                                               'source is'),
      (['--model', tmp_path / 'empty', tmp_path / 'x.jpg'], 'neither a model directory')]:
    status, out, err = _run(capsys, *argv)
    assert status == 1 and out == '' and len(err.splitlines()) == 1, err
    assert err.startswith('error: ') and message in err, err


@pytest.mark.slow  # Sequencer2D-S at 224 on both sides.
def test_a_cached_timm_checkpoint_predicts_imagenet_names(tmp_path, monkeypatch, capsys):
  import huggingface_hub
  import timm
  import torch
  from safetensors.numpy import save_file

  from hub_cache import write_hub_cache
  from sequencer_jax.labels import imagenet1k_names
  from torch_reference import randomize_, state_dict_numpy

  reference = randomize_(timm.create_model('sequencer2d_s'), seed=3).eval()
  save_file(state_dict_numpy(reference), str(tmp_path / 'w.safetensors'))
  monkeypatch.setattr(huggingface_hub.constants, 'HF_HUB_CACHE', str(tmp_path / 'hub'))
  write_hub_cache(str(tmp_path / 'hub'), 'timm/sequencer2d_s.in1k',
                  {'model.safetensors': (tmp_path / 'w.safetensors').read_bytes()})
  photo = tmp_path / 'photo.jpg'
  _photo(300, 400).save(photo)
  status, out, _ = _run(capsys, '--model', 'hf-hub:timm/sequencer2d_s.in1k', photo,
                        '--format', 'json')
  assert status == 0
  (entry,) = json.loads(out)
  names = imagenet1k_names()
  assert [item['label'] for item in entry['topk']] == [names[i['index']] for i in entry['topk']]
  # timm on the same preprocessed image ranks the same five classes.
  classifier = inference.Classifier.from_source('hf-hub:timm/sequencer2d_s.in1k')
  x = classifier.preprocess(Image.open(photo))
  with torch.no_grad():
    logits = reference(torch.from_numpy(x[None]).permute(0, 3, 1, 2))[0].numpy()
  assert [item['index'] for item in entry['topk']] == np.argsort(-logits)[:5].tolist()
  status, out, _ = _run(capsys, '--model', 'hf-hub:timm/sequencer2d_s.in1k', photo)
  assert entry['topk'][0]['label'] in out.splitlines()[1]
