"""Every recurrence implementation equals the reference 'per_direction' one, forward and backward.

Same parameters for all (random values of `init`'s shapes), CPU, fp32, highest matmul precision.
Tolerance: max |diff| <= 1e-5 * max(1, max |reference|) for outputs and for every gradient.
"""

from __future__ import annotations

from unittest import mock

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import sequencer_jax
from sequencer_jax.models.recurrent import RNNWeights
from sequencer_jax.models.rnn_impls import (FUSED_IMPLS, RNN_IMPLS, BidirectionalRNN,
                                            default_rnn_impl)
from sequencer_jax.models.sequencer import RNN1D, RNN2D, SequencerArch
from random_params import random_variables

FAST_IMPLS = [impl for impl in RNN_IMPLS if impl != 'per_direction']


def _normal(shape):
  """N(0, 1) inputs from NumPy (an eager `jax.random.normal` compiles a kernel per shape)."""
  return np.random.default_rng(1).standard_normal(shape).astype(np.float32)


def _close(got, want, what):
  for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
    w = np.asarray(w, np.float32)
    np.testing.assert_allclose(np.asarray(g, np.float32), w, rtol=0,
                               atol=1e-5 * max(1.0, np.abs(w).max()), err_msg=what)


def _loss_grads(module, variables, x):
  """The output and the gradients of a loss with a non-uniform cotangent."""
  def loss(v, x):
    y = module.apply(v, x)
    return jnp.sum(y * jnp.cos(jnp.arange(y.size).reshape(y.shape))), y
  (_, y), grads = jax.value_and_grad(loss, argnums=(0, 1), has_aux=True)(variables, x)
  return y, grads


def _each_value_and_grads(modules, variables, x):
  """`_loss_grads` of each module, in one compilation."""
  return jax.jit(lambda v, x: {name: _loss_grads(m, v, x) for name, m in modules.items()})(
      variables, x)


MIXERS = {
    'lstm-cat-square': (dict(cell='lstm', union='cat'), (2, 6, 6, 8)),
    'lstm-cat-nonsquare': (dict(cell='lstm', union='cat'), (2, 5, 7, 8)),
    'lstm-add': (dict(cell='lstm', union='add'), (2, 6, 6, 8)),
    'lstm-vertical': (dict(cell='lstm', union='vertical'), (2, 6, 4, 8)),
    'lstm-horizontal': (dict(cell='lstm', union='horizontal'), (2, 6, 4, 8)),
    'lstm-unidirectional': (dict(cell='lstm', bidirectional=False), (2, 6, 6, 8)),
    'gru-cat': (dict(cell='gru', union='cat'), (2, 6, 6, 8)),
    'rnn-cat': (dict(cell='rnn', union='cat'), (2, 6, 6, 8)),
}


@pytest.mark.parametrize('case', sorted(MIXERS))
def test_token_mixer_implementations_agree(case):
  kwargs, shape = MIXERS[case]
  unroll = 3 if 'square' in case else 1  # Partial unrolling, with a remainder (T = 5, 6, 7).
  x = _normal(shape)
  modules = {impl: RNN2D(4, rnn_impl=impl, rnn_unroll=unroll, **kwargs) for impl in FAST_IMPLS
             if impl != 'fused_vjp' or kwargs['cell'] == 'lstm'}
  modules['per_direction'] = RNN2D(4, rnn_impl='per_direction', **kwargs)
  variables = random_variables(modules['per_direction'], x)
  got = _each_value_and_grads(modules, variables, x)
  want_y, want_g = got.pop('per_direction')
  for impl, (got_y, got_g) in got.items():
    _close(got_y, want_y, f'{impl} output')
    _close(got_g, want_g, f'{impl} gradients')


def test_vanilla_mixer_implementations_agree():
  x = _normal((2, 3, 4, 8))
  modules = {impl: RNN1D(4, rnn_impl=impl) for impl in RNN_IMPLS}
  got = _each_value_and_grads(modules, random_variables(modules['per_direction'], x), x)
  want = got.pop('per_direction')
  for impl in FAST_IMPLS:
    _close(got[impl], want, impl)


@pytest.mark.parametrize('bidirectional', [True, False])
def test_pure_implementations_take_the_stacked_parameters(bidirectional):
  """The `RNNImpl` seam: each pure implementation, given the stacked [forward, reverse] tensors
  as arrays, equals the reference `BidirectionalRNN` along a middle axis."""
  x = _normal((2, 5, 3, 8))
  reference = BidirectionalRNN(8, 4, bidirectional=bidirectional, impl='per_direction')
  variables = random_variables(reference, x, 1)
  directions = [variables['params'][d] for d in (['forward', 'reverse'][:1 + bidirectional])]
  weights = RNNWeights(*(np.stack([d[f] for d in directions]) for f in RNNWeights._fields))

  @jax.jit  # One compilation for all, rather than one per eager op.
  def outputs(variables, weights, x):
    return reference.apply(variables, x, 1), {
        name: impl(x, 1, weights, cell='lstm', dtype=jnp.float32, unroll=2)
        for name, impl in FUSED_IMPLS.items()}

  want, got = outputs(variables, weights, x)
  for name in FUSED_IMPLS:
    _close(got[name], want, name)


@pytest.mark.slow  # The quick tier checks each implementation on every token mixer above.
def test_whole_model_gradients_agree_across_implementations():
  arch = SequencerArch(layers=(1, 1), patch_sizes=(4, 2), embed_dims=(8, 16), hidden_sizes=(2, 4))
  x = _normal((2, 24, 24, 3))
  modules = {impl: sequencer_jax.Sequencer(arch, num_classes=5, rnn_impl=impl)
             for impl in RNN_IMPLS}
  variables = random_variables(modules['per_direction'], x)  # A non-zero head too.
  got = _each_value_and_grads(modules, variables, x)
  want = got.pop('per_direction')
  for impl in FAST_IMPLS:
    _close(got[impl], want, impl)


def test_custom_vjp_in_bf16_stays_close_to_autodiff():
  """bf16 compute: the hand-written backward passes against autodiff of the same forward pass."""
  x = _normal((2, 6, 6, 8))
  impls = ('fused', 'fused_vjp', 'pallas')
  modules = {impl: RNN2D(4, dtype=jnp.bfloat16, rnn_impl=impl) for impl in impls}
  outputs = _each_value_and_grads(modules, random_variables(modules['fused'], x), x)
  _, want = outputs.pop('fused')
  for impl, (_, got) in outputs.items():
    for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
      g, w = np.asarray(g, np.float32), np.asarray(w, np.float32)
      assert np.abs(g - w).max() <= 2e-2 * max(1.0, np.abs(w).max()), impl


def test_bad_implementation_choices_are_clear_errors():
  x = jnp.ones((1, 4, 4, 8))
  init = lambda module: jax.eval_shape(module.init, jax.random.key(0), x)  # Traced, not compiled.
  with pytest.raises(ValueError, match="unknown rnn_impl 'cudnn'"):
    init(RNN2D(4, rnn_impl='cudnn'))
  with pytest.raises(ValueError, match="'fused_vjp' implements the LSTM only, not 'gru'"):
    init(RNN2D(4, cell='gru', rnn_impl='fused_vjp'))
  assert default_rnn_impl('lstm') == 'per_direction'  # This CPU.
  with mock.patch('jax.default_backend', return_value='gpu'):
    assert default_rnn_impl('lstm') == 'fused_vjp'
    assert default_rnn_impl('gru') == 'fused' and default_rnn_impl('rnn') == 'fused'
