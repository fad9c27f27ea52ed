"""The reference recurrence: one direction of a PyTorch-compatible LSTM, GRU or tanh-RNN layer.

Each direction keeps PyTorch's four tensors, transposed to Flax's (in, out) convention, with the
gate blocks in PyTorch's order (LSTM i,f,g,o; GRU r,z,n):

  kernel_ih (input, G*hidden)   kernel_hh (hidden, G*hidden)   bias_ih (G*hidden)   bias_hh (G*hidden)

The input projection x @ kernel_ih + bias_ih is computed for all time steps at once, outside the
recurrence, and the carry and gate arithmetic are float32 whatever the compute dtype. `Recurrence`
is its own `nn.scan` over its axis; `rnn_impls.BidirectionalRNN` pairs two of them and chooses
between that and the fused implementations of `fused.py`.
"""

from __future__ import annotations

import math
from typing import Literal, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from sequencer_jax.models.layers import Dtype, uniform_symmetric

CellType = Literal['lstm', 'gru', 'rnn']
GATES: dict[str, int] = {'lstm': 4, 'gru': 3, 'rnn': 1}
Carry = tuple[jax.Array, ...]


class RNNWeights(NamedTuple):
  """The four tensors of one direction, or of k directions stacked on a leading axis."""

  kernel_ih: jax.Array  # (input, G*hidden), stacked (k, input, G*hidden)
  kernel_hh: jax.Array  # (hidden, G*hidden), stacked (k, hidden, G*hidden)
  bias_ih: jax.Array  # (G*hidden,), stacked (k, G*hidden)
  bias_hh: jax.Array  # (G*hidden,), stacked (k, G*hidden)


def matmul_f32(x: jax.Array, kernel: jax.Array, dtype: Dtype) -> jax.Array:
  """x @ kernel in the compute dtype, accumulated and returned in float32."""
  return jnp.einsum('...i,io->...o', x.astype(dtype), kernel.astype(dtype),
                    preferred_element_type=jnp.float32)


def lstm_gates(z: jax.Array, c: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
  """LSTM update from the pre-activations z (i,f,g,o blocks): (c', h', activated gates)."""
  zi, zf, zg, zo = jnp.split(z, 4, axis=-1)
  i, f, g, o = jax.nn.sigmoid(zi), jax.nn.sigmoid(zf), jnp.tanh(zg), jax.nn.sigmoid(zo)
  c = f * c + i * g
  return c, o * jnp.tanh(c), jnp.concatenate([i, f, g, o], axis=-1)


def cell_update(cell: CellType, carry: Carry, gx: jax.Array,
                gh: jax.Array) -> tuple[Carry, jax.Array]:
  """The gate arithmetic of one step, given gx = x W_ih + b_ih and gh = h W_hh + b_hh (float32)."""
  if cell == 'lstm':
    c, h, _ = lstm_gates(gx + gh, carry[0])
    return (c, h), h
  if cell == 'gru':
    xr, xz, xn = jnp.split(gx, 3, axis=-1)
    hr, hz, hn = jnp.split(gh, 3, axis=-1)
    r = jax.nn.sigmoid(xr + hr)
    z = jax.nn.sigmoid(xz + hz)
    n = jnp.tanh(xn + r * hn)
    h = (1.0 - z) * n + z * carry[-1]
    return (h,), h
  if cell == 'rnn':
    h = jnp.tanh(gx + gh)
    return (h,), h
  raise ValueError(f'unknown cell {cell!r}; expected one of {sorted(GATES)}')


def zero_carry(cell: CellType, shape: tuple[int, ...]) -> Carry:
  """The zero initial state: (c, h) for the LSTM, (h,) otherwise."""
  zero = jnp.zeros(shape, jnp.float32)
  return (zero, zero) if cell == 'lstm' else (zero,)


class Recurrence(nn.Module):
  """One direction of a single-layer PyTorch RNN over `axis` of its input.

  The output at position t is the hidden state after the cell has consumed the input at t; for
  `reverse=True` it has consumed positions T-1..t (PyTorch's `_reverse` direction, kept in input
  order). Every sequence starts from a zero state.
  """

  input_size: int
  hidden_size: int
  cell: CellType = 'lstm'
  reverse: bool = False
  unroll: int = 1
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  def setup(self) -> None:
    if self.cell not in GATES:
      raise ValueError(f'unknown cell {self.cell!r}; expected one of {sorted(GATES)}')
    width = GATES[self.cell] * self.hidden_size
    init = uniform_symmetric(1.0 / math.sqrt(self.hidden_size))
    self.kernel_ih = self.param('kernel_ih', init, (self.input_size, width), self.param_dtype)
    self.kernel_hh = self.param('kernel_hh', init, (self.hidden_size, width), self.param_dtype)
    self.bias_ih = self.param('bias_ih', init, (width,), self.param_dtype)
    self.bias_hh = self.param('bias_hh', init, (width,), self.param_dtype)

  def weights(self) -> RNNWeights:
    """This direction's parameters, for an implementation that runs the recurrence itself."""
    return RNNWeights(self.kernel_ih, self.kernel_hh, self.bias_ih, self.bias_hh)

  def _step(self, carry: Carry, gx: jax.Array) -> tuple[Carry, jax.Array]:
    gh = matmul_f32(carry[-1], self.kernel_hh, self.dtype) + self.bias_hh.astype(jnp.float32)
    return cell_update(self.cell, carry, gx, gh)

  def __call__(self, x: jax.Array, axis: int) -> jax.Array:
    axis = axis % x.ndim
    gx = matmul_f32(x, self.kernel_ih, self.dtype) + self.bias_ih.astype(jnp.float32)
    carry = zero_carry(self.cell, x.shape[:axis] + x.shape[axis + 1:-1] + (self.hidden_size,))
    scan = nn.scan(
        Recurrence._step, variable_broadcast='params', split_rngs={'params': False},
        in_axes=axis, out_axes=axis, reverse=self.reverse, unroll=self.unroll)
    _, hs = scan(self, carry, gx)
    return hs.astype(self.dtype)

