"""PyTorch-compatible recurrent layers (LSTM, GRU, tanh RNN) that run along one axis of a tensor.

Each direction keeps PyTorch's four tensors, transposed to Flax's (in, out) convention, with the
gate blocks in PyTorch's order (LSTM i,f,g,o; GRU r,z,n):

  kernel_ih (input, G*hidden)   kernel_hh (hidden, G*hidden)   bias_ih (G*hidden)   bias_hh (G*hidden)

The input projection x @ kernel_ih + bias_ih is computed for every time step at once, outside the
recurrence; `nn.scan` then carries only the recurrent matmul and the gate arithmetic. The carry and
the gate arithmetic are float32 whatever the compute dtype.
"""

from __future__ import annotations

import math
from typing import Any, Literal

import flax.linen as nn
import jax
import jax.numpy as jnp

from sequencer_jax.layers import Dtype, uniform_symmetric

CellType = Literal['lstm', 'gru', 'rnn']
GATES: dict[str, int] = {'lstm': 4, 'gru': 3, 'rnn': 1}
Carry = tuple[jax.Array, ...]


def _matmul(x: jax.Array, kernel: jax.Array, dtype: Dtype) -> jax.Array:
  """x @ kernel in the compute dtype, accumulated and returned in float32."""
  return jnp.einsum('...i,io->...o', x.astype(dtype), kernel.astype(dtype),
                    preferred_element_type=jnp.float32)


def cell_step(cell: CellType, carry: Carry, gx: jax.Array, kernel_hh: jax.Array,
              bias_hh: jax.Array, dtype: Dtype) -> tuple[Carry, jax.Array]:
  """One time step of `cell` given the precomputed input gates gx = x W_ih + b_ih (float32)."""
  h = carry[-1]
  gh = _matmul(h, kernel_hh, dtype) + bias_hh.astype(jnp.float32)
  if cell == 'lstm':
    i, f, g, o = jnp.split(gx + gh, 4, axis=-1)
    c = jax.nn.sigmoid(f) * carry[0] + jax.nn.sigmoid(i) * jnp.tanh(g)
    h = jax.nn.sigmoid(o) * jnp.tanh(c)
    return (c, h), h
  if cell == 'gru':
    xr, xz, xn = jnp.split(gx, 3, axis=-1)
    hr, hz, hn = jnp.split(gh, 3, axis=-1)
    r = jax.nn.sigmoid(xr + hr)
    z = jax.nn.sigmoid(xz + hz)
    n = jnp.tanh(xn + r * hn)
    h = (1.0 - z) * n + z * h
    return (h,), h
  if cell == 'rnn':
    h = jnp.tanh(gx + gh)
    return (h,), h
  raise ValueError(f'unknown cell {cell!r}; expected one of {sorted(GATES)}')


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

  def _step(self, carry: Carry, gx: jax.Array) -> tuple[Carry, jax.Array]:
    return cell_step(self.cell, carry, gx, self.kernel_hh, self.bias_hh, self.dtype)

  def __call__(self, x: jax.Array, axis: int) -> jax.Array:
    axis = axis % x.ndim
    gx = _matmul(x, self.kernel_ih, self.dtype) + self.bias_ih.astype(jnp.float32)
    batch_shape = x.shape[:axis] + x.shape[axis + 1:-1]
    zero = jnp.zeros(batch_shape + (self.hidden_size,), jnp.float32)
    carry = (zero, zero) if self.cell == 'lstm' else (zero,)
    scan = nn.scan(
        Recurrence._step, variable_broadcast='params', split_rngs={'params': False},
        in_axes=axis, out_axes=axis, reverse=self.reverse)
    _, hs = scan(self, carry, gx)
    return hs.astype(self.dtype)


class BidirectionalRNN(nn.Module):
  """PyTorch `nn.RNN/LSTM/GRU(bidirectional=...)` along one axis: output [forward, reverse]."""

  hidden_size: int
  cell: CellType = 'lstm'
  bidirectional: bool = True
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, axis: int) -> jax.Array:
    directions = ('forward', 'reverse') if self.bidirectional else ('forward',)
    outputs = [
        Recurrence(x.shape[-1], self.hidden_size, self.cell, reverse=name == 'reverse',
                   dtype=self.dtype, param_dtype=self.param_dtype, name=name)(x, axis)
        for name in directions
    ]
    return jnp.concatenate(outputs, axis=-1)
