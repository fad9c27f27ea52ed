"""The device mesh and shardings for data-parallel (optionally fully sharded) training.

big_vision's jit design with today's APIs: one 'data' mesh axis over every device of every
process; batches are sharded over it, parameters replicated or, with `fsdp`, each large array
split along one dimension. Nothing here uses pmap or a leading device axis.
"""

from __future__ import annotations

import functools
import math
from typing import Any, Callable

import jax
import numpy as np
from jax.sharding import AbstractMesh, AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

DATA = 'data'
FSDP_MIN_SIZE = 2**14  # Arrays with fewer elements stay replicated under fsdp.


def make_mesh(num_devices: int | None = None) -> Mesh:
  """A 1-D mesh named 'data' over all devices, or the first `num_devices` (single process)."""
  devices = jax.devices()
  if num_devices is not None:
    if not 1 <= num_devices <= len(devices):
      raise ValueError(f'num_devices must be in [1, {len(devices)}], got {num_devices}')
    devices = devices[:num_devices]
  return jax.make_mesh((len(devices),), (DATA,), (AxisType.Auto,), devices=devices)


def on_mesh(function: Callable[..., Any], mesh: Mesh | AbstractMesh) -> Callable[..., Any]:
  """`function` traced with `mesh` as the context mesh, for a step to jit: what the model's own
  `jax.shard_map`s (rnn_impl 'pallas''s kernels, which XLA cannot partition) run over."""
  @functools.wraps(function)
  def traced_on_mesh(*args: Any, **kwargs: Any) -> Any:
    with jax.sharding.use_abstract_mesh(mesh.abstract_mesh):
      return function(*args, **kwargs)

  return traced_on_mesh


def data_sharding(mesh: Mesh) -> NamedSharding:
  """Leading (batch) dimension split over 'data', the rest whole."""
  return NamedSharding(mesh, P(DATA))


def replicated(mesh: Mesh) -> NamedSharding:
  """The whole array on every device."""
  return NamedSharding(mesh, P())


def fsdp_spec(shape: tuple[int, ...], num_shards: int, min_size: int = FSDP_MIN_SIZE) -> P:
  """'data' on the largest dimension divisible by `num_shards`; P() for small or indivisible."""
  if math.prod(shape) < min_size:
    return P()
  divisible = [(size, axis) for axis, size in enumerate(shape) if size % num_shards == 0]
  if not divisible:
    return P()
  _, axis = max(divisible)
  return P(*([None] * axis), DATA)


def param_shardings(abstract_tree: Any, mesh: Mesh, fsdp: bool,
                    min_size: int = FSDP_MIN_SIZE) -> Any:
  """A NamedSharding per leaf (arrays or shape structs): replicated, or `fsdp_spec` with fsdp.

  The rule depends on the shape only, so optimizer moments get their parameter's sharding.
  """
  def sharding(leaf: Any) -> NamedSharding:
    if not fsdp:
      return replicated(mesh)
    return NamedSharding(mesh, fsdp_spec(tuple(leaf.shape), mesh.shape[DATA], min_size))

  return jax.tree.map(sharding, abstract_tree)


def global_batch(local_batch: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
  """This process's slice of the batch, as global arrays sharded over 'data'."""
  sharding = data_sharding(mesh)
  return {k: jax.make_array_from_process_local_data(sharding, v) for k, v in local_batch.items()}
