"""Numerical parity with timm's Sequencer2D (random weights, CPU, fp32, highest matmul precision).

Tolerances: logits max |diff| <= 1e-4 (spec 7.11); intermediate stage outputs, whose magnitudes
grow with depth, max |diff| <= 1e-4 * max(1, max |activation|).
"""

from __future__ import annotations

import functools

import jax
import numpy as np
import pytest
import timm
import torch

import sequencer_jax
from sequencer_jax.models.registry import name_for_arch
from sequencer_jax.weights import torch_keys as convert
from torch_reference import randomize_, state_dict_numpy

SIZES = [(224, 224), (392, 392), (250, 200)]  # 250x200: not multiples of 14, and not square.
QUICK = {('sequencer2d_s', 224), ('sequencer2d_s', 250)}
# Every model at every size; the quick tier takes S at 224 and at 250x200 (M and L are deeper,
# not different; 392 is another square size).
CASES = [pytest.param(name, size, id=f'{name}-{size[0]}x{size[1]}',
                      marks=() if (name, size[0]) in QUICK else pytest.mark.slow)
         for name in ('sequencer2d_s', 'sequencer2d_m', 'sequencer2d_l') for size in SIZES]


@functools.cache
def _timm_model(name: str) -> torch.nn.Module:
  return randomize_(timm.create_model(name, pretrained=False), seed=sum(map(ord, name)))


@functools.cache
def _flax(name: str):
  model = sequencer_jax.create_model(name)
  params = convert.torch_to_flax(state_dict_numpy(_timm_model(name)), model)
  apply = jax.jit(functools.partial(model.apply, return_intermediates=True))
  return model, params, apply


def _timm_forward(tm: torch.nn.Module, x: np.ndarray):
  feats = {}
  hooks = [tm.stem.register_forward_hook(lambda m, i, o: feats.__setitem__('stem', o))]
  for i, stage in enumerate(tm.stages):
    hooks.append(stage.register_forward_hook(
        lambda m, inp, o, i=i: feats.__setitem__(f'stage{i}', o)))
  with torch.no_grad():
    logits = tm(torch.from_numpy(x).permute(0, 3, 1, 2))
  for h in hooks:
    h.remove()
  return logits.numpy(), {k: v.numpy() for k, v in feats.items()}


@pytest.mark.parametrize('name, size', CASES)
def test_logits_and_stages_match_timm(name, size):
  batch = 1 if size[0] > 300 else 2
  x = np.random.RandomState(size[0]).randn(batch, *size, 3).astype(np.float32)
  ref_logits, ref_feats = _timm_forward(_timm_model(name), x)
  _, params, apply = _flax(name)
  logits, feats = apply({'params': params}, x)
  assert np.abs(ref_logits).max() > 0.1  # The comparison is not between two near-zero tensors.
  np.testing.assert_allclose(np.asarray(logits), ref_logits, rtol=0, atol=1e-4)
  assert set(ref_feats) == {'stem', 'stage0', 'stage1', 'stage2', 'stage3'}
  for key, ref in ref_feats.items():
    got = np.asarray(feats[key])
    assert got.shape == ref.shape, key
    np.testing.assert_allclose(got, ref, rtol=0, atol=1e-4 * max(1.0, np.abs(ref).max()),
                               err_msg=key)


def test_original_layout_converts_to_the_same_parameters():
  sd = state_dict_numpy(_timm_model('sequencer2d_s'))
  original = convert.timm_to_original(sd, layers=(4, 3, 8, 3))
  assert 'blocks.0.4.down.weight' in original and 'blocks.2.8.down.bias' in original
  assert 'head.weight' in original and not any(k.startswith('stages.') for k in original)
  assert convert.original_to_timm(original) == sd
  model, params, _ = _flax('sequencer2d_s')
  from_original = convert.torch_to_flax(original, model)
  jax.tree.map(np.testing.assert_array_equal, from_original, params)
  assert name_for_arch(convert.infer_arch(convert.to_timm_layout(original))[0]) == 'sequencer2d_s'


def test_round_trip_and_export_loads_into_timm_strictly():
  model, params, apply = _flax('sequencer2d_s')
  exported = convert.flax_to_torch(params)
  jax.tree.map(np.testing.assert_array_equal, convert.torch_to_flax(exported, model), params)
  fresh = timm.create_model('sequencer2d_s', pretrained=False).eval()
  fresh.load_state_dict({k: torch.from_numpy(v) for k, v in exported.items()}, strict=True)
  x = np.random.RandomState(7).randn(2, 224, 224, 3).astype(np.float32)
  with torch.no_grad():
    ref = fresh(torch.from_numpy(x).permute(0, 3, 1, 2)).numpy()
  np.testing.assert_allclose(np.asarray(apply({'params': params}, x)[0]), ref, rtol=0, atol=1e-4)


@pytest.mark.parametrize('impl', ['fused', 'fused_vjp'])
@pytest.mark.slow  # Quick: each equals the reference (test_rnn_impls), which equals timm.
def test_fast_implementations_match_timm(impl):
  """The fused recurrences, fully unrolled, on a non-square input."""
  x = np.random.RandomState(5).randn(2, 250, 200, 3).astype(np.float32)
  ref_logits, _ = _timm_forward(_timm_model('sequencer2d_s'), x)
  _, params, _ = _flax('sequencer2d_s')
  model = sequencer_jax.create_model('sequencer2d_s', rnn_impl=impl, rnn_unroll=64)
  np.testing.assert_allclose(np.asarray(jax.jit(model.apply)({'params': params}, x)),
                             ref_logits, rtol=0, atol=1e-4)
