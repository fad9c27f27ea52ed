"""The host's training transform (crops on a canvas) against timm's, sources, multi-process
sharding, padded eval, skipping.

Bounds: the RandomResizedCrop window sampler matches timm's `get_params` in distribution
(means of area fraction, log aspect and offsets within 0.02 of timm's over 4,000 draws each) and
exactly in its fallback; the host's resize of a window larger than the canvas equals PIL's
`resize` within mean |diff| 0.5 and p99 3 grey levels; the fused JPEG crop equals
decode-then-crop within mean |diff| 0.5 after the step's resize; the filter is a fair coin
(0.5 +- 0.08 over 400 draws).
"""

from __future__ import annotations

import io
import math
import random

import jax
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds
import torch
from PIL import Image
from tfds_prepared import fake_prepared
from timm.data import transforms as timm_transforms

from sequencer_jax.data import folder, pil_resize, pipeline, sources, transforms
from sequencer_jax.errors import DatasetError
from sequencer_jax.models import DataConfig

_resize_crops = jax.jit(pil_resize.resize_crops, static_argnums=3)  # The step's resize.


def _image(h, w, seed=0):
  rng = np.random.RandomState(seed)
  small = Image.fromarray((rng.rand(max(2, h // 16), max(2, w // 16), 3) * 255).astype(np.uint8))
  smooth = np.asarray(small.resize((w, h), Image.BICUBIC)).astype(np.float32)
  return Image.fromarray(np.clip(smooth + rng.randn(h, w, 3) * 8, 0, 255).astype(np.uint8))


def _jpeg(image, quality=90):
  buffer = io.BytesIO()
  image.save(buffer, 'JPEG', quality=quality)
  return buffer.getvalue()


def _write_folder(root, classes=3, per_class=(5, 2), size=(48, 40)):
  for split, count in zip(('train', 'val'), per_class):
    for c in range(classes):
      directory = root / split / f'class{c}'
      directory.mkdir(parents=True)
      for i in range(count):
        (directory / f'{i}.JPEG').write_bytes(_jpeg(_image(*size, seed=100 * c + i)))


def _seed(i):
  return tf.constant([7, i], tf.int64)


@tf.function
def _window(h, w, seed):
  return transforms.random_resized_crop_window(h, w, seed)


@tf.function
def _windows(h, w, seeds):
  """`_window` of each of `seeds` [n, 2], in one call of the graph."""
  return tf.map_fn(lambda seed: transforms.random_resized_crop_window(h, w, seed), seeds,
                   fn_output_signature=tf.int32)


def _stats(windows, h, w):
  windows = np.asarray(windows, np.float64)
  top, left, ch, cw = windows.T
  return np.array([(ch * cw / (h * w)).mean(), np.log(cw / ch).mean(),
                   (top / h).mean(), (left / w).mean()])


@pytest.mark.parametrize('h, w', [(375, 500), (500, 333)])
def test_random_resized_crop_window_matches_timm_in_distribution(h, w, monkeypatch):
  monkeypatch.setattr(timm_transforms.F, 'get_image_size', lambda image: image.size)
  random.seed(0)
  crop = timm_transforms.RandomResizedCropAndInterpolation(224)
  theirs = [crop.get_params(Image.new('RGB', (w, h)), crop.scale, crop.ratio)
            for _ in range(4000)]
  seeds = tf.constant([[7, i] for i in range(4000)], tf.int64)  # _seed(i) for each i.
  ours = _windows(h, w, seeds).numpy()
  assert all(0 <= t and 0 <= l and t + ch <= h and l + cw <= w for t, l, ch, cw in ours)
  np.testing.assert_allclose(_stats(ours, h, w), _stats(theirs, h, w), atol=0.02)


def test_random_resized_crop_fallback_is_timms(monkeypatch):
  monkeypatch.setattr(timm_transforms.F, 'get_image_size', lambda image: image.size)
  crop = timm_transforms.RandomResizedCropAndInterpolation(224)
  for h, w in [(20, 900), (900, 20)]:  # No attempt fits: the centred crop within the ratio.
    want = crop.get_params(Image.new('RGB', (w, h)), crop.scale, crop.ratio)
    np.testing.assert_array_equal(_window(h, w, _seed(1)).numpy(), want)


@pytest.mark.parametrize('bicubic', [False, True])
@pytest.mark.parametrize('window', [(13, 40, 150, 210), (0, 0, 375, 500), (100, 200, 30, 40)])
def test_the_hosts_resize_of_a_window_is_pillows(bicubic, window):
  """The host's resize of the crops too large for the canvas, in the tf.data graph: exact."""
  image = _image(375, 500, seed=3)
  top, left, h, w = window
  want = np.asarray(image.crop((left, top, left + w, top + h)).resize(
      (224, 224), Image.BICUBIC if bicubic else Image.BILINEAR))
  resize = tf.function(transforms.pillow_resize, reduce_retracing=True)
  got = resize(tf.constant(np.asarray(image))[top:top + h, left:left + w], 224,
               tf.constant(bicubic)).numpy()
  np.testing.assert_array_equal(got, want)


def _on_canvas(encoded, seed, canvas=512, out=224, **kwargs):
  return {k: v.numpy() for k, v in transforms.decode_crop_on_canvas(
      tf.constant(encoded), seed, canvas, out, **kwargs).items()}


def test_fused_decode_matches_decode_then_crop():
  encoded = _jpeg(_image(375, 500, seed=4))
  fused = [_on_canvas(encoded, _seed(i), fused=True) for i in range(8)]
  full = [_on_canvas(encoded, _seed(i), fused=False) for i in range(8)]
  resized = []
  for examples in (fused, full):
    stack = lambda key: np.stack([e[key] for e in examples])
    resized.append(np.asarray(_resize_crops(stack('image'), stack('crop_size'), stack('bicubic'),
                                            224)).astype(np.float32))
    assert not stack('host_resized').any()  # A 512 canvas holds every crop of 500 x 375.
  for a, b in zip(fused, full):
    np.testing.assert_array_equal(a['crop_size'], b['crop_size'])
  diff = np.abs(resized[0] - resized[1]).mean(axis=(1, 2, 3))
  assert diff.max() <= 0.5, diff


def test_crop_on_canvas_is_the_window_and_zeros():
  image = _image(60, 80, seed=6)
  example = _on_canvas(_jpeg(image, quality=100), _seed(2), canvas=96, out=32, fused=False)
  h, w = example['crop_size']
  window = transforms.random_resized_crop_window(60, 80, tf.random.experimental.stateless_split(
      _seed(2), 2)[0]).numpy()
  np.testing.assert_array_equal([h, w], window[2:])
  canvas = example['image']
  assert canvas.shape == (96, 96, 3) and canvas.dtype == np.uint8 and not example['host_resized']
  decoded = tf.io.decode_jpeg(_jpeg(image, quality=100), dct_method='INTEGER_ACCURATE').numpy()
  top, left = window[:2]
  np.testing.assert_array_equal(canvas[:h, :w], decoded[top:top + h, left:left + w])
  assert not canvas[h:].any() and not canvas[:, w:].any()


def test_a_crop_larger_than_the_canvas_is_resized_on_the_host():
  """The host resizes it to the output size; the step's resize at scale 1 keeps it as it is."""
  encoded = _jpeg(_image(200, 240, seed=7))
  seeds = [_seed(i) for i in range(40)]
  examples = [_on_canvas(encoded, s, canvas=120, out=32) for s in seeds]
  resized = [e for e in examples if e['host_resized']]
  kept = [e for e in examples if not e['host_resized']]
  assert resized and kept
  for e in resized:
    np.testing.assert_array_equal(e['crop_size'], [32, 32])
    assert not e['image'][32:].any() and not e['image'][:, 32:].any()
    step = _resize_crops(e['image'][None], e['crop_size'][None], e['bicubic'][None], 32)
    np.testing.assert_array_equal(np.asarray(step)[0], e['image'][:32, :32])
  assert all(max(e['crop_size']) <= 120 for e in kept)
  with pytest.raises(ValueError, match=r'the canvas \(16\) is smaller than the output size'):
    _on_canvas(encoded, seeds[0], canvas=16, out=32)


def test_interpolation_is_a_fair_coin():
  encoded = _jpeg(_image(64, 80, seed=5))
  draw = tf.function(lambda seed: transforms.decode_crop_on_canvas(  # Traced once for 400 draws.
      tf.constant(encoded), seed, 80, 16)['bicubic'], autograph=False)
  bicubic = [draw(_seed(i)).numpy() for i in range(400)]
  assert abs(np.mean(bicubic) - 0.5) < 0.08
  fixed = _on_canvas(encoded, _seed(0), canvas=80, out=16, interpolation='bilinear')
  assert not fixed['bicubic']
  with pytest.raises(ValueError, match="interpolation must be 'random', 'bilinear' or 'bicubic'"):
    _on_canvas(encoded, _seed(0), canvas=80, out=16, interpolation='lanczos')


def test_shard_bounds_cover_every_example_once():
  for n in (0, 1, 7, 10, 1001):
    for count in (1, 2, 3, 8):
      bounds = [sources.shard_bounds(n, i, count) for i in range(count)]
      covered = np.concatenate([np.arange(s, e) for s, e in bounds])
      np.testing.assert_array_equal(covered, np.arange(n))
      sizes = [e - s for s, e in bounds]
      assert max(sizes) - min(sizes) <= 1
  with pytest.raises(ValueError, match='shard index 3 is not in'):
    sources.shard_bounds(10, 3, 3)


def _augment():
  return pipeline.TrainAugment(canvas_size=48)


def test_train_batches_share_reproduce_and_resume(tmp_path):
  _write_folder(tmp_path, classes=3, per_class=(7, 1))  # 21 images.
  source = sources.open_source(str(tmp_path), 'train')
  kwargs = dict(global_batch=4, image_size=16, augment=_augment(), seed=3)
  assert pipeline.steps_per_epoch(source, 4, 2) == 5  # Shares of 11 and 10, batch 2 each.
  batches = [list(pipeline.train_batches(source, epoch=0, process_index=i, process_count=2,
                                         **kwargs)) for i in range(2)]
  assert [len(b) for b in batches] == [5, 5]
  first = batches[0][0]
  assert first['image'].shape == (2, 48, 48, 3)  # Canvases: the step resizes to 16.
  assert first['image'].dtype == np.uint8 and first['crop_size'].shape == (2, 2)
  assert first['bicubic'].dtype == bool and 'host_resized' not in first
  again = list(pipeline.train_batches(source, epoch=0, process_index=0, process_count=2,
                                      **kwargs))
  for a, b in zip(again, batches[0]):
    for key in ('image', 'crop_size', 'bicubic', 'label'):
      np.testing.assert_array_equal(a[key], b[key])
  resumed = list(pipeline.train_batches(source, epoch=0, start_step=3, process_index=0,
                                        process_count=2, **kwargs))
  assert len(resumed) == 2
  for a, b in zip(resumed, batches[0][3:]):
    np.testing.assert_array_equal(a['image'], b['image'])
  other_epoch = next(pipeline.train_batches(source, epoch=1, process_index=0, process_count=2,
                                            **kwargs))
  assert not np.array_equal(other_epoch['image'], batches[0][0]['image'])
  with pytest.raises(ValueError, match='does not split evenly over 3 processes'):
    pipeline.steps_per_epoch(source, 4, 3)


def test_eval_covers_every_example_once_with_padding(tmp_path):
  _write_folder(tmp_path, classes=3, per_class=(1, 5))  # 15 val images.
  source = sources.open_source(str(tmp_path), 'val')
  seen, indices = [], []
  for index in range(2):
    batches = list(pipeline.eval_batches(source, batch_size=8, data_config=DataConfig(16, 0.875),
                                         process_index=index, process_count=2))
    assert len(batches) == 2  # ceil(8 / 4) on both processes.
    for batch in batches:
      seen.extend(batch['label'][batch['mask']])
      indices.extend(batch['index'][batch['mask']])
      padding = ~batch['mask']
      assert not batch['image'][padding].any() and (batch['index'][padding] == -1).all()
  assert sorted(seen) == sorted(source.split.labels)
  assert indices == list(range(15))  # Each image's index in the whole split, once.
  assert [source.split.labels[i] for i in indices] == seen
  single = list(pipeline.eval_batches(source, batch_size=4, data_config=DataConfig(16, 0.875)))
  assert sum(int(b['mask'].sum()) for b in single) == 15 and len(single) == 4


def test_undecodable_files_are_skipped_named_and_counted(tmp_path, caplog):
  _write_folder(tmp_path, classes=2, per_class=(6, 3))
  bad_train = tmp_path / 'train' / 'class1' / '2.JPEG'
  bad_train.write_bytes(b'<html>not an image</html>')
  bad_val = tmp_path / 'val' / 'class1' / '2.JPEG'  # The last val file: only the end sees it.
  bad_val.write_bytes(_jpeg(_image(48, 40))[:300])
  train = sources.open_source(str(tmp_path), 'train')
  batches = pipeline.train_batches(train, global_batch=4, image_size=16, augment=_augment(),
                                   seed=0, epoch=0)
  assert len(list(batches)) == 3  # 11 good images still fill every step.
  assert batches.skipped == {str(bad_train): 'not an image (text)'}
  assert f'skipped {bad_train}: not an image (text)' in caplog.text
  val = sources.open_source(str(tmp_path), 'val')
  evaluated = pipeline.eval_batches(val, batch_size=4, data_config=DataConfig(16, 1.0))
  assert sum(int(b['mask'].sum()) for b in evaluated) == 5
  assert evaluated.skipped == {str(bad_val): 'truncated JPEG'}


def test_a_split_of_only_undecodable_files_is_a_clear_error(tmp_path):
  _write_folder(tmp_path, classes=1, per_class=(4, 1))
  for path in (tmp_path / 'train' / 'class0').iterdir():
    path.write_bytes(b'')
  source = sources.open_source(str(tmp_path), 'train')
  batches = pipeline.train_batches(source, global_batch=2, image_size=16, augment=_augment(),
                                   seed=0, epoch=0)
  with pytest.raises(DatasetError,
                     match='ran out 2 batch.*4 record.*could not be decoded.*: empty file'):
    list(batches)


def test_oversized_crops_are_counted(tmp_path):
  _write_folder(tmp_path, classes=2, per_class=(8, 1), size=(60, 80))
  source = sources.open_source(str(tmp_path), 'train')
  batches = pipeline.train_batches(source, global_batch=8, image_size=24,
                                   augment=pipeline.TrainAugment(canvas_size=40), seed=1, epoch=0)
  batch = next(batches)
  assert batch['image'].shape == (8, 40, 40, 3)
  assert batches.images == 8 and 0 < batches.host_resized < 8  # Some crops exceed 40 x 40.
  assert (batch['crop_size'] <= 40).all()


def test_tfds_source_not_prepared_fails_fast_with_instructions(tmp_path):
  with pytest.raises(DatasetError, match=r'not prepared in .*tfds build cifar10'):
    sources.open_source('cifar10', 'train', str(tmp_path))
  with pytest.raises(DatasetError, match=r'ILSVRC2012_img_train.tar .*downloads/manual'):
    sources.open_source('imagenet2012', 'train', str(tmp_path))
  with pytest.raises(DatasetError, match='neither an existing image folder nor'):
    sources.open_source(str(tmp_path / 'missing'), 'train')


def test_tfds_sources_read_mock_data_through_the_pipeline(tmp_path):
  fake_prepared(str(tmp_path), 'cifar10', {'train': 13, 'test': 5})
  fake_prepared(str(tmp_path), 'oxford_flowers102', {'train': 7, 'validation': 6, 'test': 9})
  with tfds.testing.mock_data(num_examples=8, policy=tfds.testing.MockPolicy.USE_FILES,
                              data_dir=str(tmp_path)):
    cifar = sources.open_source('cifar10', 'train', str(tmp_path))
    assert (cifar.num_examples, cifar.num_classes) == (13, 10)
    assert [cifar.shard_size(i, 3) for i in range(3)] == [5, 4, 4]
    batch = next(pipeline.train_batches(cifar, global_batch=4, image_size=24,
                                        augment=pipeline.TrainAugment(canvas_size=32), seed=0,
                                        epoch=0))
    assert batch['image'].shape == (4, 32, 32, 3) and batch['label'].max() < 10
    flowers = sources.open_source('oxford_flowers102', 'train+validation', str(tmp_path))
    assert (flowers.num_examples, flowers.num_classes) == (13, 102)
    with pytest.raises(DatasetError, match="has no split 'validation'.*test, train"):
      sources.open_source('cifar10', 'validation', str(tmp_path))
