"""PyTorch-compatible recurrent layers (LSTM, GRU, tanh RNN) that run along one axis of a tensor.

Each direction keeps PyTorch's four tensors, transposed to Flax's (in, out) convention, with the
gate blocks in PyTorch's order (LSTM i,f,g,o; GRU r,z,n):

  kernel_ih (input, G*hidden)   kernel_hh (hidden, G*hidden)   bias_ih (G*hidden)   bias_hh (G*hidden)

In every implementation the input projection x @ kernel_ih + bias_ih is computed for all time steps
at once, outside the recurrence, and the carry and gate arithmetic are float32 whatever the compute
dtype. Implementations (`RNN_IMPLS`), all with the same parameters:

* 'per_direction': each direction is its own `nn.scan` over its axis (the reference).
* 'fused': the directions of a token mixer share one input-projection matmul, and directions with
  equal sequence lengths (all four on square feature maps) run in one scan with batched weights.
* 'fused_vjp': 'fused' with a hand-written LSTM backward pass whose reverse loop carries only the
  recurrent gradient; the weight gradients are single matmuls after it.
"""

from __future__ import annotations

import functools
import math
from typing import Literal, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from sequencer_jax.layers import Dtype, uniform_symmetric

CellType = Literal['lstm', 'gru', 'rnn']
GATES: dict[str, int] = {'lstm': 4, 'gru': 3, 'rnn': 1}
RNN_IMPLS = ('per_direction', 'fused', 'fused_vjp')  # Besides 'auto' (model.default_rnn_impl).
Carry = tuple[jax.Array, ...]


def _matmul(x: jax.Array, kernel: jax.Array, dtype: Dtype) -> jax.Array:
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


def _zero_carry(cell: CellType, shape: tuple[int, ...]) -> Carry:
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

  def _step(self, carry: Carry, gx: jax.Array) -> tuple[Carry, jax.Array]:
    gh = _matmul(carry[-1], self.kernel_hh, self.dtype) + self.bias_hh.astype(jnp.float32)
    return cell_update(self.cell, carry, gx, gh)

  def __call__(self, x: jax.Array, axis: int) -> jax.Array:
    axis = axis % x.ndim
    gx = _matmul(x, self.kernel_ih, self.dtype) + self.bias_ih.astype(jnp.float32)
    carry = _zero_carry(self.cell, x.shape[:axis] + x.shape[axis + 1:-1] + (self.hidden_size,))
    scan = nn.scan(
        Recurrence._step, variable_broadcast='params', split_rngs={'params': False},
        in_axes=axis, out_axes=axis, reverse=self.reverse, unroll=self.unroll)
    _, hs = scan(self, carry, gx)
    return hs.astype(self.dtype)


class BidirectionalRNN(nn.Module):
  """PyTorch `nn.RNN/LSTM/GRU(bidirectional=...)` along one axis: output [forward, reverse]."""

  input_size: int
  hidden_size: int
  cell: CellType = 'lstm'
  bidirectional: bool = True
  unroll: int = 1
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  def setup(self) -> None:
    make = functools.partial(Recurrence, self.input_size, self.hidden_size, self.cell,
                             unroll=self.unroll, dtype=self.dtype, param_dtype=self.param_dtype)
    self.forward = make(reverse=False)
    if self.bidirectional:
      self.reverse = make(reverse=True)

  def directions(self) -> list[Recurrence]:
    return [self.forward, self.reverse] if self.bidirectional else [self.forward]

  def __call__(self, x: jax.Array, axis: int) -> jax.Array:
    return jnp.concatenate([d(x, axis) for d in self.directions()], axis=-1)


# ---------------------------------------------------------------------------------------------
# Fused implementations.


def _scan_stacked(cell: CellType, gx: jax.Array, kernel_hh: jax.Array, bias_hh: jax.Array,
                  dtype: Dtype, unroll: int) -> jax.Array:
  """k directions in one scan: gx (k, T, N, G*h) time-major -> hidden states (k, T, N, h)."""
  k, _, n, _ = gx.shape
  bias = bias_hh.astype(jnp.float32)[:, None]

  def step(carry: Carry, gx_t: jax.Array) -> tuple[Carry, jax.Array]:
    gh = jnp.einsum('knh,khg->kng', carry[-1].astype(dtype), kernel_hh.astype(dtype),
                    preferred_element_type=jnp.float32) + bias
    return cell_update(cell, carry, gx_t, gh)

  _, hs = jax.lax.scan(step, _zero_carry(cell, (k, n, kernel_hh.shape[1])),
                       jnp.swapaxes(gx, 0, 1), unroll=unroll)
  return jnp.swapaxes(hs, 0, 1)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def _lstm_scan_vjp(gx: jax.Array, kernel_hh: jax.Array, bias_hh: jax.Array, dtype: Dtype,
                   unroll: int) -> jax.Array:
  """`_scan_stacked` for the LSTM, with the backward pass below."""
  return _scan_stacked('lstm', gx, kernel_hh, bias_hh, dtype, unroll)


def _lstm_scan_fwd(gx: jax.Array, kernel_hh: jax.Array, bias_hh: jax.Array, dtype: Dtype,
                   unroll: int) -> tuple[jax.Array, tuple[jax.Array, ...]]:
  k, _, n, _ = gx.shape
  hidden = kernel_hh.shape[1]
  bias = bias_hh.astype(jnp.float32)[:, None]

  def step(carry, gx_t):
    c, h = carry
    z = gx_t + jnp.einsum('knh,khg->kng', h.astype(dtype), kernel_hh.astype(dtype),
                          preferred_element_type=jnp.float32) + bias
    c, h, acts = lstm_gates(z, c)
    return (c, h), (h, c, acts)

  zero = jnp.zeros((k, n, hidden), jnp.float32)
  _, (hs, cs, acts) = jax.lax.scan(step, (zero, zero), jnp.swapaxes(gx, 0, 1), unroll=unroll)
  return jnp.swapaxes(hs, 0, 1), (hs, cs, acts, kernel_hh, bias_hh)


def _lstm_scan_bwd(dtype: Dtype, unroll: int, residuals: tuple[jax.Array, ...],
                   dhs: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
  hs, cs, acts, kernel_hh, bias_hh = residuals  # Time-major (T, k, N, .).
  zero = jnp.zeros_like(hs[0])
  c_prev = jnp.concatenate([zero[None], cs[:-1]], axis=0)
  w = kernel_hh.astype(dtype)

  def step(carry, inputs):
    dh_next, dc_next = carry
    dh_out, act, c, cp = inputs
    i, f, g, o = jnp.split(act, 4, axis=-1)
    tanh_c = jnp.tanh(c)
    dh = dh_out + dh_next
    dc = dc_next + dh * o * (1.0 - tanh_c * tanh_c)
    dz = jnp.concatenate([dc * g * i * (1.0 - i), dc * cp * f * (1.0 - f),
                          dc * i * (1.0 - g * g), dh * tanh_c * o * (1.0 - o)], axis=-1)
    dh_prev = jnp.einsum('kng,khg->knh', dz.astype(dtype), w,
                         preferred_element_type=jnp.float32)
    return (dh_prev, dc * f), dz

  _, dz = jax.lax.scan(step, (zero, zero), (jnp.swapaxes(dhs, 0, 1), acts, cs, c_prev),
                       reverse=True, unroll=unroll)
  h_prev = jnp.concatenate([zero[None], hs[:-1]], axis=0)
  d_kernel = jnp.einsum('tknh,tkng->khg', h_prev.astype(dtype), dz.astype(dtype),
                        preferred_element_type=jnp.float32)
  d_bias = dz.sum(axis=(0, 2))
  return (jnp.swapaxes(dz, 0, 1), d_kernel.astype(kernel_hh.dtype),
          d_bias.astype(bias_hh.dtype))


_lstm_scan_vjp.defvjp(_lstm_scan_fwd, _lstm_scan_bwd)


def fused_directions(x: jax.Array, directions: Sequence[tuple[Recurrence, int]],
                     impl: str) -> list[jax.Array]:
  """Runs every (direction, axis) over x: one input projection, one scan per sequence shape.

  Cell, dtype and unrolling are the directions' own (they share them).

  Returns each direction's hidden states laid out like x (the sequence axis in place).
  """
  first = directions[0][0]
  cell, dtype, hidden, unroll = first.cell, first.dtype, first.hidden_size, first.unroll
  if impl == 'fused_vjp' and cell != 'lstm':
    raise ValueError(f"rnn_impl 'fused_vjp' implements the LSTM only, not {cell!r}; "
                     f"use 'fused' or 'per_direction'")
  kernel_ih = jnp.concatenate([d.kernel_ih for d, _ in directions], axis=1)
  bias_ih = jnp.concatenate([d.bias_ih for d, _ in directions])
  gx_all = _matmul(x, kernel_ih, dtype) + bias_ih.astype(jnp.float32)
  sequences = []
  for (d, axis), gx in zip(directions, jnp.split(gx_all, len(directions), axis=-1)):
    gx = jnp.moveaxis(gx, axis % x.ndim, 0)
    layout = gx.shape[:-1]
    gx = gx.reshape(layout[0], -1, gx.shape[-1])
    sequences.append((gx[::-1] if d.reverse else gx, layout))
  outputs: list[jax.Array | None] = [None] * len(directions)
  groups: dict[tuple[int, int], list[int]] = {}
  for j, (gx, _) in enumerate(sequences):
    groups.setdefault(gx.shape[:2], []).append(j)
  for members in groups.values():
    gx = jnp.stack([sequences[j][0] for j in members])
    kernel_hh = jnp.stack([directions[j][0].kernel_hh for j in members])
    bias_hh = jnp.stack([directions[j][0].bias_hh for j in members])
    if impl == 'fused_vjp':
      hs = _lstm_scan_vjp(gx, kernel_hh, bias_hh, dtype, unroll)
    else:
      hs = _scan_stacked(cell, gx, kernel_hh, bias_hh, dtype, unroll)
    for h, j in zip(hs, members):
      d, axis = directions[j]
      h = (h[::-1] if d.reverse else h).reshape(sequences[j][1] + (hidden,))
      outputs[j] = jnp.moveaxis(h, 0, axis % x.ndim).astype(dtype)
  return outputs
