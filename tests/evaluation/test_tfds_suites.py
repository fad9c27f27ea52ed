"""The suites read from TFDS (mock data in a data_dir laid out by the test, never a download):
labels in ImageNet-1k indices, ReaL's label sets from `imagenet2012_real`, ImageNet-C configs."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow_datasets as tfds
from tfds_prepared import fake_prepared

from sequencer_jax.errors import DatasetError
from sequencer_jax.evaluation import metrics, suites


@pytest.fixture
def data_dir(tmp_path):
  for name, split in [('imagenet_a', 'test'), ('imagenet2012_real', 'validation'),
                      ('imagenet2012_corrupted/fog_2', 'validation')]:
    fake_prepared(str(tmp_path), name, {split: 6})
  with tfds.testing.mock_data(num_examples=6, policy=tfds.testing.MockPolicy.USE_FILES,
                              data_dir=str(tmp_path)):
    yield str(tmp_path)


def _rows(name, split, data_dir, keys):
  dataset = tfds.builder(name, data_dir=data_dir).as_dataset(split=split, shuffle_files=False)
  return [{k: row[k] for k in keys} for row in dataset.as_numpy_iterator()]


def test_tfds_suites(data_dir):
  a = suites.open_eval('a', 'imagenet_a', 'imagenet_a', None, data_dir)
  assert a.classes == tuple(sorted(a.classes)) and len(a.classes) == 200
  # TFDS's labels are already ImageNet-1k indices (its class names are the WordNet ids).
  assert a.label_map.tolist() == list(range(1000))

  real = suites.open_eval('r', 'real', 'imagenet2012_real', None, data_dir)
  sets = [tuple(int(c) for c in r['real_label'])
          for r in _rows('imagenet2012_real', 'validation', data_dir, ['real_label'])]
  assert real.new_metric().label_sets == [frozenset(s) for s in sets]

  c = suites.open_eval('c', 'imagenet_c', 'imagenet2012_corrupted/fog_2', None, data_dir)
  labels = np.asarray([int(r['label']) for r in _rows('imagenet2012_corrupted/fog_2',
                                                      'validation', data_dir, ['label'])])
  metric = c.new_metric()
  metric.update(np.tile(np.arange(5), (6, 1)), c.label_map[labels], np.arange(6))
  result = metric.result()
  assert list(result['corruptions']) == ['fog'] and result['mce'] is None and result['images'] == 6
  assert result['corruptions']['fog']['top1_by_severity'] == {2: pytest.approx(
      np.mean(labels == 0))}
  with pytest.raises(DatasetError, match='one per --eval'):
    suites.open_eval('c', 'imagenet_c', 'imagenet2012_corrupted', None, data_dir)
  assert metrics.CORRUPTIONS.index('fog') == 9
