"""Sequencer2D (Tatsunami & Taki, NeurIPS 2022) and the vanilla 1D Sequencer in Flax linen, NHWC.

Module names mirror timm's `sequencer.py` (`stem`, `stages_i/blocks_j/rnn_tokens/rnn_v/forward`,
`mlp_channels/fc1`, `head`), so the PyTorch mapping (`weights/torch_keys.py`) is a short rename
table.
"""

from __future__ import annotations

import dataclasses
import functools
import typing
from typing import Any, Literal

import einops
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from sequencer_jax.models.layers import (DropPath, Dtype, Mlp, layer_norm, timm_lecun_normal,
                                         trunc_normal_abs, xavier_uniform, zeros)
from sequencer_jax.models.recurrent import GATES, CellType
from sequencer_jax.models.rnn_impls import BidirectionalRNN

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


VERTICAL, HORIZONTAL = 1, 2  # The NHWC axes the two RNNs run along: H (columns), W (rows).


class _TokenMixer(nn.Module):
  """What the 2D and the 1D token mixers share: their RNNs' settings."""

  hidden_size: int
  cell: CellType = 'lstm'
  bidirectional: bool = True
  rnn_impl: str = 'auto'
  rnn_unroll: int = 1
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  def rnn(self, input_size: int, name: str) -> BidirectionalRNN:
    """A bidirectional (or forward-only) RNN with these settings, as submodule `name`."""
    return BidirectionalRNN(
        input_size, self.hidden_size, cell=self.cell, bidirectional=self.bidirectional,
        impl=self.rnn_impl, unroll=self.rnn_unroll, dtype=self.dtype,
        param_dtype=self.param_dtype, name=name)


def _unite(union: UnionMode, v: jax.Array | None, h: jax.Array | None) -> jax.Array:
  """The vertical and the horizontal branch outputs united (either is None where `union` drops
  its branch)."""
  if union == 'cat':
    return jnp.concatenate([v, h], axis=-1)
  if union == 'add':
    return v + h
  return v if union == 'vertical' else h


class RNN2D(_TokenMixer):
  """The BiLSTM2D token mixer (the paper's Figure 2, timm's `RNN2DBase`), on layer-normed tokens.

  A vertical BiLSTM runs down every column (over H) and a horizontal BiLSTM along every row (over
  W); their outputs are concatenated ('cat'; or added, or one branch alone) and mixed back to the
  input width by a linear layer (`with_fc`).
  """

  union: UnionMode = 'cat'
  with_fc: bool = True

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    channels = x.shape[-1]
    v = h = None
    if self.union != 'horizontal':
      v = self.rnn(channels, 'rnn_v')(x, axis=VERTICAL)
    if self.union != 'vertical':
      h = self.rnn(channels, 'rnn_h')(x, axis=HORIZONTAL)
    y = _unite(self.union, v, h)
    if self.with_fc:
      y = nn.Dense(channels, dtype=self.dtype, param_dtype=self.param_dtype, name='fc',
                   kernel_init=xavier_uniform(), bias_init=zeros)(y)
    return y


class RNN1D(_TokenMixer):
  """The vanilla Sequencer's token mixer: one BiRNN over the row-major H*W sequence, no fc."""

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    tokens = einops.rearrange(x, 'b h w c -> b (h w) c')
    y = self.rnn(x.shape[-1], 'rnn')(tokens, axis=1)
    return einops.rearrange(y, 'b (h w) c -> b h w c', h=x.shape[1])


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
    rnn = dict(cell=a.cell, bidirectional=a.bidirectional, rnn_impl=self.rnn_impl,
               rnn_unroll=self.rnn_unroll, dtype=self.dtype, param_dtype=self.param_dtype,
               name='rnn_tokens')
    if a.vanilla:
      mixer = RNN1D(self.hidden_size, **rnn)
    else:
      mixer = RNN2D(self.hidden_size, union=a.union, with_fc=a.with_fc, **rnn)
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

  `rnn_impl` picks the recurrence implementation (see `rnn_impls.py`) and `rnn_unroll` its scan
  unrolling; neither changes the parameters or the results beyond float rounding. `remat`
  recomputes each block's activations in the backward pass instead of keeping them (less memory,
  about one more forward pass of compute).
  """

  arch: SequencerArch
  num_classes: int = 1000
  drop_rate: float = 0.0  # MLP dropout (the original's `drop_rate`; timm 1.0's `proj_drop_rate`).
  head_drop_rate: float = 0.0  # Dropout before the head (timm 1.0's `drop_rate`; original: none).
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
    block = functools.partial(
        nn.remat(SequencerBlock, static_argnums=(2,)) if self.remat else SequencerBlock,
        arch=a, drop_rate=self.drop_rate, rnn_impl=self.rnn_impl, rnn_unroll=self.rnn_unroll,
        dtype=self.dtype, param_dtype=self.param_dtype)
    rates = iter(a.drop_path_rates(self.drop_path_rate))
    for i, depth in enumerate(a.layers):
      if i > 0:
        x = conv(a.embed_dims[i], a.patch_sizes[i], f'stages_{i}_downsample')(x)
      for j in range(depth):
        x = block(hidden_size=a.hidden_sizes[i], drop_path=next(rates),
                  name=f'stages_{i}_blocks_{j}')(x, train)
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
  """The parameter shapes and dtypes of `model`, traced without computing anything.

  They depend only on the architecture, the class count and the parameter dtype, so each such
  triple is traced once per process (a trace of Sequencer2D-S takes seconds).
  """
  return _abstract_params(model.arch, model.num_classes, jnp.dtype(model.param_dtype))


@functools.lru_cache(maxsize=32)
def _abstract_params(arch: SequencerArch, num_classes: int, param_dtype: jnp.dtype) -> Any:
  model = Sequencer(arch, num_classes, param_dtype=param_dtype)
  size = (16 if arch.pos_embed_size is None else arch.pos_embed_size) * arch.patch_sizes[0]
  shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, size, size, 3)))
  return shapes['params']


def replace_head(params: Any, num_classes: int) -> Any:
  """A new zero-initialised head for `num_classes` (none for 0), as timm does for transfer."""
  params = {k: v for k, v in params.items() if k != 'head'}
  if num_classes > 0:
    width = params['norm']['scale'].shape[0]
    params['head'] = {'kernel': np.zeros((width, num_classes), np.float32),
                      'bias': np.zeros((num_classes,), np.float32)}
  return params
