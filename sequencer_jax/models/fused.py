"""Fused recurrences: all directions of a token mixer in one input projection and one scan.

* 'fused': the directions share one input-projection matmul, and directions with equal sequence
  lengths (all four on square feature maps) run in one `lax.scan` with batched weights.
* 'fused_vjp': 'fused' with a hand-written LSTM backward pass whose reverse loop carries only the
  recurrent gradient; the weight gradients are single matmuls after it.

Both take the parameters of the reference `Recurrence` modules and give the same results up to
float rounding (tests/models/test_rnn_impls.py).
"""

from __future__ import annotations

import functools
from typing import Sequence

import jax
import jax.numpy as jnp

from sequencer_jax.models.layers import Dtype
from sequencer_jax.models.recurrent import (Carry, CellType, Recurrence, cell_update, lstm_gates,
                                            matmul_f32, zero_carry)



def _scan_stacked(cell: CellType, gx: jax.Array, kernel_hh: jax.Array, bias_hh: jax.Array,
                  dtype: Dtype, unroll: int) -> jax.Array:
  """k directions in one scan: gx (k, T, N, G*h) time-major -> hidden states (k, T, N, h)."""
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
  gx_all = matmul_f32(x, kernel_ih, dtype) + bias_ih.astype(jnp.float32)
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
