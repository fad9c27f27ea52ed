"""The train state: created directly in its shardings on the mesh, from scratch or from weights,
or described abstractly (shapes, dtypes, shardings) for a checkpoint to be restored into.

big_vision's design: the state is created by `jax.jit(init, out_shardings=...)` after
`eval_shape`, so nothing is materialised on one device first.
"""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh

from sequencer_jax.sharding import FSDP_MIN_SIZE, param_shardings


@flax.struct.dataclass
class TrainState:
  """Everything a training step reads and replaces."""

  step: jax.Array  # int32 scalar: the number of steps taken.
  params: Any
  opt_state: optax.OptState
  ema_params: Any  # None without EMA.
  rng: jax.Array  # A PRNG key; step k uses fold_in(rng, k).


def _init_params(model: nn.Module, image_size: int, key: jax.Array) -> Any:
  return model.init(key, jnp.zeros((1, image_size, image_size, 3), jnp.float32))['params']


def _new_state(optimizer: optax.GradientTransformation, ema: bool, params: Any,
               rng: jax.Array) -> TrainState:
  return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                    opt_state=optimizer.init(params), ema_params=params if ema else None,
                    rng=rng)


def abstract_train_state(model: nn.Module, optimizer: optax.GradientTransformation, *,
                         image_size: int, mesh: Mesh, fsdp: bool = False,
                         fsdp_min_size: int = FSDP_MIN_SIZE, ema: bool = False) -> TrainState:
  """The state `create_train_state` would make, as `jax.ShapeDtypeStruct`s carrying their
  shardings, computed without allocating anything: the target a checkpoint restores into."""
  init = lambda k, r: _new_state(optimizer, ema, _init_params(model, image_size, k), r)
  key = jax.random.key(0)
  abstract = jax.eval_shape(init, key, key)
  shardings = param_shardings(abstract, mesh, fsdp, fsdp_min_size)
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                      abstract, shardings)


def create_train_state(model: nn.Module, optimizer: optax.GradientTransformation, *,
                       image_size: int, seed: int, mesh: Mesh, fsdp: bool = False,
                       fsdp_min_size: int = FSDP_MIN_SIZE, ema: bool = False,
                       params: Any = None) -> tuple[TrainState, TrainState]:
  """The initial state placed on `mesh`, and its shardings (a TrainState of NamedShardings).

  Args:
    model: the module to train (a Sequencer, or any module taking NHWC images).
    optimizer: any optax transformation.
    image_size: the side of the square images used to trace the initialisation.
    seed: seeds the parameter initialisation and the state's PRNG key.
    mesh: a mesh with a 'data' axis (`sharding.make_mesh`).
    fsdp: shard arrays of at least `fsdp_min_size` elements over 'data' (`sharding.fsdp_spec`);
      otherwise everything is replicated.
    fsdp_min_size: the smallest array fsdp shards.
    ema: keep an exponential moving average of the parameters, starting at the parameters.
    params: parameters to start from (numpy or JAX arrays, e.g. a checkpoint) instead of
      initialising them; they are copied, never aliased, onto the shardings.
  """
  params_key, rng = jax.random.split(jax.random.key(seed))
  new_state = functools.partial(_new_state, optimizer, ema)
  if params is None:
    init = lambda k, r: new_state(_init_params(model, image_size, k), r)
    shardings = param_shardings(jax.eval_shape(init, params_key, rng), mesh, fsdp, fsdp_min_size)
    return jax.jit(init, out_shardings=shardings)(params_key, rng), shardings
  abstract = jax.eval_shape(new_state, params, rng)
  shardings = param_shardings(abstract, mesh, fsdp, fsdp_min_size)
  params = jax.device_put(params, shardings.params, may_alias=False)
  return jax.jit(new_state, out_shardings=shardings, donate_argnums=(0,))(params, rng), shardings
