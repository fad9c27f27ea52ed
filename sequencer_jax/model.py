"""Sequencer2D (Tatsunami & Taki, NeurIPS 2022) and the vanilla 1D Sequencer in Flax linen, NHWC.

Module names mirror timm's `sequencer.py` (`stem`, `stages_i/blocks_j/rnn_tokens/rnn_v/forward`,
`mlp_channels/fc1`, `head`), so the PyTorch mapping in `convert.py` is a short rename table.
"""

from __future__ import annotations

import dataclasses
import typing
from typing import Any, Literal

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from sequencer_jax.layers import (DropPath, Dtype, Mlp, layer_norm, timm_lecun_normal,
                                  trunc_normal_abs, xavier_uniform, zeros)
from sequencer_jax.recurrent import (GATES, RNN_IMPLS, BidirectionalRNN, CellType,
                                     fused_directions)

UnionMode = Literal['cat', 'add', 'vertical', 'horizontal']
UNIONS: tuple[str, ...] = typing.get_args(UnionMode)


@dataclasses.dataclass(frozen=True)
class SequencerArch:
  """Everything that fixes a Sequencer's parameter shapes (the original code's constructor args)."""

  layers: tuple[int, ...]
  patch_sizes: tuple[int, ...]
  embed_dims: tuple[int, ...]
  hidden_sizes: tuple[int, ...]
  mlp_ratio: float = 3.0
  cell: CellType = 'lstm'
  bidirectional: bool = True
  union: UnionMode = 'cat'
  with_fc: bool = True
  vanilla: bool = False  # 1D Sequencer: one BiRNN over the H*W raster sequence, no fc.
  pos_embed_size: int | None = None  # vanilla `ape`: learnable (1, n, n, C) embedding.

  def __post_init__(self) -> None:
    for field in ('layers', 'patch_sizes', 'embed_dims', 'hidden_sizes'):
      object.__setattr__(self, field, tuple(getattr(self, field)))  # Lists compare unequal.
    n = len(self.layers)
    for field in ('patch_sizes', 'embed_dims', 'hidden_sizes'):
      if len(getattr(self, field)) != n:
        raise ValueError(f'{field} has {len(getattr(self, field))} entries, layers has {n}')
    if self.cell not in GATES:
      raise ValueError(f'unknown cell {self.cell!r}; expected one of {sorted(GATES)}')
    if self.union not in UNIONS:
      raise ValueError(f'unknown union {self.union!r}; expected one of {list(UNIONS)}')
    if self.vanilla and (self.with_fc or self.union != 'cat'):
      raise ValueError('the vanilla (1D) Sequencer has one RNN and no fc: it needs '
                       "with_fc=False and union='cat'")
    for dim, hidden in zip(self.embed_dims, self.hidden_sizes):
      width = self.mixer_width(hidden)
      if not self.with_fc and width != dim:
        raise ValueError(
            f'without fc the token mixer output ({width} channels for hidden {hidden}, '
            f'union {self.union!r}) must equal the embedding dim {dim}')

  def mixer_width(self, hidden: int) -> int:
    """Channels coming out of the RNN union, before the optional fc."""
    directional = 2 * hidden if self.bidirectional else hidden
    return 2 * directional if (self.union == 'cat' and not self.vanilla) else directional

  def drop_path_rates(self, drop_path_rate: float) -> list[float]:
    """The original code's linear schedule: block k of N gets rate * k / (N - 1)."""
    return [float(r) for r in np.linspace(0.0, drop_path_rate, sum(self.layers))]


def default_rnn_impl(cell: CellType) -> str:
  """What `rnn_impl='auto'` runs: the fastest measured on the CPU ('per_direction'); elsewhere,
  unmeasured, the fused scan with the hand-written backward for LSTMs (docs/performance.md)."""
  if jax.default_backend() == 'cpu':
    return 'per_direction'
  return 'fused_vjp' if cell == 'lstm' else 'fused'


class RNN2D(nn.Module):
  """BiLSTM2D token mixer (`RNN2DBase`): vertical and horizontal RNNs, union, optional fc."""

  hidden_size: int
  cell: CellType = 'lstm'
  bidirectional: bool = True
  union: UnionMode = 'cat'
  with_fc: bool = True
  rnn_impl: str = 'auto'
  rnn_unroll: int = 1
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    # Vertical sequences run along H (axis 1), one per (batch, column); horizontal ones along W.
    axes = {'vertical': {'rnn_v': 1}, 'horizontal': {'rnn_h': 2}}.get(self.union,
                                                                       {'rnn_v': 1, 'rnn_h': 2})
    rnns = {name: BidirectionalRNN(x.shape[-1], self.hidden_size, self.cell, self.bidirectional,
                                   self.rnn_unroll, self.dtype, self.param_dtype, name=name)
            for name in axes}
    outputs = _run_rnns(x, [(rnns[name], axis) for name, axis in axes.items()], self.rnn_impl)
    if self.union == 'add':
      y = outputs[0] + outputs[1]
    else:  # cat: [v_fwd, v_rev, h_fwd, h_rev]; vertical / horizontal: one branch.
      y = jnp.concatenate(outputs, axis=-1)
    if self.with_fc:
      y = nn.Dense(x.shape[-1], dtype=self.dtype, param_dtype=self.param_dtype, name='fc',
                   kernel_init=xavier_uniform(), bias_init=zeros)(y)
    return y


def _run_rnns(x: jax.Array, rnns: list[tuple[BidirectionalRNN, int]],
              impl: str) -> list[jax.Array]:
  """Each bidirectional RNN's output ([forward, reverse] channels) over its axis of x."""
  if impl == 'auto':
    impl = default_rnn_impl(rnns[0][0].cell)
  if impl not in RNN_IMPLS:
    raise ValueError(f'unknown rnn_impl {impl!r}; expected "auto" or one of {list(RNN_IMPLS)}')
  if impl == 'per_direction':
    return [rnn(x, axis) for rnn, axis in rnns]
  directions = [(d, axis) for rnn, axis in rnns for d in rnn.directions()]
  hs = iter(fused_directions(x, directions, impl))
  return [jnp.concatenate([next(hs) for _ in rnn.directions()], axis=-1) for rnn, _ in rnns]


class RNN1D(nn.Module):
  """Vanilla Sequencer token mixer: one BiRNN over the row-major H*W sequence, no fc."""

  hidden_size: int
  cell: CellType = 'lstm'
  bidirectional: bool = True
  rnn_impl: str = 'auto'
  rnn_unroll: int = 1
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    b, h, w, c = x.shape
    rnn = BidirectionalRNN(c, self.hidden_size, self.cell, self.bidirectional, self.rnn_unroll,
                           self.dtype, self.param_dtype, name='rnn')
    (y,) = _run_rnns(x.reshape(b, h * w, c), [(rnn, 1)], self.rnn_impl)
    return y.reshape(b, h, w, -1)


class SequencerBlock(nn.Module):
  """x += DropPath(mixer(LN(x))); x += DropPath(MLP(LN(x)))."""

  arch: SequencerArch
  hidden_size: int
  drop_path: float = 0.0
  drop_rate: float = 0.0
  rnn_impl: str = 'auto'
  rnn_unroll: int = 1
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    a = self.arch
    rnn = dict(rnn_impl=self.rnn_impl, rnn_unroll=self.rnn_unroll, dtype=self.dtype,
               param_dtype=self.param_dtype, name='rnn_tokens')
    if a.vanilla:
      mixer = RNN1D(self.hidden_size, a.cell, a.bidirectional, **rnn)
    else:
      mixer = RNN2D(self.hidden_size, a.cell, a.bidirectional, a.union, a.with_fc, **rnn)
    drop_path = DropPath(self.drop_path)
    y = mixer(layer_norm('norm1', self.dtype, self.param_dtype)(x))
    x = x + drop_path(y, train)
    y = layer_norm('norm2', self.dtype, self.param_dtype)(x)
    y = Mlp(int(a.mlp_ratio * x.shape[-1]), self.drop_rate, self.dtype, self.param_dtype,
            name='mlp_channels')(y, train)
    return x + drop_path(y, train)


class Sequencer(nn.Module):
  """A Sequencer classifier on float32 NHWC images normalised with the ImageNet mean and std.

  `model.apply(variables, images)` returns logits in inference mode. Pass `train=True` (with a
  'dropout' rng) for dropout and stochastic depth, and `return_intermediates=True` to also get a
  dict of named activations: 'stem', 'stage0'..'stageN', 'pre_logits'.

  `rnn_impl` picks the recurrence implementation (see `recurrent.py` and `default_rnn_impl`
  for 'auto') and `rnn_unroll` its scan unrolling; neither changes the parameters or the
  results beyond float rounding. `remat` recomputes each block's activations in the backward pass
  instead of keeping them (less memory, about one more forward pass of compute).
  """

  arch: SequencerArch
  num_classes: int = 1000
  drop_rate: float = 0.0  # MLP dropout (both repos' `drop_rate`).
  head_drop_rate: float = 0.0  # Dropout before the head (timm only; the original has none).
  drop_path_rate: float = 0.0
  rnn_impl: str = 'auto'
  rnn_unroll: int = 1
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  remat: bool = False

  @nn.compact
  def __call__(self, images: jax.Array, train: bool = False,
               return_intermediates: bool = False) -> Any:
    a = self.arch
    if images.ndim != 4 or images.shape[-1] != 3:
      raise ValueError(f'expected NHWC images of shape (batch, height, width, 3), '
                       f'got {images.shape}')
    conv = lambda features, patch, name: nn.Conv(
        features, (patch, patch), strides=(patch, patch), padding='VALID', dtype=self.dtype,
        param_dtype=self.param_dtype, kernel_init=timm_lecun_normal(), bias_init=zeros, name=name)
    features: dict[str, jax.Array] = {}
    x = conv(a.embed_dims[0], a.patch_sizes[0], 'stem')(images.astype(self.dtype))
    if a.pos_embed_size is not None:
      n = a.pos_embed_size
      if x.shape[1:3] != (n, n):
        raise ValueError(f'this model has a fixed {n}x{n} positional embedding and needs '
                         f'{n * a.patch_sizes[0]}x{n * a.patch_sizes[0]} images, '
                         f'got {images.shape[1]}x{images.shape[2]}')
      pos = self.param('absolute_pos_embed', trunc_normal_abs(0.02), (1, n, n, a.embed_dims[0]),
                       self.param_dtype)
      x = x + pos.astype(self.dtype)
    features['stem'] = x
    rates = a.drop_path_rates(self.drop_path_rate)
    block = nn.remat(SequencerBlock, static_argnums=(2,)) if self.remat else SequencerBlock
    k = 0
    for i, depth in enumerate(a.layers):
      if i > 0:
        x = conv(a.embed_dims[i], a.patch_sizes[i], f'stages_{i}_downsample')(x)
      for j in range(depth):
        x = block(a, a.hidden_sizes[i], rates[k], self.drop_rate, self.rnn_impl,
                           self.rnn_unroll, self.dtype, self.param_dtype,
                           name=f'stages_{i}_blocks_{j}')(x, train)
        k += 1
      features[f'stage{i}'] = x
    x = layer_norm('norm', self.dtype, self.param_dtype)(x)
    x = jnp.mean(x, axis=(1, 2))
    features['pre_logits'] = x
    if self.num_classes > 0:
      x = nn.Dropout(self.head_drop_rate, deterministic=not train)(x)
      x = nn.Dense(self.num_classes, dtype=self.dtype, param_dtype=self.param_dtype,
                   kernel_init=zeros, bias_init=zeros, name='head')(x)
    return (x, features) if return_intermediates else x


def abstract_params(model: Sequencer) -> Any:
  """The parameter shapes and dtypes of `model`, traced without computing anything."""
  a = model.arch
  size = (16 if a.pos_embed_size is None else a.pos_embed_size) * a.patch_sizes[0]
  shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, size, size, 3)))
  return shapes['params']
