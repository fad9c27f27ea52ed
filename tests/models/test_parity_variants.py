"""Variants that timm lacks, against the PyTorch reference of the original code (tests/torch_reference.py).

The reference's state_dict is in the original repository's key layout, so these tests also cover
that layout's conversion. Tolerance: logits max |diff| <= 1e-4 (CPU, fp32, highest precision).
"""

from __future__ import annotations

import jax
import numpy as np
import pytest
import timm
import torch

import sequencer_jax
from sequencer_jax.models.registry import name_for_arch
from sequencer_jax.weights import torch_keys as convert
from torch_reference import OriginalSequencer, randomize_, state_dict_numpy

# The quick tier takes one of each code path; the slow tier adds the wider and deeper ones.
_WIDER = pytest.mark.slow
VARIANTS = [
    'sequencer2d_s_unidirectional', 'sequencer2d_s_add', pytest.param('sequencer2d_s_h2x',
                                                                      marks=_WIDER),
    'sequencer2d_s_without_fc', 'sequencer2d_vertical', 'sequencer2d_s_horizontal',
    'gru_sequencer2d_s', 'rnn_sequencer2d_s',
    pytest.param('sequencer2d_l_d4_3x', marks=_WIDER), pytest.param('v_sequencer_s', marks=_WIDER),
    'v_sequencer_s_h', 'v_sequencer_s_pe',
]


def _image(name: str) -> np.ndarray:
  size = (1, 224, 224) if name == 'v_sequencer_s_pe' else (2, 56, 42)  # 42: non-square maps.
  return np.random.RandomState(len(name)).randn(*size, 3).astype(np.float32)


def _compare(name: str, ref: torch.nn.Module, x: np.ndarray) -> None:
  model = sequencer_jax.create_model(name)
  params = convert.torch_to_flax(state_dict_numpy(ref), model)
  with torch.no_grad():
    expected = ref(torch.from_numpy(x).permute(0, 3, 1, 2)).numpy()
  got = jax.jit(model.apply)({'params': params}, x)
  assert np.abs(expected).max() > 0.1
  np.testing.assert_allclose(np.asarray(got), expected, rtol=0, atol=1e-4)


@pytest.mark.parametrize('name', VARIANTS)
def test_variant_matches_the_pytorch_reference(name):
  arch = sequencer_jax.model_info(name).arch
  ref = randomize_(OriginalSequencer(arch), seed=len(name))
  sd = state_dict_numpy(ref)
  assert convert.detect_layout(sd) == 'original'
  assert name_for_arch(convert.infer_arch(convert.to_timm_layout(sd))[0]) == name
  _compare(name, ref, _image(name))


def test_reference_agrees_with_timm():
  """The hand-written reference is itself checked against timm where timm has the model."""
  ref = randomize_(OriginalSequencer(sequencer_jax.model_info('sequencer2d_s').arch), seed=3)
  tm = timm.create_model('sequencer2d_s', pretrained=False).eval()
  sd = convert.original_to_timm(state_dict_numpy(ref))
  tm.load_state_dict({k: torch.from_numpy(v) for k, v in sd.items()}, strict=True)
  x = torch.from_numpy(_image('sequencer2d_s')).permute(0, 3, 1, 2)
  with torch.no_grad():
    np.testing.assert_allclose(ref(x).numpy(), tm(x).numpy(), rtol=0, atol=1e-5)
