"""The one seam between the model and the recurrence implementations: `run_rnns`.

`rnn_impl` names what runs the token mixer's recurrences; all give the same results up to float
rounding, from the same parameters:

* 'per_direction': each direction is its own `nn.scan` (`recurrent.py`, the reference);
* 'fused', 'fused_vjp': all directions in one projection and one scan (`fused.py`);
* 'auto': `default_rnn_impl`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from sequencer_jax.models.fused import fused_directions
from sequencer_jax.models.recurrent import BidirectionalRNN, CellType

RNN_IMPLS = ('per_direction', 'fused', 'fused_vjp')


def default_rnn_impl(cell: CellType) -> str:
  """What `rnn_impl='auto'` runs: the fastest measured on the CPU ('per_direction'); elsewhere,
  unmeasured, the fused scan with the hand-written backward for LSTMs (docs/performance.md)."""
  if jax.default_backend() == 'cpu':
    return 'per_direction'
  return 'fused_vjp' if cell == 'lstm' else 'fused'


def run_rnns(x: jax.Array, rnns: list[tuple[BidirectionalRNN, int]],
             impl: str) -> list[jax.Array]:
  """Each bidirectional RNN over its axis of x: its output, [forward, reverse] channels."""
  if impl == 'auto':
    impl = default_rnn_impl(rnns[0][0].cell)
  if impl not in RNN_IMPLS:
    raise ValueError(f'unknown rnn_impl {impl!r}; expected "auto" or one of {list(RNN_IMPLS)}')
  if impl == 'per_direction':
    return [rnn(x, axis) for rnn, axis in rnns]
  directions = [(d, axis) for rnn, axis in rnns for d in rnn.directions()]
  hs = iter(fused_directions(x, directions, impl))
  return [jnp.concatenate([next(hs) for _ in rnn.directions()], axis=-1) for rnn, _ in rnns]
