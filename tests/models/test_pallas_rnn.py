"""rnn_impl 'pallas': its kernels equal the reference recurrence, and lower for TPU and GPU.

Numbers: the kernels in interpret mode on the CPU against 'per_direction', fp32 at the highest
matmul precision, with the tolerance of test_rnn_impls.py: max |diff| <= 1e-5 * max(1, max |ref|)
for the output and every gradient, on one device and in a shard_map over 8 simulated devices
(`pallas_sharding_worker.py`, in its own process). Lowering: `jax.export` for 'tpu' and 'cuda' of
the forward and backward passes, without a device (nothing is compiled).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pallas_sharding_worker as sharding_worker
import pytest

from sequencer_jax.models.pallas_rnn import _block_rows, pallas_rnn
from sequencer_jax.models.recurrent import GATES, RNNWeights
from sequencer_jax.models.rnn_impls import BidirectionalRNN
from random_params import random_variables

# Sizes that fit no tile: rows (the other axes of x) 5, 7 and 130 (two blocks of 128, padded),
# odd sequence lengths, hidden 3 and 6 (padded to 16).
CASES = {
    'lstm-bidirectional': (dict(cell='lstm', hidden_size=3), (5, 7, 4), 1),
    'lstm-unidirectional-two-blocks': (dict(cell='lstm', hidden_size=6, bidirectional=False),
                                       (10, 13, 3, 4), 2),
    'gru-bidirectional': (dict(cell='gru', hidden_size=3), (7, 5, 4), 0),
    'gru-unidirectional': (dict(cell='gru', hidden_size=6, bidirectional=False), (5, 7, 4), 1),
    'rnn-bidirectional': (dict(cell='rnn', hidden_size=6), (5, 7, 4), 1),
}
TRITON = '__gpu$xla.gpu.triton'
CUSTOM_CALLS = {'tpu': 'tpu_custom_call', 'cuda': TRITON}


def _close(got, want, what):
  for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
    w = np.asarray(w, np.float32)
    np.testing.assert_allclose(np.asarray(g, np.float32), w, rtol=0,
                               atol=1e-5 * max(1.0, np.abs(w).max()), err_msg=what)


@pytest.mark.parametrize('case', sorted(CASES))
def test_kernels_equal_the_reference_forward_and_backward(case):
  kwargs, shape, axis = CASES[case]
  x = np.random.default_rng(1).standard_normal(shape).astype(np.float32)
  modules = {impl: BidirectionalRNN(shape[-1], impl=impl, **kwargs)
             for impl in ('per_direction', 'pallas')}
  variables = random_variables(modules['per_direction'], x, axis)

  # Both in one compilation: [output, *gradients] of each.
  got = jax.jit(lambda v, x: {impl: sharding_worker.outputs(m, axis)(v, x)
                              for impl, m in modules.items()})(variables, x)
  assert got['pallas'][0].shape == got['per_direction'][0].shape
  _close(got['pallas'][0], got['per_direction'][0], 'output')
  _close(got['pallas'][1:], got['per_direction'][1:], 'gradients')


@pytest.mark.slow  # End to end (a command, or a process of its own).
def test_kernels_sharded_over_eight_devices_equal_the_reference(tmp_path):
  """Each device runs the kernels on its own rows, padded to its blocks: a batch split over
  'data', and 18 rows of a replicated batch padded to 24 to split over 8."""
  env = {**os.environ, 'JAX_PLATFORMS': 'cpu',
         'XLA_FLAGS': f'--xla_force_host_platform_device_count={sharding_worker.NUM_DEVICES} '
                      '--xla_backend_optimization_level=0'}
  out = tmp_path / 'out.npz'
  done = subprocess.run([sys.executable, sharding_worker.__file__, str(out)], env=env,
                        capture_output=True, text=True, timeout=300)
  assert done.returncode == 0, (done.stdout + done.stderr)[-5000:]
  saved = np.load(out)
  for case in sharding_worker.CASES:
    assert saved[f'{case}/shard_map'], case
    count = len([k for k in saved if k.startswith(f'{case}/pallas/')])
    assert count == len([k for k in saved if k.startswith(f'{case}/per_direction/')]) > 2
    for i in range(count):
      got = saved[f'{case}/pallas/{i}']
      _close(got, saved[f'{case}/per_direction/{i}'], f'{case} output/gradient {i}')
      _close(got, saved[f'{case}/pallas_one_device/{i}'], f'{case} one device, {i}')


def test_block_rows_are_powers_of_two_that_fit_on_chip():
  assert _block_rows(5, 7, 16, 'lstm') == 16  # At least Triton's smallest dot.
  assert _block_rows(100, 8, 64, 'lstm') == 128
  assert _block_rows(100, 14, 64, 'lstm') == 64
  assert _block_rows(8192, 32, 64, 'lstm') == 32  # Sequencer2D's stage 1: T*rows*h capped.
  assert _block_rows(8192, 512, 128, 'lstm') == 16


@pytest.mark.parametrize('cell', sorted(GATES))
def test_the_kernels_lower_for_tpu_and_gpu(cell):
  """Forward and backward each lower to one custom call per platform: Mosaic on TPU, Triton on
  GPU (Triton IR has no compatibility guarantee, so `jax.export` must be told to take it)."""
  gates, k, hidden = GATES[cell], 2, 6
  x = jax.ShapeDtypeStruct((5, 7, 4), jnp.float32)
  weights = RNNWeights(*(jax.ShapeDtypeStruct(s, jnp.float32) for s in [
      (k, 4, gates * hidden), (k, hidden, gates * hidden), (k, gates * hidden),
      (k, gates * hidden)]))

  def train(weights, x):
    loss = lambda w, x: sharding_worker.loss(
        pallas_rnn(x, 1, w, cell=cell, dtype=jnp.bfloat16, unroll=1))
    return jax.value_and_grad(loss, argnums=(0, 1))(weights, x)

  checks = [jax.export.DisabledSafetyCheck.custom_call(TRITON)]
  for platform, target in CUSTOM_CALLS.items():
    text = jax.export.export(jax.jit(train), platforms=[platform],
                             disabled_checks=checks)(weights, x).mlir_module()
    calls = re.findall(r'stablehlo\.custom_call @([^\s(]+)', text)
    assert sorted(set(calls)) == [target] and len(calls) == 2, (platform, calls)
    assert 'callback' not in text.lower(), platform
