"""`--to-torch SRC DIR`: a timm Hub folder, laid into a Hugging Face cache built by the test (the
hub offline), loads in timm with logits within 1e-4 of ours (fp32, CPU, highest precision) and
back here with equal parameters; architectures timm cannot build are refused, writing nothing."""

from __future__ import annotations

import json
import os

import huggingface_hub
import jax
import numpy as np
import pytest
import timm
import torch
from safetensors.numpy import load_file

import sequencer_jax
from sequencer_jax import convert as convert_command
from sequencer_jax.labels import imagenet1k_names, imagenet1k_wnids
from sequencer_jax.models import DataConfig, Sequencer, SequencerArch, abstract_params
from sequencer_jax.weights import ModelRecord, save_model
from sequencer_jax.weights.torch_keys import flax_to_torch
from hub_cache import write_hub_cache

DEMO = SequencerArch(layers=(2, 2), patch_sizes=(4, 2), embed_dims=(32, 64), hidden_sizes=(8, 16))
CLASSES = ('checkerboard', 'diagonal_stripes', 'disc', 'dots', 'horizontal_stripes',
           'vertical_stripes')


def _random_params(arch: SequencerArch, num_classes: int, seed: int):
  rng = np.random.default_rng(seed)
  shapes = abstract_params(Sequencer(arch, num_classes=num_classes))
  return jax.tree.map(lambda s: (0.3 * rng.standard_normal(s.shape)).astype(s.dtype), shapes)


@pytest.fixture
def cache(tmp_path, monkeypatch):
  monkeypatch.setattr(huggingface_hub.constants, 'HF_HUB_CACHE', str(tmp_path / 'hub'))
  monkeypatch.setenv('HF_HUB_OFFLINE', '1')
  return str(tmp_path / 'hub')


def _to_hub_folder(tmp_path, record: ModelRecord, params, name: str) -> str:
  """The command's folder for a model directory holding `params`."""
  src, dst = str(tmp_path / 'model'), str(tmp_path / name)
  save_model(src, record, params)
  assert convert_command.main(['--to-torch', src, dst]) == 0
  assert sorted(os.listdir(dst)) == ['README.md', 'config.json', 'model.safetensors']
  assert not [n for n in os.listdir(tmp_path) if '.tmp-' in n]
  return dst


def _upload(cache: str, folder: str, repo: str) -> None:
  files = {}
  for name in os.listdir(folder):
    with open(os.path.join(folder, name), 'rb') as f:
      files[name] = f.read()
  write_hub_cache(cache, repo, files)


def _assert_timm_gives_our_logits(repo: str, params, arch: SequencerArch, num_classes: int):
  reference = timm.create_model(f'hf-hub:{repo}', pretrained=True).eval()
  x = np.random.RandomState(0).randn(2, 64, 48, 3).astype(np.float32)
  with torch.no_grad():
    expected = reference(torch.from_numpy(x).permute(0, 3, 1, 2)).numpy()
  with jax.default_matmul_precision('highest'):
    got = np.asarray(jax.jit(Sequencer(arch, num_classes=num_classes).apply)(
        {'params': params}, x))
  assert expected.shape == (2, num_classes) and np.abs(expected).max() > 0.1
  assert np.abs(got - expected).max() <= 1e-4
  return reference


@pytest.mark.slow  # End to end: a command, or a benchmark.
def test_a_registered_model_loads_in_timm_and_back(tmp_path, cache, capsys):
  params = _random_params(sequencer_jax.model_info('sequencer2d_s').arch, 1000, seed=1)
  record = ModelRecord.registered('sequencer2d_s', 1000, converted_from='/released/s.pth')
  folder = _to_hub_folder(tmp_path, record, params, 'sequencer2d_s-test')
  assert 'wrote the timm Hub folder' in capsys.readouterr().out
  with open(os.path.join(folder, 'config.json')) as f:
    config = json.load(f)
  assert config['architecture'] == 'sequencer2d_s' and 'model_args' not in config
  assert config['label_names'] == list(imagenet1k_wnids())
  assert config['label_descriptions'][imagenet1k_wnids()[0]] == 'tench, Tinca tinca'
  assert config['pretrained_cfg']['crop_pct'] == 0.875
  # The weights are timm's state_dict, key for key.
  state_dict = load_file(os.path.join(folder, 'model.safetensors'))
  assert sorted(state_dict) == sorted(timm.create_model('sequencer2d_s').state_dict())
  _upload(cache, folder, 'test/sequencer2d_s-test')
  reference = _assert_timm_gives_our_logits('test/sequencer2d_s-test', params, record.arch, 1000)
  assert reference.pretrained_cfg['label_names'][0] == imagenet1k_wnids()[0]
  back = sequencer_jax.load_pretrained('hf-hub:test/sequencer2d_s-test')
  assert back.record.name == 'sequencer2d_s' and back.record.class_names == imagenet1k_names()
  assert back.record.data_config == record.data_config
  jax.tree.map(np.testing.assert_array_equal, back.variables['params'], params)
  with open(os.path.join(folder, 'README.md')) as f:
    card = f.read()
  assert card.startswith('---\ntags:\n- image-classification\n- timm\n')
  for line in ("- **Architecture:** sequencer2d_s (timm's own)", '- **Parameters (M):** 27.65',
               '- **Classes:** 1000 (ImageNet-1k)', '- **Image size:** 224 x 224',
               '  - converted_from: /released/s.pth',
               "timm.create_model('hf-hub:<owner>/sequencer2d_s-test', pretrained=True)"):
    assert line in card
  assert '## Evaluation' not in card  # The source records none.


def test_a_custom_architecture_loads_in_timm_and_back(tmp_path, cache):
  """The demo's architecture, its class names, data config and a run's provenance."""
  params = _random_params(DEMO, len(CLASSES), seed=2)
  provenance = {'exported_from': '/runs/demo', 'step': 1200, 'checkpoint': 'best',
                'weights': 'ema', 'validation_top1': 0.9725}
  record = ModelRecord(DEMO, len(CLASSES), CLASSES, DataConfig(input_size=32, crop_pct=1.0),
                       provenance)
  folder = _to_hub_folder(tmp_path, record, params, 'demo')
  with open(os.path.join(folder, 'config.json')) as f:
    config = json.load(f)
  assert config['architecture'] == 'sequencer2d_s' and config['num_classes'] == 6
  assert config['model_args'] == {'layers': [2, 2], 'patch_sizes': [4, 2],
                                  'embed_dims': [32, 64], 'hidden_sizes': [8, 16],
                                  'mlp_ratios': [3.0, 3.0]}
  assert config['label_names'] == list(CLASSES) and 'label_descriptions' not in config
  _upload(cache, folder, 'test/demo')
  reference = _assert_timm_gives_our_logits('test/demo', params, DEMO, len(CLASSES))
  assert reference.pretrained_cfg['input_size'] == [3, 32, 32]
  back = sequencer_jax.load_pretrained('hf-hub:test/demo')
  assert back.record.arch == DEMO and back.record.name is None
  assert back.record.class_names == CLASSES and back.record.data_config == record.data_config
  jax.tree.map(np.testing.assert_array_equal, back.variables['params'], params)
  with open(os.path.join(folder, 'README.md')) as f:
    card = f.read()
  for line in ('- **Architecture:** sequencer2d_s with layers=[2, 2], patch_sizes=[4, 2], '
               'embed_dims=[32, 64], hidden_sizes=[8, 16], mlp_ratios=[3.0, 3.0]',
               '- **Classes:** 6 (checkerboard, diagonal_stripes, disc, dots, '
               'horizontal_stripes, ...)', '  - exported_from: /runs/demo', '  - step: 1200',
               "- top-1 on the training run's validation set, at this checkpoint: 97.25%"):
    assert line in card


def test_a_timm_layout_file_of_a_custom_architecture_is_a_model_source(tmp_path):
  params = _random_params(DEMO, 6, seed=3)
  path = str(tmp_path / 'demo.safetensors')
  from safetensors.numpy import save_file
  save_file(flax_to_torch(params, 'timm'), path)
  model, variables, record = sequencer_jax.load_pretrained(path)
  assert record.arch == DEMO and record.num_classes == 6 and record.class_names is None
  jax.tree.map(np.testing.assert_array_equal, variables['params'], params)


@pytest.mark.parametrize('arch, what', [
    (SequencerArch((1,), (4,), (8,), (2,), cell='gru'), 'GRU cells'),
    (SequencerArch((1,), (4,), (8,), (4,), with_fc=False, vanilla=True),
     'a vanilla (1D) Sequencer')])
def test_architectures_timm_cannot_build_are_refused_writing_nothing(tmp_path, capsys, arch,
                                                                      what):
  src = str(tmp_path / 'model')
  save_model(src, ModelRecord(arch, 3), _random_params(arch, 3, seed=4))
  before = sorted(os.listdir(tmp_path))
  assert convert_command.main(['--to-torch', src, str(tmp_path / 'hub')]) == 1
  err = capsys.readouterr().err.strip()
  assert err.count('\n') == 0 and what in err
  assert "original repository's layout instead: --to-torch SRC DST.safetensors --layout " \
         "original" in err
  assert sorted(os.listdir(tmp_path)) == before


def test_an_existing_folder_and_a_layout_for_a_folder_are_refused(tmp_path, capsys):
  src = str(tmp_path / 'model')
  save_model(src, ModelRecord(DEMO, 6), _random_params(DEMO, 6, seed=5))
  (tmp_path / 'taken').mkdir()
  (tmp_path / 'taken' / 'mine.txt').write_text('keep')
  assert convert_command.main(['--to-torch', src, str(tmp_path / 'taken')]) == 1
  assert 'already exists; refusing to overwrite it' in capsys.readouterr().err
  assert os.listdir(tmp_path / 'taken') == ['mine.txt']
  with pytest.raises(SystemExit):
    convert_command.main(['--to-torch', src, str(tmp_path / 'hub'), '--layout', 'original'])
  assert "a timm Hub folder holds timm's layout" in capsys.readouterr().err
  assert not (tmp_path / 'hub').exists()
