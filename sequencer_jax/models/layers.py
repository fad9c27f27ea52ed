"""Small building blocks of the Sequencer models: compute dtypes, initialisers, DropPath, Mlp."""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

Dtype = Any
Initializer = jax.nn.initializers.Initializer

# The compute dtypes a config or a command line may name.
DTYPES: dict[str, Dtype] = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16}


def dtype_named(name: str) -> Dtype:
  """The dtype called `name` in DTYPES; another name raises a ValueError listing them."""
  if name not in DTYPES:
    raise ValueError(f'unknown dtype {name!r}; expected one of {", ".join(DTYPES)}')
  return DTYPES[name]

# timm's lecun_normal_ divides the std by this constant (the std of a unit normal truncated to
# [-2, 2]) but then truncates at the *absolute* bounds +-2, which for these fan-ins is no truncation.
_TRUNC_STD_CORRECTION = 0.87962566103423978


def timm_lecun_normal() -> Initializer:
  """timm's `lecun_normal_` for convs: N(0, (1/fan_in)/0.8796^2) truncated to [-2, 2] absolute."""

  def init(key: jax.Array, shape: tuple[int, ...], dtype: Dtype = jnp.float32) -> jax.Array:
    fan_in = 1
    for d in shape[:-1]:  # Flax conv kernel: (kh, kw, in, out).
      fan_in *= d
    return trunc_normal_abs((1.0 / fan_in) ** 0.5 / _TRUNC_STD_CORRECTION)(key, shape, dtype)

  return init


def uniform_symmetric(bound: float) -> Initializer:
  """U(-bound, bound), PyTorch's default for RNN parameters with bound = 1/sqrt(hidden)."""

  def init(key: jax.Array, shape: tuple[int, ...], dtype: Dtype = jnp.float32) -> jax.Array:
    return jax.random.uniform(key, shape, dtype, -bound, bound)

  return init


def trunc_normal_abs(std: float) -> Initializer:
  """timm's `trunc_normal_(std)`: N(0, std^2) truncated at the absolute bounds [-2, 2]."""

  def init(key: jax.Array, shape: tuple[int, ...], dtype: Dtype = jnp.float32) -> jax.Array:
    return jax.random.truncated_normal(key, -2.0 / std, 2.0 / std, shape, dtype) * std

  return init


xavier_uniform = jax.nn.initializers.xavier_uniform
zeros = jax.nn.initializers.zeros


def layer_norm(name: str, dtype: Dtype, param_dtype: Dtype) -> nn.LayerNorm:
  """LayerNorm over channels with the reference's eps 1e-6 and the two-pass variance."""
  return nn.LayerNorm(
      epsilon=1e-6, use_fast_variance=False, dtype=dtype, param_dtype=param_dtype, name=name)


class DropPath(nn.Module):
  """Stochastic depth: zero a residual branch per sample with probability `rate`, scale the rest."""

  rate: float

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    if not train or self.rate == 0.0:
      return x
    keep = 1.0 - self.rate
    mask_shape = (x.shape[0],) + (1,) * (x.ndim - 1)
    mask = jax.random.bernoulli(self.make_rng('dropout'), keep, mask_shape)
    return jnp.where(mask, x / keep, jnp.zeros_like(x))


class Mlp(nn.Module):
  """timm `Mlp`: fc1 -> exact GELU -> dropout -> fc2 -> dropout."""

  hidden_features: int
  drop_rate: float = 0.0
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    dense = lambda features, name: nn.Dense(
        features, dtype=self.dtype, param_dtype=self.param_dtype, name=name,
        kernel_init=xavier_uniform(), bias_init=jax.nn.initializers.normal(1e-6))
    out_features = x.shape[-1]
    x = dense(self.hidden_features, 'fc1')(x)
    x = nn.gelu(x, approximate=False)
    x = nn.Dropout(self.drop_rate, deterministic=not train)(x)
    x = dense(out_features, 'fc2')(x)
    return nn.Dropout(self.drop_rate, deterministic=not train)(x)
