"""Fused recurrences: both directions of one bidirectional RNN in one projection and one scan.

* `fused_rnn` ('fused'): one input-projection matmul for both directions, then one `lax.scan`
  with the recurrent weights batched over the direction axis; backward by autodiff.
* `fused_rnn_vjp` ('fused_vjp'): `fused_rnn` with a hand-written LSTM backward pass whose reverse
  loop carries only the recurrent gradient; the weight gradients are single matmuls after it.

Both are pure functions with the signature of `rnn_impls.RNNImpl`: the input, the sequence axis and
the stacked parameters of the forward and (when there) reverse direction. They give the reference
`Recurrence`'s results up to float rounding (tests/models/test_rnn_impls.py).
"""

from __future__ import annotations

import functools
from typing import Callable

import jax
import jax.numpy as jnp

from sequencer_jax.models.layers import Dtype
from sequencer_jax.models.recurrent import (Carry, CellType, RNNWeights, cell_update, lstm_gates,
                                            matmul_f32, zero_carry)

# gx (k, T, N, G*h) time-major, kernel_hh (k, h, G*h), bias_hh (k, G*h) -> hs (k, T, N, h), float32;
# every direction runs forwards in time from a zero state.
TimeLoop = Callable[[jax.Array, jax.Array, jax.Array], jax.Array]


def _scan_stacked(gx: jax.Array, kernel_hh: jax.Array, bias_hh: jax.Array, cell: CellType,
                  dtype: Dtype, unroll: int) -> jax.Array:
  """k directions in one scan, a `TimeLoop`."""
  k, _, n, _ = gx.shape
  bias = bias_hh.astype(jnp.float32)[:, None]

  def step(carry: Carry, gx_t: jax.Array) -> tuple[Carry, jax.Array]:
    gh = jnp.einsum('knh,khg->kng', carry[-1].astype(dtype), kernel_hh.astype(dtype),
                    preferred_element_type=jnp.float32) + bias
    return cell_update(cell, carry, gx_t, gh)

  _, hs = jax.lax.scan(step, zero_carry(cell, (k, n, kernel_hh.shape[1])),
                       jnp.swapaxes(gx, 0, 1), unroll=unroll)
  return jnp.swapaxes(hs, 0, 1)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def _lstm_scan_vjp(gx: jax.Array, kernel_hh: jax.Array, bias_hh: jax.Array, dtype: Dtype,
                   unroll: int) -> jax.Array:
  """`_scan_stacked` for the LSTM, with the backward pass below."""
  return _scan_stacked(gx, kernel_hh, bias_hh, 'lstm', dtype, unroll)


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


def _reverse_in_time(seqs: jax.Array) -> jax.Array:
  """(k, T, ...) with the reverse direction (index 1, when k = 2) flipped along T."""
  return seqs if len(seqs) == 1 else jnp.stack([seqs[0], seqs[1, ::-1]])


def over_directions(loop: TimeLoop, x: jax.Array, axis: int, weights: RNNWeights,
                    dtype: Dtype) -> jax.Array:
  """One input projection for all k directions, `loop` over their time-major sequences, and the
  hidden states laid out like x with [forward, reverse] channels."""
  k, input_size, width = weights.kernel_ih.shape
  axis = axis % x.ndim
  kernel_ih = jnp.swapaxes(weights.kernel_ih, 0, 1).reshape(input_size, k * width)
  gx = matmul_f32(x, kernel_ih, dtype) + weights.bias_ih.reshape(-1).astype(jnp.float32)
  gx = jnp.moveaxis(gx, axis, 0)
  layout = gx.shape[:-1]  # (T, the other axes of x).
  gx = gx.reshape(layout[0], -1, k, width).transpose(2, 0, 1, 3)  # (k, T, N, G*h)
  hs = _reverse_in_time(loop(_reverse_in_time(gx), weights.kernel_hh, weights.bias_hh))
  hs = hs.transpose(1, 2, 0, 3).reshape(layout + (-1,))  # (T, ..., k*h)
  return jnp.moveaxis(hs, 0, axis).astype(dtype)


def fused_rnn(x: jax.Array, axis: int, weights: RNNWeights, *, cell: CellType, dtype: Dtype,
              unroll: int) -> jax.Array:
  """rnn_impl 'fused': the directions in one projection and one scan, backward by autodiff."""
  loop = lambda gx, kernel_hh, bias_hh: _scan_stacked(gx, kernel_hh, bias_hh, cell, dtype, unroll)
  return over_directions(loop, x, axis, weights, dtype)


def fused_rnn_vjp(x: jax.Array, axis: int, weights: RNNWeights, *, cell: CellType, dtype: Dtype,
                  unroll: int) -> jax.Array:
  """rnn_impl 'fused_vjp': `fused_rnn` with the hand-written LSTM backward pass."""
  if cell != 'lstm':
    raise ValueError(f"rnn_impl 'fused_vjp' implements the LSTM only, not {cell!r}; "
                     f"use 'fused' or 'per_direction'")
  loop = lambda gx, kernel_hh, bias_hh: _lstm_scan_vjp(gx, kernel_hh, bias_hh, dtype, unroll)
  return over_directions(loop, x, axis, weights, dtype)
