"""Analytic multiply-accumulate counts, the convention of the paper's "FLOPs" column.

The paper's 8.4G / 11.1G / 16.6G for Sequencer2D-S/M/L are MACs of the convs and matmuls including
every LSTM gate matmul (timm's model cards leave the LSTMs out and say 4.96 GMACs for S).
FLOPs = 2 x MACs; norms, activations and the gate arithmetic are not counted.
"""

from __future__ import annotations

from sequencer_jax.models.recurrent import GATES
from sequencer_jax.models.sequencer import SequencerArch


def forward_macs(arch: SequencerArch, height: int, width: int, num_classes: int = 1000) -> int:
  """MACs of one forward pass of one image of size height x width."""
  h, w = height // arch.patch_sizes[0], width // arch.patch_sizes[0]
  macs = h * w * arch.embed_dims[0] * 3 * arch.patch_sizes[0] ** 2
  gates = GATES[arch.cell]
  for i, depth in enumerate(arch.layers):
    dim, hidden = arch.embed_dims[i], arch.hidden_sizes[i]
    if i > 0:
      p = arch.patch_sizes[i]
      h, w = h // p, w // p
      macs += h * w * dim * arch.embed_dims[i - 1] * p * p
    branches = 1 if arch.vanilla or arch.union in ('vertical', 'horizontal') else 2
    directions = branches * (2 if arch.bidirectional else 1)
    per_token = directions * gates * hidden * (dim + hidden)
    if arch.with_fc:
      per_token += arch.mixer_width(hidden) * dim
    per_token += 2 * dim * int(arch.mlp_ratio * dim)
    macs += depth * h * w * per_token
  return macs + arch.embed_dims[-1] * num_classes


def forward_flops(arch: SequencerArch, height: int, width: int, num_classes: int = 1000) -> int:
  """2 x MACs."""
  return 2 * forward_macs(arch, height, width, num_classes)

