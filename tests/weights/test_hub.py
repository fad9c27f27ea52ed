"""`hf-hub:` sources, from a Hugging Face cache directory laid out by the test (never the network):
timm's logits within 1e-4 (fp32, CPU), config.json's pretrained_cfg and labels, and refusals."""

from __future__ import annotations

import json
import os

import huggingface_hub
import jax
import numpy as np
import pytest
import timm
import torch
from safetensors.numpy import save_file

import sequencer_jax
from sequencer_jax.labels import imagenet1k_names, imagenet1k_wnids
from sequencer_jax.pretrained import SourceError
from hub_cache import COMMIT, write_hub_cache
from torch_reference import randomize_, state_dict_numpy

REPO = 'timm/sequencer2d_s.in1k'
@pytest.fixture(scope='module')
def timm_model():
  return randomize_(timm.create_model('sequencer2d_s'), seed=5).eval()


@pytest.fixture
def cache(tmp_path, monkeypatch):
  monkeypatch.setattr(huggingface_hub.constants, 'HF_HUB_CACHE', str(tmp_path / 'hub'))
  monkeypatch.setenv('HF_HUB_OFFLINE', '1')
  return str(tmp_path / 'hub')


@pytest.fixture(scope='module')
def weights(timm_model, tmp_path_factory) -> bytes:
  """timm_model's state_dict as the bytes of a model.safetensors, once for the module."""
  path = str(tmp_path_factory.mktemp('weights') / 'w.safetensors')
  save_file(state_dict_numpy(timm_model), path)
  with open(path, 'rb') as f:
    return f.read()


def test_the_hub_path_gives_timms_logits(timm_model, weights, cache):
  config = {'architecture': 'sequencer2d_s', 'num_classes': 1000, 'pretrained_cfg': {
      'input_size': [3, 224, 224], 'interpolation': 'bicubic', 'crop_pct': 0.875,
      'mean': [0.485, 0.456, 0.406], 'std': [0.229, 0.224, 0.225], 'num_classes': 1000}}
  write_hub_cache(cache, REPO, {'model.safetensors': weights,
                                'config.json': json.dumps(config).encode()})
  model, variables, record = sequencer_jax.load_pretrained(f'hf-hub:{REPO}')
  assert record.name == 'sequencer2d_s' and record.class_names == imagenet1k_names()
  assert record.data_config.to_pretrained_cfg() == {
      k: config['pretrained_cfg'][k] for k in ('input_size', 'crop_pct', 'interpolation', 'mean',
                                               'std')}
  assert record.provenance['converted_from'] == f'hf-hub:{REPO}'
  x = np.random.RandomState(0).randn(2, 64, 64, 3).astype(np.float32)
  with torch.no_grad():
    expected = timm_model(torch.from_numpy(x).permute(0, 3, 1, 2)).numpy()
  with jax.default_matmul_precision('highest'):
    got = np.asarray(jax.jit(model.apply)(variables, x))
  assert np.abs(got - expected).max() <= 1e-4


def test_hub_config_labels_and_data_config_are_used(timm_model, cache, tmp_path):
  """timm's `label_names` (WordNet ids) with `label_descriptions`, and a non-default transform."""
  names = list(imagenet1k_wnids())
  descriptions = {names[0]: 'a tench', names[1]: 'a goldfish'}
  config = {'architecture': 'sequencer2d_s', 'num_classes': 1000, 'label_names': names,
            'label_descriptions': descriptions,
            'pretrained_cfg': {'input_size': [3, 256, 256], 'crop_pct': 1.0,
                               'interpolation': 'bilinear'}}
  weights = state_dict_numpy(timm_model)
  path = str(tmp_path / 'w.pth')
  torch.save({k: torch.from_numpy(v) for k, v in weights.items()}, path)
  with open(path, 'rb') as f:
    write_hub_cache(cache, 'someone/sequencer', {'pytorch_model.bin': f.read(),
                                                 'config.json': json.dumps(config).encode()})
  _, _, record = sequencer_jax.load_pretrained('hf-hub:someone/sequencer')
  assert record.class_names[:3] == ('a tench', 'a goldfish', imagenet1k_names()[2])
  assert (record.data_config.input_size, record.data_config.crop_pct,
          record.data_config.interpolation) == (256, 1.0, 'bilinear')


def test_without_config_json_the_registry_defaults_apply(weights, cache):
  write_hub_cache(cache, REPO, {'model.safetensors': weights})
  _, _, record = sequencer_jax.load_pretrained(f'hf-hub:{REPO}')
  assert record.data_config == sequencer_jax.model_info('sequencer2d_s').data_config
  assert record.class_names == imagenet1k_names()
  # A revision: the cached commit, or one line for another.
  sequencer_jax.load_pretrained(f'hf-hub:{REPO}@{COMMIT}')
  with pytest.raises(SourceError, match='is not in the Hugging Face cache'):
    sequencer_jax.load_pretrained(f'hf-hub:{REPO}@{"f" * 40}')


def test_a_hub_model_that_is_not_cached_names_the_download_command(cache):
  write_hub_cache(cache, 'timm/other', {'README.md': b'no weights here'})
  for source in (f'hf-hub:{REPO}', 'hf-hub:timm/other'):
    with pytest.raises(SourceError, match=r'is not in the Hugging Face cache .* nothing is '
                                          r'downloaded at run time.*snapshot_download'):
      sequencer_jax.load_pretrained(source)
  with pytest.raises(SourceError, match='a hub source is hf-hub:<owner>/<name>'):
    sequencer_jax.load_pretrained('hf-hub:sequencer2d_s')
  assert not os.path.exists(os.path.join(cache, 'models--timm--sequencer2d_s.in1k'))
