"""rnn_impl 'pallas' sharded over 8 devices, for test_pallas_rnn.py, in its own process.

`XLA_FLAGS=--xla_force_host_platform_device_count=8 python tests/pallas_sharding_worker.py OUT.npz`
runs each of `CASES` (the kernels in interpret mode) on a mesh of 8 CPU devices, traced under
`sharding.on_mesh` so that the kernels run in a `shard_map` over each device's rows, and the same
computation on one device with 'pallas' and with 'per_direction'; it saves the output and every
gradient of each ('<case>/pallas/<i>', '<case>/pallas_one_device/<i>', '<case>/per_direction/<i>')
and whether the kernels were in a shard_map ('<case>/shard_map'). It needs its own process
because the device count is fixed when JAX starts.
"""

from __future__ import annotations

import sys
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from random_params import random_variables

from sequencer_jax.models.rnn_impls import BidirectionalRNN
from sequencer_jax.sharding import data_sharding, make_mesh, on_mesh, replicated

NUM_DEVICES = 8
# (the module's settings, x's shape, the sequence axis, whether x's batch is sharded over
# 'data'). Sharded: 80 rows, 10 per device, each padded to a block of 16. Replicated: 6 images
# do not split over 8 devices; their 18 rows are padded to 24 (3 per device).
CASES = {
    'lstm-sharded-batch': (dict(cell='lstm', hidden_size=3), (16, 7, 5, 4), 1, True),
    'gru-indivisible-rows': (dict(cell='gru', hidden_size=6), (6, 5, 3, 4), 2, False),
}


def loss(y: jax.Array) -> jax.Array:
  """A loss with a non-uniform cotangent."""
  return jnp.sum(y * jnp.cos(jnp.arange(y.size).reshape(y.shape)))


def outputs(module: BidirectionalRNN, axis: int) -> Any:
  """(variables, x) -> the module's output and its loss's gradients for variables and x."""
  def run(variables: Any, x: jax.Array) -> Any:
    value = lambda v, x: (lambda y: (loss(y), y))(module.apply(v, x, axis))
    (_, y), grads = jax.value_and_grad(value, argnums=(0, 1), has_aux=True)(variables, x)
    return [y, *jax.tree.leaves(grads)]
  return run


def run_case(kwargs: dict, shape: tuple[int, ...], axis: int, sharded: bool) -> dict[str, Any]:
  x = np.random.default_rng(1).standard_normal(shape).astype(np.float32)
  reference = BidirectionalRNN(shape[-1], impl='per_direction', **kwargs)
  variables = random_variables(reference, x, axis)
  mesh = make_mesh()
  function = on_mesh(outputs(BidirectionalRNN(shape[-1], impl='pallas', **kwargs), axis), mesh)
  x_sharding = data_sharding(mesh) if sharded else replicated(mesh)
  pallas = jax.jit(function, in_shardings=(replicated(mesh), x_sharding))
  one_device = jax.jit(outputs(BidirectionalRNN(shape[-1], impl='pallas', **kwargs), axis))
  return {'shard_map': 'shard_map' in str(pallas.trace(variables, x).jaxpr),
          'pallas': pallas(variables, x), 'pallas_one_device': one_device(variables, x),
          'per_direction': jax.jit(outputs(reference, axis))(variables, x)}


def main(path: str) -> None:
  jax.config.update('jax_default_matmul_precision', 'highest')
  if jax.device_count() != NUM_DEVICES:
    raise SystemExit(f'needs XLA_FLAGS=--xla_force_host_platform_device_count={NUM_DEVICES}, '
                     f'found {jax.device_count()} devices')
  saved = {}
  for name, case in CASES.items():
    out = run_case(*case)
    saved[f'{name}/shard_map'] = np.array(out['shard_map'])
    for impl in ('pallas', 'pallas_one_device', 'per_direction'):
      saved.update({f'{name}/{impl}/{i}': np.asarray(a) for i, a in enumerate(out[impl])})
  np.savez(path, **saved)


if __name__ == '__main__':
  main(sys.argv[1])
