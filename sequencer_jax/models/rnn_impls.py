"""The bidirectional RNN layer and the implementations of its recurrence it chooses between.

`rnn_impl` names what runs a `BidirectionalRNN`; all give the same results up to float rounding,
from the same parameters:

* 'per_direction': each direction is its own `Recurrence` module, one `nn.scan` each (the
  reference, `recurrent.py`);
* 'fused', 'fused_vjp': both directions in one input projection and one scan (`fused.py`);
* 'pallas': that projection, then Pallas kernels that run the time loop on chip, forward and
  backward (`pallas_rnn.py`; interpreted, so slow, on the CPU);
* 'auto': `default_rnn_impl`.
"""

from __future__ import annotations

import functools
from typing import Protocol

import flax.linen as nn
import jax
import jax.numpy as jnp

from sequencer_jax.models.fused import fused_rnn, fused_rnn_vjp
from sequencer_jax.models.layers import Dtype
from sequencer_jax.models.pallas_rnn import pallas_rnn
from sequencer_jax.models.recurrent import CellType, Recurrence, RNNWeights


class RNNImpl(Protocol):
  """A recurrence implementation that is a pure function of the input and the parameters.

  `weights` stacks the forward direction's tensors and, for a bidirectional RNN, the reverse
  one's (k = 1 or 2). Returns x's layout with the last axis k * hidden in `dtype`: the forward
  and then the reverse hidden states, each sequence along `axis` starting from a zero state.
  """

  def __call__(self, x: jax.Array, axis: int, weights: RNNWeights, *, cell: CellType,
               dtype: Dtype, unroll: int) -> jax.Array: ...


FUSED_IMPLS: dict[str, RNNImpl] = {'fused': fused_rnn, 'fused_vjp': fused_rnn_vjp,
                                   'pallas': pallas_rnn}
RNN_IMPLS: tuple[str, ...] = ('per_direction', *FUSED_IMPLS)


def default_rnn_impl(cell: CellType) -> str:
  """What `rnn_impl='auto'` runs: the fastest measured on the CPU ('per_direction'); elsewhere,
  unmeasured, the fused scan with the hand-written backward for LSTMs (docs/performance.md)."""
  if jax.default_backend() == 'cpu':
    return 'per_direction'
  return 'fused_vjp' if cell == 'lstm' else 'fused'


def resolve_rnn_impl(impl: str, cell: CellType) -> str:
  """The implementation `impl` names, 'auto' resolved; an unknown name is a ValueError."""
  if impl == 'auto':
    return default_rnn_impl(cell)
  if impl not in RNN_IMPLS:
    raise ValueError(f'unknown rnn_impl {impl!r}; expected "auto" or one of {list(RNN_IMPLS)}')
  return impl


class BidirectionalRNN(nn.Module):
  """PyTorch `nn.RNN/LSTM/GRU(bidirectional=...)` along one axis: output [forward, reverse].

  The parameters are those of the `forward` and `reverse` `Recurrence` submodules whatever `impl`
  runs them, so every implementation reads the same checkpoint.
  """

  input_size: int
  hidden_size: int
  cell: CellType = 'lstm'
  bidirectional: bool = True
  impl: str = 'auto'
  unroll: int = 1
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  def setup(self) -> None:
    make = functools.partial(Recurrence, self.input_size, self.hidden_size, self.cell,
                             unroll=self.unroll, dtype=self.dtype, param_dtype=self.param_dtype)
    self.forward = make(reverse=False)
    if self.bidirectional:
      self.reverse = make(reverse=True)

  def __call__(self, x: jax.Array, axis: int) -> jax.Array:
    directions = [self.forward, self.reverse] if self.bidirectional else [self.forward]
    impl = resolve_rnn_impl(self.impl, self.cell)
    if impl == 'per_direction':
      return jnp.concatenate([d(x, axis) for d in directions], axis=-1)
    weights = jax.tree.map(lambda *ws: jnp.stack(ws), *[d.weights() for d in directions])
    return FUSED_IMPLS[impl](x, axis, weights, cell=self.cell, dtype=self.dtype,
                             unroll=self.unroll)
