"""rnn_impl 'pallas': the time loop of every cell as Pallas kernels that keep the state on chip.

The input projection stays one large matmul outside the kernels (`fused.over_directions`). The
forward kernel runs over a grid of (direction, block of sequences); each program loads its
direction's recurrent weights once and loops over all the time steps with its block's carry in
registers / VMEM, writing the hidden states and the activations the backward pass needs. The
backward kernel, wired as a `jax.custom_vjp`, runs the reverse loop carrying only the recurrent
gradient and writes the gradient of the pre-activations; the weight gradients are single matmuls
after it, as in `fused_rnn_vjp`.

Lowering: on the CPU the kernels run with `interpret=True`; on a TPU they lower through Mosaic
(`tpu_custom_call`); on a GPU through Triton, chosen by its compiler params (docs/design.md).
Inside the kernels each gate is its own (rows, hidden) tile: hidden is padded to a power of two
(at least 16) and rows to a multiple of the block, with zeros, which keep the padded units at zero.

Sharding: XLA cannot partition a Pallas call, so under a context mesh with a 'data' axis
(`sharding.on_mesh`, which the train and predict steps use) each kernel runs in a `jax.shard_map`
over the rows, which are the batch's; each device pads its own rows to its blocks.
"""

from __future__ import annotations

import functools
from typing import Callable

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu
from jax.experimental.pallas import triton as pltriton
from jax.sharding import PartitionSpec as P

from sequencer_jax.models.fused import over_directions
from sequencer_jax.models.layers import Dtype
from sequencer_jax.models.recurrent import GATES, Carry, CellType, RNNWeights
from sequencer_jax.sharding import DATA

# What the forward pass keeps per time step besides h, each a (rows, hidden) tile: the LSTM's
# activated gates i, f, g, o and cell state c; the GRU's r, z, n and its h W_hn + b_hn.
SAVED = {'lstm': 5, 'gru': 4, 'rnn': 0}
MAX_BLOCK_ROWS = 128
BLOCK_BYTES = 6 * 2**20  # A TPU program's double-buffered blocks stay well inside scoped VMEM.
Tiles = list[jax.Array]
# A kernel on the rows of one device: (arrays with rows on axis -2, arrays given whole) -> outputs.
Kernel = Callable[[list[jax.Array], list[jax.Array]], list[jax.Array]]


def _padded_hidden(hidden: int) -> int:
  """The hidden width inside the kernels: a power of two (Triton's tiles), at least 16 (its dot)."""
  return max(16, pl.next_power_of_2(hidden))


def _block_rows(rows: int, steps: int, hidden: int, cell: CellType) -> int:
  """Sequences per program: a power of two in [16, 128] whose blocks fit `BLOCK_BYTES`."""
  tiles = GATES[cell] + SAVED[cell] + 2  # The larger pass's blocks: dh, h, saved, dz.
  block = min(MAX_BLOCK_ROWS, max(16, pl.next_power_of_2(rows)))
  while block > 16 and 2 * 4 * tiles * steps * block * hidden > BLOCK_BYTES:
    block //= 2
  return block


def _forward_step(cell: CellType, carry: Carry, gx: Tiles, gh: Tiles) -> tuple[Carry, Tiles]:
  """One step of the gate arithmetic on tiles: the new carry and what the backward pass needs."""
  if cell == 'lstm':
    i, f, o = (jax.nn.sigmoid(gx[j] + gh[j]) for j in (0, 1, 3))
    g = jnp.tanh(gx[2] + gh[2])
    c = f * carry[0] + i * g
    return (c, o * jnp.tanh(c)), [i, f, g, o, c]
  if cell == 'gru':
    r, z = (jax.nn.sigmoid(gx[j] + gh[j]) for j in (0, 1))
    n = jnp.tanh(gx[2] + r * gh[2])
    return ((1.0 - z) * n + z * carry[0],), [r, z, n, gh[2]]
  return (jnp.tanh(gx[0] + gh[0]),), []


def _forward_kernel(cell: CellType, dtype: Dtype, gx_ref, w_ref, b_ref, hs_ref,
                    *saved_ref) -> None:
  """One block of sequences of one direction, every time step: gx (T, G, rows, h) in, hs out."""
  gates = GATES[cell]
  w = [w_ref[g].astype(dtype) for g in range(gates)]  # Loaded once, on chip for the whole loop.
  b = [b_ref[g] for g in range(gates)]

  def step(t, carry):
    gh = [jnp.dot(carry[-1].astype(dtype), w[g], preferred_element_type=jnp.float32) + b[g]
          for g in range(gates)]
    carry, saved = _forward_step(cell, carry, [gx_ref[t, g] for g in range(gates)], gh)
    hs_ref[t] = carry[-1]
    for j, tile in enumerate(saved):
      saved_ref[0][t, j] = tile
    return carry

  zero = jnp.zeros(hs_ref.shape[1:], jnp.float32)
  jax.lax.fori_loop(0, hs_ref.shape[0], step, (zero, zero) if cell == 'lstm' else (zero,))


def _backward_step(cell: CellType, dh: jax.Array, dc: jax.Array | None, saved: Tiles,
                   h: jax.Array, previous: jax.Array | None) -> tuple[Tiles, Tiles]:
  """One reverse step given dL/dh (and the LSTM's dL/dc) after it and the state before it
  (`previous`: the LSTM's c, the GRU's h): (d gx, [the part of dL/dh_prev that bypasses W_hh,
  and the LSTM's dL/dc_prev])."""
  if cell == 'lstm':
    i, f, g, o, c = saved
    tanh_c = jnp.tanh(c)
    dc = dc + dh * o * (1.0 - tanh_c * tanh_c)
    return [dc * g * i * (1.0 - i), dc * previous * f * (1.0 - f), dc * i * (1.0 - g * g),
            dh * tanh_c * o * (1.0 - o)], [jnp.zeros_like(dh), dc * f]
  if cell == 'gru':
    r, z, n, hn = saved
    dn = dh * (1.0 - z) * (1.0 - n * n)
    return [dn * hn * r * (1.0 - r), dh * (previous - n) * z * (1.0 - z), dn], [dh * z]
  return [dh * (1.0 - h * h)], [jnp.zeros_like(dh)]


def _backward_kernel(cell: CellType, dtype: Dtype, dhs_ref, hs_ref, *refs) -> None:
  """The reverse loop of one block: dL/dhs (T, rows, h) in, d gx (T, G, rows, h) out."""
  saved_ref, wt_ref, dgx_ref = refs if SAVED[cell] else (None, *refs)
  gates, steps = GATES[cell], hs_ref.shape[0]
  wt = [wt_ref[g].astype(dtype) for g in range(gates)]  # W_hh's transposed gate blocks.

  def step(s, carry):
    t = steps - 1 - s
    saved = [saved_ref[t, j] for j in range(SAVED[cell])]
    previous = None
    if cell != 'rnn':
      before = jnp.maximum(t - 1, 0)
      previous = jnp.where(t > 0, saved_ref[before, 4] if cell == 'lstm' else hs_ref[before], 0.0)
    dc_next = carry[1] if cell == 'lstm' else None
    dgx, (dh_prev, *dc) = _backward_step(cell, dhs_ref[t] + carry[0], dc_next, saved, hs_ref[t],
                                         previous)
    dgh = (dgx[:2] + [dgx[2] * saved[0]]) if cell == 'gru' else dgx  # d(h W_hn) = r * d n.
    for g in range(gates):
      dgx_ref[t, g] = dgx[g]
      dh_prev = dh_prev + jnp.dot(dgh[g].astype(dtype), wt[g], preferred_element_type=jnp.float32)
    return (dh_prev, *dc)

  zero = jnp.zeros(hs_ref.shape[1:], jnp.float32)
  jax.lax.fori_loop(0, steps, step, (zero, zero) if cell == 'lstm' else (zero,))


def _spec(shape: tuple[int, ...], rows_axis: int | None = None) -> pl.BlockSpec:
  """One direction's block of `shape` (the direction axis squeezed); along `rows_axis`, the
  block of rows the grid's second index names."""
  return pl.BlockSpec((pl.squeezed, *shape), lambda d, i: (
      d, *(i if a == rows_axis else 0 for a in range(len(shape)))))


def _call(kernel: Callable[..., None], inputs: list[jax.Array], in_specs: list[pl.BlockSpec],
          outputs: list[jax.ShapeDtypeStruct], out_specs: list[pl.BlockSpec],
          grid: tuple[int, int]) -> list[jax.Array]:
  """`kernel` over the grid (direction, block of rows), lowered for the platform that runs it."""
  def run(interpret: bool, params: pl.CompilerParams | None) -> Callable[..., list[jax.Array]]:
    return pl.pallas_call(kernel, outputs, grid=grid, in_specs=in_specs, out_specs=out_specs,
                          interpret=interpret, compiler_params=params)

  # The GPU lowering is Triton's (docs/design.md): Mosaic GPU stages each block whole in shared
  # memory (a block's gx for every time step does not fit) and its `pallas_call` path is
  # deprecated; Triton reads the blocks from global memory step by step.
  triton = run(False, pltriton.CompilerParams(num_warps=4, num_stages=1))
  return jax.lax.platform_dependent(
      *inputs, cpu=run(True, None), cuda=triton, rocm=triton,
      tpu=run(False, pltpu.CompilerParams(dimension_semantics=('parallel', 'parallel'))))


def _pad_rows(x: jax.Array, pad: int) -> jax.Array:
  """x with `pad` rows of zeros after its rows (axis -2)."""
  return jnp.pad(x, ((0, 0),) * (x.ndim - 2) + ((0, pad), (0, 0)))


def _forward(rowed: list[jax.Array], whole: list[jax.Array], cell: CellType,
             dtype: Dtype) -> list[jax.Array]:
  """The forward kernel on the kernel layout: [gx (k, T, G, N, h)] and [w (k, G, h, h),
  b (k, G, 1, h)] -> [hs (k, T, N, h), then the saved activations (k, T, SAVED, N, h) where the
  cell has any]. The rows are padded to a multiple of the block here."""
  (gx,), (w, b) = rowed, whole
  k, steps, gates, n, hidden = gx.shape
  rows = _block_rows(n, steps, hidden, cell)
  gx = _pad_rows(gx, -n % rows)
  padded = gx.shape[3]
  output = functools.partial(jax.ShapeDtypeStruct, dtype=jnp.float32)
  outputs = [output((k, steps, padded, hidden))]
  out_specs = [_spec((steps, rows, hidden), 1)]
  if SAVED[cell]:
    outputs.append(output((k, steps, SAVED[cell], padded, hidden)))
    out_specs.append(_spec((steps, SAVED[cell], rows, hidden), 2))
  in_specs = [_spec((steps, gates, rows, hidden), 2), _spec(w.shape[1:]), _spec(b.shape[1:])]
  kernel = functools.partial(_forward_kernel, cell, dtype)
  outs = _call(kernel, [gx, w, b], in_specs, outputs, out_specs, (k, padded // rows))
  return [out[..., :n, :] for out in outs]


def _backward(rowed: list[jax.Array], whole: list[jax.Array], cell: CellType,
              dtype: Dtype) -> list[jax.Array]:
  """The backward kernel: [dL/dhs, hs, the saved activations] and [W_hh's transposed gate
  blocks] -> [d gx (k, T, G, N, h)]. The rows are padded to a multiple of the block here."""
  (wt,) = whole
  k, steps, n, hidden = rowed[0].shape
  gates = wt.shape[1]
  rows = _block_rows(n, steps, hidden, cell)
  rowed = [_pad_rows(x, -n % rows) for x in rowed]
  padded = rowed[0].shape[2]
  in_specs = [_spec((steps, rows, hidden), 1)] * 2
  in_specs += [_spec((steps, SAVED[cell], rows, hidden), 2) for _ in rowed[2:]]
  in_specs.append(_spec(wt.shape[1:]))
  output = jax.ShapeDtypeStruct((k, steps, gates, padded, hidden), jnp.float32)
  kernel = functools.partial(_backward_kernel, cell, dtype)
  dgx, = _call(kernel, [*rowed, wt], in_specs, [output],
               [_spec((steps, gates, rows, hidden), 2)], (k, padded // rows))
  return [dgx[..., :n, :]]


def _on_devices(kernel: Kernel, rowed: list[jax.Array], whole: list[jax.Array],
                out_ndims: list[int]) -> list[jax.Array]:
  """`kernel(rowed, whole)` on each device's rows: a `jax.shard_map` over the context mesh's
  'data' axis (`sharding.on_mesh`), which XLA cannot do for a Pallas call by itself.

  The rows are axis -2 of `rowed` and of each output (of `out_ndims` dimensions); they are the
  batch's rows, so sharding them over 'data' follows the batch's sharding and moves no data.
  `whole` (the weights) is given whole to every device. Without a mesh of more than one device
  on 'data', `kernel` runs on all the rows at once."""
  mesh = jax.sharding.get_abstract_mesh()
  shards = 1 if mesh.empty or DATA not in mesh.axis_names else mesh.shape[DATA]
  if shards == 1:
    return kernel(rowed, whole)
  n = rowed[0].shape[-2]
  rowed = [_pad_rows(x, -n % shards) for x in rowed]  # Only where the rows do not divide.
  spec = lambda ndim: P(*[None] * (ndim - 2), DATA, None)
  # Nothing differentiates through this shard_map (the custom_vjp is outside it), so its
  # varying-axes checks buy nothing; Pallas's interpreter also fails them (JAX 0.10.2: "Scan carry
  # input and output got mismatched varying manual axes").
  outs = jax.shard_map(kernel, mesh=mesh, in_specs=([spec(x.ndim) for x in rowed], P()),
                       out_specs=[spec(ndim) for ndim in out_ndims], check_vma=False)(rowed, whole)
  return [out[..., :n, :] for out in outs]


def _forward_on_devices(gx: jax.Array, w: jax.Array, b: jax.Array, cell: CellType,
                        dtype: Dtype) -> list[jax.Array]:
  """`_forward` on each device's rows: hs (4-d), then the saved activations (5-d) if any."""
  kernel = functools.partial(_forward, cell=cell, dtype=dtype)
  return _on_devices(kernel, [gx], [w, b], [4] + [5] * bool(SAVED[cell]))


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def _recurrence(gx: jax.Array, w: jax.Array, b: jax.Array, cell: CellType,
                dtype: Dtype) -> jax.Array:
  """hs from the kernel layout's gx, w and b (`_forward`), with the backward kernel's gradient."""
  return _forward_on_devices(gx, w, b, cell, dtype)[0]


def _recurrence_fwd(gx: jax.Array, w: jax.Array, b: jax.Array, cell: CellType,
                    dtype: Dtype) -> tuple[jax.Array, tuple]:
  hs, *saved = _forward_on_devices(gx, w, b, cell, dtype)
  return hs, (hs, saved, w)


def _recurrence_bwd(cell: CellType, dtype: Dtype, residuals: tuple,
                    dhs: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
  hs, saved, w = residuals
  kernel = functools.partial(_backward, cell=cell, dtype=dtype)
  dgx, = _on_devices(kernel, [dhs, hs, *saved], [jnp.swapaxes(w, -1, -2)], [5])
  dgh = dgx.at[:, :, 2].multiply(saved[0][:, :, 0]) if cell == 'gru' else dgx  # r * d n.
  h_prev = jnp.pad(hs[:, :-1], ((0, 0), (1, 0), (0, 0), (0, 0)))
  dw = jnp.einsum('ktni,ktgnj->kgij', h_prev.astype(dtype), dgh.astype(dtype),
                  preferred_element_type=jnp.float32)
  return dgx, dw.astype(w.dtype), dgh.sum(axis=(1, 3), keepdims=True)[:, 0]


_recurrence.defvjp(_recurrence_fwd, _recurrence_bwd)


def _pallas_loop(cell: CellType, dtype: Dtype, gx: jax.Array, kernel_hh: jax.Array,
                 bias_hh: jax.Array) -> jax.Array:
  """A `fused.TimeLoop`: (k, T, N, G*h) in the fused layout, hidden padded to the kernels' and
  back (the rows are padded per device, `_forward`)."""
  k, steps, n, width = gx.shape
  gates = GATES[cell]
  hidden = width // gates
  pad_hidden = (0, _padded_hidden(hidden) - hidden)
  gx = gx.reshape(k, steps, n, gates, hidden).transpose(0, 1, 3, 2, 4)
  gx = jnp.pad(gx, ((0, 0),) * 4 + (pad_hidden,))
  w = kernel_hh.reshape(k, hidden, gates, hidden).transpose(0, 2, 1, 3)
  w = jnp.pad(w, ((0, 0), (0, 0), pad_hidden, pad_hidden))
  b = jnp.pad(bias_hh.astype(jnp.float32).reshape(k, gates, 1, hidden),
              ((0, 0),) * 3 + (pad_hidden,))
  return _recurrence(gx, w, b, cell, dtype)[..., :hidden]


def pallas_rnn(x: jax.Array, axis: int, weights: RNNWeights, *, cell: CellType, dtype: Dtype,
               unroll: int) -> jax.Array:
  """rnn_impl 'pallas': the directions' input projection as one matmul, then the kernels.

  `unroll` is not used: the time loop runs inside the kernels, without per-step launches, and
  Triton lowers no unrolled loop.
  """
  del unroll
  loop = functools.partial(_pallas_loop, cell, dtype)
  return over_directions(loop, x, axis, weights, dtype)
