"""convert_torch_weights.py end to end: file formats, wrappers, head replacement, export, refusals."""

from __future__ import annotations

import hashlib
import os
import pickle
import re
import subprocess
import sys

import jax
import numpy as np
import pytest
import timm
import torch
from safetensors.numpy import load_file, save_file

import sequencer_jax
from sequencer_jax import convert as convert_command
from sequencer_jax.weights import model_format
from sequencer_jax.weights import torch_keys as convert
from sequencer_jax.labels import imagenet1k_names
from sequencer_jax.pretrained import SourceError
from sequencer_jax.weights.model_format import ModelRecord, read_model_record
from torch_reference import randomize_, state_dict_numpy


@pytest.fixture(scope='module')
def state_dict():
  return state_dict_numpy(randomize_(timm.create_model('sequencer2d_s'), seed=11))


@pytest.fixture(scope='module')
def expected_params(state_dict):
  return convert.torch_to_flax(state_dict, sequencer_jax.create_model('sequencer2d_s'))


def _torch_save(obj, path):
  torch.save(obj, path)
  return str(path)


def _as_torch(sd):
  return {k: torch.from_numpy(v) for k, v in sd.items()}


def _run(*argv):
  return convert_command.main([str(a) for a in argv])


@pytest.fixture(scope='module')
def timm_pth(state_dict, tmp_path_factory):
  """The state_dict saved as timm's .pth, once for the module (read, never changed)."""
  return _torch_save(_as_torch(state_dict), tmp_path_factory.mktemp('timm') / 'w.pth')


@pytest.fixture(scope='module')
def converted(timm_pth, tmp_path_factory):
  """The model directory the command converts `timm_pth` to, once for the module."""
  dst = tmp_path_factory.mktemp('converted') / 'ours'
  assert _run(timm_pth, dst) == 0
  return dst


def _tree_equal(a, b):
  jax.tree.map(np.testing.assert_array_equal, a, b)


@pytest.mark.parametrize('form', ['pth', 'bin-wrapped-module', 'safetensors', 'original-model'])
def test_converts_every_checkpoint_form(tmp_path, state_dict, expected_params, form):
  if form == 'pth':
    src = _torch_save(_as_torch(state_dict), tmp_path / 'w.pth')
  elif form == 'bin-wrapped-module':
    wrapped = {'state_dict': {f'module.{k}': v for k, v in _as_torch(state_dict).items()},
               'epoch': 3}
    src = _torch_save(wrapped, tmp_path / 'pytorch_model.bin')
  elif form == 'safetensors':
    src = str(tmp_path / 'model.safetensors')
    save_file(state_dict, src)
  else:
    original = convert.timm_to_original(state_dict, (4, 3, 8, 3))
    src = _torch_save({'model': _as_torch(original)}, tmp_path / 'sequencer2d_s.pth')
  dst = tmp_path / 'converted'
  assert _run(src, dst) == 0
  model, variables, record = sequencer_jax.load_pretrained(str(dst))
  assert model.num_classes == 1000 and read_model_record(str(dst)).name == 'sequencer2d_s'
  assert record.class_names == imagenet1k_names() and record.class_names[0] == 'tench, Tinca tinca'
  assert record.data_config.to_pretrained_cfg() == {
      'input_size': [3, 224, 224], 'crop_pct': 0.875, 'interpolation': 'bicubic',
      'mean': [0.485, 0.456, 0.406], 'std': [0.229, 0.224, 0.225]}
  assert record.provenance == {'converted_from': os.path.abspath(src)}
  _tree_equal(variables['params'], expected_params)
  # The file itself is a model source: converted in memory to the same parameters, nothing written.
  listing = sorted(os.listdir(tmp_path))
  _, direct, direct_record = sequencer_jax.load_pretrained(src)
  _tree_equal(direct['params'], expected_params)
  assert direct_record.arch == record.arch and direct_record.class_names == record.class_names
  assert sorted(os.listdir(tmp_path)) == listing


@pytest.mark.slow  # --check runs both models at 224: the parity itself is tests/models.
def test_num_classes_replaces_the_head_and_check_reports_the_difference(
    tmp_path, timm_pth, expected_params, capsys):
  assert _run(timm_pth, tmp_path / 'ten', '--num-classes', 10, '--check') == 0
  out = capsys.readouterr().out
  diff = float(out.split('max |difference| = ')[1].split()[0])
  assert diff <= 1e-4, out
  model, variables, _ = sequencer_jax.load_pretrained(str(tmp_path / 'ten'))
  params = variables['params']
  assert model.num_classes == 10 and params['head']['kernel'].shape == (384, 10)
  assert not np.any(params['head']['kernel']) and not np.any(params['head']['bias'])
  _tree_equal({k: v for k, v in params.items() if k != 'head'},
              {k: v for k, v in expected_params.items() if k != 'head'})
  assert _run(timm_pth, tmp_path / 'headless', '--num-classes', 0) == 0
  model, variables, _ = sequencer_jax.load_pretrained(str(tmp_path / 'headless'))
  assert model.num_classes == 0 and 'head' not in variables['params']


@pytest.mark.slow
def test_check_with_the_full_head(tmp_path, state_dict, capsys):
  src = str(tmp_path / 'w.safetensors')
  save_file(state_dict, src)
  assert _run(src, tmp_path / 'out', '--check') == 0
  out = capsys.readouterr().out
  assert float(out.split('max |difference| = ')[1].split()[0]) <= 1e-4, out


@pytest.mark.parametrize('layout', ['timm', 'original'])
def test_export_round_trip(tmp_path, state_dict, expected_params, converted, layout):
  exported = tmp_path / 'back.safetensors'
  assert _run('--to-torch', converted, exported, '--layout', layout) == 0
  back = load_file(str(exported))
  expected = state_dict if layout == 'timm' else convert.timm_to_original(state_dict, (4, 3, 8, 3))
  assert sorted(back) == sorted(expected)
  for key, value in expected.items():
    np.testing.assert_array_equal(back[key], value, err_msg=key)
  # And the export converts back to the same Flax parameters (in memory: writing them to a model
  # directory and reading it back is test_converts_every_checkpoint_form's).
  _tree_equal(sequencer_jax.load_pretrained(str(exported))[1]['params'], expected_params)


def _digest(path):
  if os.path.isdir(path):
    return sorted(os.listdir(path))
  with open(path, 'rb') as f:
    return hashlib.sha256(f.read()).hexdigest()


class _RunsCode:
  """A pickle payload that would create a file if it were ever unpickled."""

  def __init__(self, marker):
    self.marker = marker

  def __reduce__(self):
    return (open, (self.marker, 'w'))


def _bad_sources(tmp_path, state_dict, good):
  """(description, path, expected message) for every kind of bad input; `good` is a .pth of
  `state_dict`."""
  with open(good, 'rb') as f:
    data = f.read()
  truncated = tmp_path / 'truncated.pth'
  truncated.write_bytes(data[:len(data) // 2])
  missing = dict(state_dict)
  del missing['stages.2.blocks.5.rnn_tokens.rnn_h.weight_hh_l0_reverse']
  wrong = dict(state_dict)
  wrong['stages.1.blocks.0.mlp_channels.fc1.weight'] = np.zeros((1152, 383), np.float32)
  not_ckpt = tmp_path / 'notes.pth'
  not_ckpt.write_text('these are not weights\n')
  empty = tmp_path / 'empty.safetensors'
  empty.write_bytes(b'')
  directory = tmp_path / 'a_directory'
  directory.mkdir()
  marker = tmp_path / 'PWNED'
  hostile_zip = _torch_save({'x': _RunsCode(str(marker))}, tmp_path / 'hostile.pth')
  hostile_raw = tmp_path / 'hostile_raw.pth'
  hostile_raw.write_bytes(pickle.dumps({'x': _RunsCode(str(marker))}, protocol=2))
  return marker, [
      ('truncated', truncated, 'could not be read as a PyTorch checkpoint'),
      ('missing key', _torch_save(_as_torch(missing), tmp_path / 'missing.pth'),
       r'missing 1 tensor\(s\): stages.2.blocks.5.rnn_tokens.rnn_h.weight_hh_l0_reverse'),
      ('wrong shape', _torch_save(_as_torch(wrong), tmp_path / 'wrong.pth'),
       r'stages.1.blocks.0.mlp_channels.fc1.weight: checkpoint \(1152, 383\), '
       r'model expects \(1152, 384\)'),
      ('not a checkpoint', not_ckpt, 'is not a PyTorch checkpoint'),
      ('empty', empty, 'is empty'),
      ('directory', directory, 'is a directory'),
      ('hostile zip pickle', hostile_zip, 'refused to load .* could run code'),
      ('hostile raw pickle', hostile_raw, 'refused to load .* could run code'),
      ('no such file', tmp_path / 'nope.pth', 'does not exist'),
  ]


def test_bad_inputs_are_refused_and_nothing_is_written(tmp_path, state_dict, timm_pth, capsys):
  marker, cases = _bad_sources(tmp_path, state_dict, timm_pth)
  for what, src, message in cases:
    before = _digest(src) if os.path.exists(src) else None
    dst = tmp_path / f'out-{what.replace(" ", "_")}'
    assert _run(src, dst) == 1, what
    err = capsys.readouterr().err
    assert err.startswith('error: '), (what, err)
    assert re.search(message, err), (what, err)
    assert not os.path.exists(dst), what
    assert (_digest(src) if os.path.exists(src) else None) == before, what
  assert not marker.exists()  # No pickled code ever ran.


def test_wrong_model_name_and_existing_destination(tmp_path, timm_pth, converted, capsys):
  assert _run(timm_pth, tmp_path / 'as_m', '--model', 'sequencer2d_m') == 1
  assert 'the checkpoint holds sequencer2d_s (read from its keys and shapes), not sequencer2d_m' \
      in capsys.readouterr().err
  assert not (tmp_path / 'as_m').exists()
  existing = tmp_path / 'existing'
  existing.mkdir()
  (existing / 'keep.txt').write_text('mine')
  assert _run(timm_pth, existing) == 1
  assert 'already exists; refusing to overwrite it' in capsys.readouterr().err
  assert os.listdir(existing) == ['keep.txt'] and (existing / 'keep.txt').read_text() == 'mine'
  (tmp_path / 'taken.safetensors').write_bytes(b'mine')
  assert _run('--to-torch', converted, tmp_path / 'taken.safetensors') == 1
  assert (tmp_path / 'taken.safetensors').read_bytes() == b'mine'
  assert _run('--to-torch', converted, tmp_path / 'out.pth') == 1
  assert 'name the file *.safetensors' in capsys.readouterr().err


@pytest.mark.slow
def test_a_damaged_model_directory_is_named(tmp_path, timm_pth):
  assert _run(timm_pth, tmp_path / 'ours') == 0
  chunk = max((p for p in (tmp_path / 'ours' / 'params').rglob('*') if p.is_file()),
              key=lambda p: p.stat().st_size)  # The tensor data.
  chunk.write_bytes(chunk.read_bytes()[:chunk.stat().st_size // 2])
  # In a subprocess: the reads a failed restore leaves in flight report into a closed event loop.
  load = subprocess.run(
      [sys.executable, '-c', 'import sys, sequencer_jax; sequencer_jax.load_pretrained(sys.argv[1])',
       str(tmp_path / 'ours')], capture_output=True, text=True, timeout=300,
      cwd=os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
  assert load.returncode != 0
  # The parameters fail to read (orbax can also fail earlier, on the record): named either way.
  assert f"SourceError: {tmp_path / 'ours'}" in load.stderr, load.stderr[-2000:]
  assert ('do not match its architecture with 1000 classes, or are damaged' in load.stderr
          or 'its model record cannot be read, the directory is damaged' in load.stderr)
  assert 'Event loop is closed' not in load.stderr, load.stderr[-2000:]


def test_load_pretrained_refuses_what_is_not_a_model_source(tmp_path):
  with pytest.raises(SourceError, match='nothing does not exist; a model source is a model dir'):
    sequencer_jax.load_pretrained(str(tmp_path / 'nothing'))
  (tmp_path / 'plain').mkdir()
  with pytest.raises(SourceError, match='is a directory that is neither a model directory'):
    sequencer_jax.load_pretrained(str(tmp_path / 'plain'))
  (tmp_path / 'notes.txt').write_text('not weights')
  with pytest.raises(SourceError, match='notes.txt is not a model file'):
    sequencer_jax.load_pretrained(str(tmp_path / 'notes.txt'))
  with pytest.raises(SourceError, match='only a training workdir holds EMA weights'):
    sequencer_jax.load_pretrained(str(tmp_path / 'plain'), ema=True)


def _small_params():
  model = sequencer_jax.create_model('sequencer2d_s', num_classes=0, layers=(1, 1, 1, 1))
  return model, jax.tree.map(lambda s: np.zeros(s.shape, s.dtype),
                             model_format.abstract_params(model))


def test_a_model_directory_of_another_format_version_is_refused(tmp_path, monkeypatch):
  model, params = _small_params()
  record = ModelRecord(model.arch, 0)
  monkeypatch.setattr(model_format, 'FORMAT_VERSION', 99)
  sequencer_jax.save_model(str(tmp_path / 'v99'), record, params)
  monkeypatch.undo()
  with pytest.raises(SourceError, match='format version 99; this code reads versions 1, 2'):
    sequencer_jax.load_pretrained(str(tmp_path / 'v99'))


def test_a_format_version_1_directory_still_loads(tmp_path, expected_params):
  """Version 1 (earlier releases of the converter) recorded a registered name and a class count."""
  import orbax.checkpoint as ocp
  params = {k: v for k, v in expected_params.items() if k != 'head'}  # Sequencer2D-S, no head.
  with ocp.Checkpointer(ocp.CompositeCheckpointHandler()) as ckptr:
    ckptr.save(str(tmp_path / 'v1'), args=ocp.args.Composite(
        params=ocp.args.StandardSave(params), model=ocp.args.JsonSave(
            {'name': 'sequencer2d_s', 'num_classes': 0, 'format_version': 1})))
  model, variables, record = sequencer_jax.load_pretrained(str(tmp_path / 'v1'))
  assert model.arch == sequencer_jax.model_info('sequencer2d_s').arch and record.name == 'sequencer2d_s'
  assert record.class_names is None and record.data_config.input_size == 224
  _tree_equal(variables['params'], params)


def test_the_record_round_trips_a_custom_architecture(tmp_path):
  model, params = _small_params()
  record = ModelRecord(model.arch, 0, None, sequencer_jax.models.DataConfig(160, 0.95, 'bilinear'),
                       {'exported_from': '/runs/a', 'step': 7, 'weights': 'ema'})
  sequencer_jax.save_model(str(tmp_path / 'custom'), record, params)
  assert read_model_record(str(tmp_path / 'custom')) == record and record.name is None
  with pytest.raises(FileExistsError, match='refusing to overwrite'):
    sequencer_jax.save_model(str(tmp_path / 'custom'), record, params)
  with pytest.raises(ValueError, match='2 class names for 3 classes'):
    ModelRecord(model.arch, 3, ('a', 'b'))


def test_state_dict_that_is_not_a_sequencer(tmp_path):
  with pytest.raises(convert.ConversionError, match='not a Sequencer state_dict'):
    convert.convert_state_dict({'conv1.weight': np.zeros((64, 3, 7, 7), np.float32)})


def test_check_is_refused_before_writing_for_models_timm_lacks(tmp_path, capsys):
  from torch_reference import OriginalSequencer
  gru = OriginalSequencer(sequencer_jax.model_info('gru_sequencer2d_s').arch)
  src = _torch_save(gru.state_dict(), tmp_path / 'gru.pth')
  assert _run(src, tmp_path / 'out', '--check') == 1
  assert 'timm has no model like gru_sequencer2d_s' in capsys.readouterr().err
  assert not (tmp_path / 'out').exists()
  assert _run(src, tmp_path / 'out') == 0  # Without --check it converts.


@pytest.mark.parametrize('argv', [['--to-torch', 'a', 'b.safetensors', '--check'],
                                  ['--to-torch', 'a', 'b.safetensors', '--num-classes', '3'],
                                  ['a.pth', 'b', '--layout', 'timm']])
def test_flags_that_do_not_apply_are_refused(argv, capsys):
  with pytest.raises(SystemExit):
    _run(*argv)
  err = capsys.readouterr().err
  assert ('applies to --to-torch DST.safetensors only' in err
          or 'apply to conversion, not to --to-torch' in err)
