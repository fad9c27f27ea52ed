"""Model structure: registry, exact parameter counts, initialisation, options, dtypes."""

from __future__ import annotations

import dataclasses
import functools
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import sequencer_jax
from sequencer_jax import create_model
from sequencer_jax.models import SequencerArch, abstract_params
from sequencer_jax.models.recurrent import Recurrence
from sequencer_jax.models.rnn_impls import BidirectionalRNN
from random_params import random_variables

# Spec 1.6: (parameters, tensors) of every original variant, read off the original classes.
EXPECTED_COUNTS = {
    'sequencer2d_s': (27_651_688, 480),
    'sequencer2d_m': (38_307_688, 636),
    'sequencer2d_l': (54_298_216, 948),
    'sequencer2d_s_392': (27_651_688, 480),
    'sequencer2d_m_392': (38_307_688, 636),
    'sequencer2d_l_392': (54_298_216, 948),
    'sequencer2d_s_unidirectional': (20_991_592, 336),
    'sequencer2d_s_add': (26_545_768, 480),
    'sequencer2d_s_h2x': (45_395_560, 480),
    'sequencer2d_s_without_fc': (25_433_704, 444),
    'sequencer2d_vertical': (27_645_544, 300),
    'sequencer2d_s_horizontal': (27_645_544, 300),
    'gru_sequencer2d_s': (24_874_600, 480),
    'rnn_sequencer2d_s': (19_320_424, 480),
    'sequencer2d_l_d4_3x': (96_252_392, 948),
    'v_sequencer_s': (33_016_552, 300),
    'v_sequencer_s_h': (27_645_544, 300),
    'v_sequencer_s_pe': (33_114_856, 301),
}

# Two stages (a downsampling) of one block each: a model's compile time grows with its blocks.
TINY = SequencerArch(layers=(1, 1), patch_sizes=(4, 2), embed_dims=(16, 32), hidden_sizes=(4, 8))


def test_every_registered_model_is_counted():
  assert sorted(sequencer_jax.list_models()) == sorted(EXPECTED_COUNTS)


def test_list_models_takes_timms_wildcard_patterns():
  everything = sequencer_jax.list_models()
  assert sequencer_jax.list_models('') == everything == sequencer_jax.list_models('*')
  assert sequencer_jax.list_models('sequencer2d_?') == [
      'sequencer2d_s', 'sequencer2d_m', 'sequencer2d_l']
  assert sequencer_jax.list_models('*_392') == [
      'sequencer2d_s_392', 'sequencer2d_m_392', 'sequencer2d_l_392']
  assert sequencer_jax.list_models(['v_*', 'gru_*']) == [
      'gru_sequencer2d_s', 'v_sequencer_s', 'v_sequencer_s_h', 'v_sequencer_s_pe']
  assert sequencer_jax.list_models('[gr]*_s') == ['gru_sequencer2d_s', 'rnn_sequencer2d_s']
  assert sequencer_jax.list_models('Sequencer2d_*') == []  # Case-sensitive, as names are.
  assert sequencer_jax.list_models('resnet*') == []


# Tracing a registered model takes seconds; each _392 model equals its 224 one, traced once.
_abstract_params = functools.cache(abstract_params)


# The quick tier counts S and its variants; M, L and the wider and deeper ones are traced in the
# slow tier (the same code, more blocks).
_DEEPER = ('sequencer2d_m', 'sequencer2d_l', 'sequencer2d_s_h2x')


@pytest.mark.parametrize('name', [
    pytest.param(name, marks=pytest.mark.slow if name.startswith(_DEEPER) else ())
    for name in sorted(EXPECTED_COUNTS)])
def test_parameter_counts_match_the_original_code(name):
  leaves = jax.tree.leaves(_abstract_params(sequencer_jax.create_model(name)))
  assert (sum(x.size for x in leaves), len(leaves)) == EXPECTED_COUNTS[name]


def test_unknown_model_name_lists_the_valid_ones():
  with pytest.raises(KeyError, match='unknown model .sequencer2d_xl.*sequencer2d_s, '):
    sequencer_jax.create_model('sequencer2d_xl')


@pytest.mark.parametrize('kwargs, message', [
    (dict(cell='lstm2'), 'unknown cell'),
    (dict(union='mul'), 'unknown union'),
    (dict(with_fc=False), 'without fc the token mixer output'),
    (dict(hidden_sizes=(4,)), 'hidden_sizes has 1 entries'),
])
def test_inconsistent_architectures_are_refused(kwargs, message):
  fields = dict(layers=(2, 1), patch_sizes=(4, 2), embed_dims=(16, 32), hidden_sizes=(2, 8))
  with pytest.raises(ValueError, match=message):
    SequencerArch(**{**fields, **kwargs})


def test_drop_path_schedule_is_linear_over_all_blocks():
  rates = sequencer_jax.model_info('sequencer2d_s').arch.drop_path_rates(0.1)
  assert len(rates) == 18
  np.testing.assert_allclose(rates, [0.1 * k / 17 for k in range(18)], rtol=0, atol=1e-12)
  three_blocks = dataclasses.replace(TINY, layers=(2, 1))
  assert three_blocks.drop_path_rates(0.3) == pytest.approx([0.0, 0.15, 0.3])


def _variables(model, size=(32, 32)):
  """Random variables of `model`'s shapes (a nonzero head too), without compiling its init."""
  return random_variables(model, np.zeros((1, *size, 3), np.float32))


def _normal(shape):
  """N(0, 1) inputs from NumPy (an eager `jax.random.normal` compiles a kernel per shape)."""
  return np.random.default_rng(1).standard_normal(shape).astype(np.float32)


def _jit_apply(model):
  return jax.jit(model.apply, static_argnames=('train', 'return_intermediates'))


def test_initialisation_follows_the_reference():
  """Spec 3: zero head, xavier linears, N(0,1e-6) MLP biases, timm lecun-normal convs, U(+-1/sqrt(h)) RNNs."""
  arch = SequencerArch(layers=(1,), patch_sizes=(7,), embed_dims=(384,), hidden_sizes=(96,))
  model = sequencer_jax.Sequencer(arch, num_classes=10)
  params = jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, 14, 14, 3)))['params']
  block = params['stages_0_blocks_0']
  assert not np.any(params['head']['kernel']) and not np.any(params['head']['bias'])
  np.testing.assert_array_equal(block['norm1']['scale'], 1.0)
  np.testing.assert_array_equal(block['norm1']['bias'], 0.0)
  np.testing.assert_array_equal(block['rnn_tokens']['fc']['bias'], 0.0)
  mlp_bias = np.asarray(block['mlp_channels']['fc1']['bias'])
  assert 0 < np.abs(mlp_bias).max() < 1e-5
  fc1 = np.asarray(block['mlp_channels']['fc1']['kernel'])  # (384, 1152): xavier bound sqrt(6/1536)
  bound = np.sqrt(6 / (384 + 1152))
  assert np.abs(fc1).max() <= bound and np.abs(fc1).max() > 0.99 * bound
  for leaf in jax.tree.leaves(block['rnn_tokens']['rnn_v']):
    leaf = np.asarray(leaf)
    assert np.abs(leaf).max() <= 1 / np.sqrt(96) and np.abs(leaf).max() > 0.95 / np.sqrt(96)
  stem = np.asarray(params['stem']['kernel'])  # fan_in 147: std sqrt(1/147)/0.8796 = 0.0938.
  assert stem.std() == pytest.approx(np.sqrt(1 / 147) / 0.87962566, rel=0.03)
  np.testing.assert_array_equal(params['stem']['bias'], 0.0)


def test_any_input_size_floors_like_pytorch():
  model = sequencer_jax.Sequencer(TINY, num_classes=5)
  variables = _variables(model)
  logits, feats = _jit_apply(model)(variables, jnp.ones((2, 37, 45, 3)),
                                    return_intermediates=True)
  assert logits.shape == (2, 5)
  assert feats['stem'].shape == (2, 9, 11, 16)   # floor(37/4), floor(45/4)
  assert feats['stage1'].shape == (2, 4, 5, 32)  # floor(9/2), floor(11/2)
  assert feats['pre_logits'].shape == (2, 32)
  assert set(feats) == {'stem', 'stage0', 'stage1', 'pre_logits'}


def test_num_classes_zero_returns_pre_logits():
  model = sequencer_jax.Sequencer(TINY, num_classes=0)
  variables = _variables(model)
  assert 'head' not in variables['params']
  assert _jit_apply(model)(variables, jnp.ones((3, 32, 32, 3))).shape == (3, 32)


def test_positional_embedding_needs_its_input_size():
  arch = SequencerArch(layers=(1,), patch_sizes=(4,), embed_dims=(8,), hidden_sizes=(4,),
                       with_fc=False, vanilla=True, pos_embed_size=4)
  model = sequencer_jax.Sequencer(arch, num_classes=3)
  variables = _variables(model, (16, 16))
  assert variables['params']['absolute_pos_embed'].shape == (1, 4, 4, 8)
  with pytest.raises(ValueError, match='fixed 4x4 positional embedding and needs 16x16'):
    model.apply(variables, jnp.ones((1, 20, 20, 3)))


def test_bad_image_shape_is_a_clear_error():
  model = sequencer_jax.Sequencer(TINY)
  with pytest.raises(ValueError, match=r'expected NHWC images .* got \(1, 3, 32, 32\)'):
    model.init(jax.random.key(0), jnp.ones((1, 3, 32, 32)))


def test_train_mode_applies_drop_path_and_eval_mode_is_deterministic():
  model = sequencer_jax.Sequencer(TINY, num_classes=4, drop_path_rate=0.5)
  variables = _variables(model)
  x = _normal((8, 32, 32, 3))
  apply = _jit_apply(model)
  eval_a, eval_b = apply(variables, x), apply(variables, x)
  np.testing.assert_array_equal(eval_a, eval_b)
  train_a = apply(variables, x, train=True, rngs={'dropout': jax.random.key(2)})
  train_b = apply(variables, x, train=True, rngs={'dropout': jax.random.key(3)})
  assert not np.allclose(train_a, eval_a) and not np.allclose(train_a, train_b)
  no_drop = _jit_apply(sequencer_jax.Sequencer(TINY, num_classes=4))
  np.testing.assert_allclose(
      no_drop(variables, x, train=True, rngs={'dropout': jax.random.key(2)}), eval_a,
      rtol=0, atol=1e-6)


def test_bf16_compute_keeps_f32_params_and_f32_recurrence():
  model = sequencer_jax.Sequencer(TINY, num_classes=4, dtype=jnp.bfloat16)
  variables = _variables(model)
  assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(variables))
  x = _normal((2, 32, 32, 3))
  out = _jit_apply(model)(variables, x)
  assert out.dtype == jnp.bfloat16
  ref = _jit_apply(sequencer_jax.Sequencer(TINY, num_classes=4))(variables, x)
  np.testing.assert_allclose(np.asarray(out, np.float32), ref, rtol=0.05, atol=0.05)
  # Inside the recurrence the carry is float32 even with bf16 compute.
  rec = Recurrence(16, 4, dtype=jnp.bfloat16)
  seq = jnp.ones((2, 5, 16), jnp.bfloat16)
  rv = random_variables(rec, seq, 1)
  jaxpr = jax.make_jaxpr(lambda v: rec.apply(v, seq, 1))(rv)
  scans = [e for e in jaxpr.eqns if e.primitive.name == 'scan']
  assert scans and all(v.aval.dtype == jnp.float32 for v in scans[0].outvars[:2])


@pytest.mark.parametrize('cell', ['lstm', 'gru', 'rnn'])
def test_reverse_direction_equals_forward_on_flipped_input(cell):
  rnn = BidirectionalRNN(5, 6, cell)
  x = _normal((3, 7, 5))
  fwd_only = Recurrence(5, 6, cell)

  @jax.jit  # One compilation for all, rather than one per eager op.
  def outputs(p, x):
    return (rnn.apply({'params': p}, x, 1), fwd_only.apply({'params': p['forward']}, x, 1),
            fwd_only.apply({'params': p['reverse']}, x[:, ::-1], 1)[:, ::-1])

  out, fwd, rev_as_fwd = outputs(random_variables(rnn, x, 1)['params'], x)
  np.testing.assert_allclose(out[..., 6:], rev_as_fwd, rtol=0, atol=1e-6)
  np.testing.assert_allclose(out[..., :6], fwd, rtol=0, atol=1e-6)


def _imports_in_a_fresh_process(code: str) -> str:
  root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  result = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True,
                          cwd=root, timeout=300)
  assert result.returncode == 0, result.stderr[-2000:]
  return result.stdout.strip()


_LOADED = ('import sys\n'
           'print(sorted({m.split(".")[0] for m in sys.modules} & '
           '{"tensorflow", "tensorflow_datasets", "torch", "timm"}))\n')


@pytest.mark.slow
def test_the_model_imports_neither_tensorflow_nor_torch():
  assert _imports_in_a_fresh_process('import sequencer_jax.models\n' + _LOADED) == '[]'
  assert _imports_in_a_fresh_process('import sequencer_jax\n' + _LOADED) == '[]'


@pytest.mark.slow
def test_weights_conversion_and_benchmark_import_without_tensorflow():
  code = (
      'import sys\n'
      'class Block:\n'
      '  def find_spec(self, name, path=None, target=None):\n'
      '    if name.split(".")[0] in ("tensorflow", "tensorflow_datasets"):\n'
      '      raise ImportError("blocked: " + name)\n'
      'sys.meta_path.insert(0, Block())\n'
      'import sequencer_jax.weights.torch_files, sequencer_jax.weights.timm_check\n'
      'import sequencer_jax.data.mixup, benchmarks.model_speed, convert_torch_weights\n'
      'print("ok")\n')
  assert _imports_in_a_fresh_process(code) == 'ok'


@pytest.mark.slow  # Two compiled training gradients of a whole model.
def test_remat_gives_the_same_gradients():
  model = create_model('sequencer2d_s', 10, layers=(2,), patch_sizes=(4,), embed_dims=(16,),
                       hidden_sizes=(4,), drop_path_rate=0.1)
  x = jnp.linspace(-1, 1, 2 * 8 * 8 * 3).reshape(2, 8, 8, 3)
  params = random_variables(model, x)

  def grads(m):
    loss = lambda p: m.apply(p, x, train=True, rngs={'dropout': jax.random.key(3)}).sum()
    return jax.jit(jax.grad(loss))(params)

  for a, b in zip(jax.tree.leaves(grads(model)), jax.tree.leaves(grads(model.clone(remat=True)))):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_architecture_overrides_are_checked():
  with pytest.raises(ValueError, match='unknown architecture field.*layerz.*valid: layers'):
    create_model('sequencer2d_s', layerz=(1,))
