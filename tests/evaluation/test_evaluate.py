"""The evaluate command end to end, on generated folders laid out as each set is distributed,
against the metrics computed by hand from the model's own logits, image by image."""

from __future__ import annotations

import csv
import dataclasses
import functools
import json
import os

import flax.linen as nn
import jax
import numpy as np
import pytest
from PIL import Image

import sequencer_jax
from sequencer_jax import evaluate as evaluate_command
from sequencer_jax import sharding
from sequencer_jax.data import device_augment, eval_crop
from sequencer_jax.evaluation import metrics, runner, suites
from sequencer_jax.inference import Classifier
from sequencer_jax.labels import imagenet1k_wnids, imagenet_real_labels, subset_wnids
from sequencer_jax.models import DataConfig, SequencerArch
from production import production_jit
from random_params import random_variables

ARCH = SequencerArch(layers=(1, 1), patch_sizes=(4, 2), embed_dims=(16, 32), hidden_sizes=(4, 8))
WNIDS = imagenet1k_wnids()


class _Logits(nn.Module):
  """Returns the first pixel's 1000 channels as logits: predictions chosen by the test."""

  @nn.compact
  def __call__(self, x):
    return x[:, 0, 0, :]


def test_the_predict_step_restricts_to_the_subset():
  mesh = sharding.make_mesh()
  classes = (6, 11, 13, 15, 17, 22)
  logits = np.zeros((2, 1, 1, 1000), np.float32)
  logits[0, 0, 0, [999, 13, 6, 11]] = [9.0, 3.0, 2.0, 1.0]  # 999 is outside the subset.
  logits[1, 0, 0, [11, 5]] = [1.0, 8.0]
  step = runner.make_predict_step(_Logits(), mesh=mesh, params_sharding=sharding.replicated(mesh),
                                  classes=classes, inputs=lambda batch: batch['image'])
  batch = {'image': logits, 'label': np.array([13, 11], np.int32),
           'index': np.array([4, 7], np.int32), 'mask': np.array([True, True])}
  out = jax.device_get(step({}, sharding.global_batch(batch, mesh)))
  assert out['top5'][0].tolist()[:3] == [13, 6, 11] and out['top5'][1].tolist()[0] == 11
  assert set(out['top5'].ravel()) <= set(classes) and out['index'].tolist() == [4, 7]
  assert out['label'].tolist() == [13, 11]


@pytest.fixture(scope='module')
def model_dir(tmp_path_factory):
  model = sequencer_jax.Sequencer(ARCH, num_classes=1000)
  params = random_variables(model, np.zeros((1, 16, 16, 3), np.float32), scale=1.0)['params']
  path = str(tmp_path_factory.mktemp('model') / 'm')
  sequencer_jax.save_model(path, sequencer_jax.ModelRecord(ARCH, 1000, None, DataConfig(16, 1.0)),
                           params)
  return path


def _image(path, seed, size=(20, 24)):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  Image.fromarray(np.random.default_rng(seed).integers(0, 256, (*size, 3), np.uint8)).save(path)
  return str(path)


def _top5(classifier, path, classes=None):
  x = classifier.preprocess(Image.open(path))[None]
  logits = np.asarray(classifier.model.apply(classifier.variables, x))[0]
  if classes is not None:
    masked = np.full_like(logits, -np.inf)
    masked[list(classes)] = logits[list(classes)]
    logits = masked
  return np.argsort(-logits, kind='stable')[:5]


def _evaluate(capsys, *argv):
  status = evaluate_command.main([str(a) for a in argv])
  out, err = capsys.readouterr()
  return status, out, err


@pytest.mark.slow  # Compiles one step per set.
def test_every_suite_on_folders_laid_out_as_distributed(model_dir, tmp_path, capsys):
  loaded = sequencer_jax.load_pretrained(model_dir)
  classifier = Classifier(loaded)
  seed = iter(range(1000))
  val = {w: [_image(tmp_path / 'val' / w / f'{i}.JPEG', next(seed)) for i in range(3)]
         for w in WNIDS[:3]}
  real = [_image(tmp_path / 'real' / f'ILSVRC2012_val_{i:08d}.JPEG', next(seed))
          for i in range(1, 7)]
  a_wnids = subset_wnids('imagenet_a')[:2]
  a_set = {w: [_image(tmp_path / 'a' / w / f'{i}.jpg', next(seed)) for i in range(2)]
           for w in a_wnids}
  v2 = {WNIDS.index(w): [_image(tmp_path / 'v2' / str(WNIDS.index(w)) / os.path.basename(p),
                                 int(os.path.basename(p)[0]) + 10 * j) for p in paths]
        for j, (w, paths) in enumerate(val.items())}  # As its tars name them: class indices.
  r_wnids = subset_wnids('imagenet_r')[5:7]
  r_set = {w: [_image(tmp_path / 'r' / w / f'{i}.jpg', next(seed)) for i in range(2)]
           for w in r_wnids}
  c_cells = [('fog', s) for s in metrics.SEVERITIES] + [('snow', 1)]
  c_set = {(c, s): [_image(tmp_path / 'c' / c / str(s) / WNIDS[5] / f'{i}.png', next(seed),
                           (224, 224)) for i in range(2)] for c, s in c_cells}
  status, out, err = _evaluate(
      capsys, '--model', model_dir, '--eval', f'imagenet={tmp_path / "val"}',
      '--eval', f'real={tmp_path}:real', '--eval', f'imagenet_a={tmp_path / "a"}',
      '--eval', f'imagenet_c={tmp_path / "c"}', '--eval', f'imagenet_r={tmp_path / "r"}',
      '--eval', f'imagenet_v2={tmp_path / "v2"}', '--eval', f'imagenet_sketch={tmp_path}:val',
      '--batch-size', 4, '--format', 'json',
      '--results-file', tmp_path / 'results.csv')
  assert status == 0, err
  results = json.loads(out)

  # ImageNet: WordNet-id folders are ImageNet-1k indices.
  hits = [(WNIDS.index(w), _top5(classifier, p)) for w, paths in val.items() for p in paths]
  assert results['imagenet']['images'] == 9
  assert results['imagenet']['top1'] == pytest.approx(np.mean([t[0] == y for y, t in hits]))
  assert results['imagenet']['top5'] == pytest.approx(np.mean([y in t for y, t in hits]))
  # ReaL: the file number keys the label set; the empty set of image 1 is left out.
  sets = imagenet_real_labels()[:6]
  kept = [(s, _top5(classifier, p)) for s, p in zip(sets, real) if s]
  assert results['real']['images'] == 5
  assert results['real']['top1'] == pytest.approx(np.mean([t[0] in s for s, t in kept]))
  # ImageNet-A: top-1 over its 200 classes only.
  a_classes = [WNIDS.index(w) for w in subset_wnids('imagenet_a')]
  a_hits = [(WNIDS.index(w), _top5(classifier, p, a_classes)) for w, ps in a_set.items()
            for p in ps]
  assert results['imagenet_a']['top1'] == pytest.approx(np.mean([t[0] == y for y, t in a_hits]))
  assert results['imagenet_a']['top5'] == pytest.approx(np.mean([y in t for y, t in a_hits]))
  # ImageNet-R: its own 200 classes; V2 and Sketch: plain top-1/top-5 (here on the val folder).
  r_classes = [WNIDS.index(w) for w in subset_wnids('imagenet_r')]
  r_hits = [(WNIDS.index(w), _top5(classifier, p, r_classes)) for w, ps in r_set.items()
            for p in ps]
  assert results['imagenet_r']['top1'] == pytest.approx(np.mean([t[0] == y for y, t in r_hits]))
  assert results['imagenet_sketch'] == results['imagenet']
  v2_hits = [(y, _top5(classifier, p)) for y, paths in v2.items() for p in paths]
  assert results['imagenet_v2']['images'] == 9
  assert results['imagenet_v2']['top5'] == pytest.approx(np.mean([y in t for y, t in v2_hits]))
  # ImageNet-C: fog complete (its CE), snow partial (no CE), so no mCE.
  c = results['imagenet_c']
  as_given = Classifier(loaded._replace(record=dataclasses.replace(  # 224 x 224, crop_pct 1.0.
      loaded.record, data_config=DataConfig(224, 1.0))))
  fog_errors = [1 - np.mean([_top5(as_given, p)[0] == 5 for p in c_set['fog', s]])
                for s in metrics.SEVERITIES]
  assert c['corruptions']['fog']['ce'] == pytest.approx(
      sum(fog_errors) / sum(metrics.ALEXNET_ERRORS['fog']))
  assert c['corruptions']['snow']['ce'] is None and c['mce'] is None
  assert 'snow' in c['partial']['missing'] and c['images'] == 12
  with open(tmp_path / 'results.csv') as f:
    rows = list(csv.DictReader(f))
  assert [r['eval'] for r in rows] == ['imagenet', 'real', 'imagenet_a', 'imagenet_c',
                                       'imagenet_r', 'imagenet_v2', 'imagenet_sketch']
  assert float(rows[0]['top1']) == pytest.approx(100 * results['imagenet']['top1'], abs=1e-4)
  # The table names every set; a second run appends rows under the same header.
  status, out, _ = _evaluate(capsys, '--model', model_dir, '--eval',
                             f'imagenet={tmp_path / "val"}', '--batch-size', 4,
                             '--results-file', tmp_path / 'results.csv')
  assert status == 0 and out.splitlines()[1].startswith('imagenet')
  with open(tmp_path / 'results.csv') as f:
    assert len(list(csv.DictReader(f))) == 8


def test_bad_evaluations_get_one_line(model_dir, tmp_path, capsys):
  _image(tmp_path / 'other' / 'cats' / '0.jpg', 0)
  _image(tmp_path / 'a' / WNIDS[0] / '0.jpg', 1)  # Tench is not one of ImageNet-A's classes.
  for argv, message in [
      (['--eval', f'imagenet={tmp_path / "other"}'], "1 folder(s) are not ImageNet-1k WordNet "
                                                     "ids: cats"),
      (['--eval', f'imagenet_a={tmp_path / "a"}'], "are not the set's 200 classes: n01440764"),
      (['--eval', f'real={tmp_path / "a"}'], 'holds no ILSVRC2012_val_*.JPEG files'),
      (['--eval', f'imagenet={tmp_path / "missing"}'], 'is neither an existing image folder'),
  ]:
    status, out, err = _evaluate(capsys, '--model', model_dir, *argv)
    assert status == 1 and out == '' and len(err.splitlines()) == 1, err
    assert message in err, err
  small = sequencer_jax.Sequencer(ARCH, num_classes=3)
  params = random_variables(small, np.zeros((1, 16, 16, 3), np.float32))['params']
  sequencer_jax.save_model(str(tmp_path / 'three'), sequencer_jax.ModelRecord(ARCH, 3), params)
  status, _, err = _evaluate(capsys, '--model', tmp_path / 'three', '--eval',
                             f'imagenet={tmp_path / "a"}')
  assert status == 1 and 'has 3 classes; the ImageNet suites need an ImageNet-1k head' in err
  with pytest.raises(SystemExit):
    evaluate_command.main(['--model', model_dir, '--eval', 'top1=somewhere'])
  assert 'NAME is one of imagenet, real' in capsys.readouterr().err


def test_imagenet_c_images_reach_the_model_unchanged(tmp_path):
  """validate_c.py's crop_pct 1.0: a 224 x 224 ImageNet-C file is the model's input, only
  normalised as timm's prefetcher does (with the model's mean and std), whatever its data
  config; exactly, as the predict step's input is compiled."""
  paths = [_image(tmp_path / 'c' / 'fog' / '3' / WNIDS[7] / f'{i}.png', i, (224, 224))
           for i in range(3)]
  eval_set = suites.open_eval('imagenet_c', 'imagenet_c', str(tmp_path / 'c'))
  model_config = DataConfig(input_size=256, crop_pct=0.9, interpolation='bilinear',
                            mean=(0.5, 0.4, 0.3), std=(0.2, 0.25, 0.3))
  assert eval_set.data_config(model_config) == DataConfig(224, 1.0, 'bilinear', (0.5, 0.4, 0.3),
                                                          (0.2, 0.25, 0.3))
  mesh = sharding.make_mesh()
  seen = []

  model_input = production_jit(functools.partial(eval_crop.model_input, config=model_config))

  def recording_step(params, batch):
    """Keeps the model's input; predicts class 0 for every image."""
    seen.append(np.asarray(model_input(batch)))
    return {'top5': np.zeros((len(seen[-1]), 5), np.int32), 'label': batch['label'],
            'index': batch['index'], 'mask': batch['mask']}

  result = runner.run_eval(recording_step, {}, eval_set, batch_size=4, data_config=model_config,
                           mesh=mesh)
  assert result['images'] == 3 and result['unnormalized_mce'] is None  # One cell: partial.
  got = np.concatenate(seen)[:3]
  table = device_augment.normalization_table(model_config.mean, model_config.std)
  for path, image in zip(sorted(paths), got):
    np.testing.assert_array_equal(image, table[np.asarray(Image.open(path)), np.arange(3)])


@pytest.mark.slow  # End to end (a command, or a process of its own).
def test_a_resolution_sweep_gives_a_result_per_size_and_a_plot(model_dir, tmp_path, capsys):
  for i, wnid in enumerate(WNIDS[:2]):
    for j in range(2):
      _image(tmp_path / 'val' / wnid / f'{j}.JPEG', 2 * i + j, (40, 48))
  argv = ['--model', model_dir, '--eval', f'imagenet={tmp_path / "val"}', '--batch-size', 2,
          '--crop-pct', 0.8, '--interpolation', 'bilinear']
  plot = tmp_path / 'sweep.png'
  status, out, err = _evaluate(capsys, *argv, '--img-size', 16, 24, 32, '--format', 'json',
                               '--plot', plot)
  assert status == 0, err
  results = json.loads(out)
  assert sorted(results) == ['imagenet@16', 'imagenet@24', 'imagenet@32']
  for size in (16, 24, 32):
    r = results[f'imagenet@{size}']
    assert (r['input_size'], r['crop_pct'], r['interpolation'], r['images']) == (
        size, 0.8, 'bilinear', 4)
  # Each size is the model's own evaluation at that data config.
  record = sequencer_jax.load_pretrained(model_dir).record
  at_24 = Classifier(sequencer_jax.load_pretrained(model_dir)._replace(record=dataclasses.replace(
      record, data_config=DataConfig(24, 0.8, 'bilinear'))))
  hits = [_top5(at_24, p)[0] == WNIDS.index(w) for w in WNIDS[:2]
          for p in sorted(str(q) for q in (tmp_path / 'val' / w).iterdir())]
  assert results['imagenet@24']['top1'] == pytest.approx(np.mean(hits))
  with Image.open(plot) as picture:
    assert picture.format == 'PNG' and picture.size[0] > 100
  # One size keeps the plain name; refusals come before any work.
  status, out, _ = _evaluate(capsys, *argv, '--img-size', 24, '--format', 'json')
  assert list(json.loads(out)) == ['imagenet'] and json.loads(out)['imagenet'] == results[
      'imagenet@24']
  for extra, message in [(['--img-size', 16, '--plot', plot], 'already exists'),
                         (['--img-size', 16, 16], 'distinct positive sizes'),
                         (['--eval', f'imagenet_c={tmp_path}', '--img-size', 16],
                          'do not apply to imagenet_c')]:
    with pytest.raises(SystemExit):
      evaluate_command.main([str(a) for a in [*argv, *extra]])
    assert message in capsys.readouterr().err
