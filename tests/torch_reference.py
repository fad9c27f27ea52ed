"""A PyTorch reference of the original code's Sequencer variants, written from the specification.

timm has only the LSTM Sequencer2D; the GRU/RNN cells, the unidirectional/add/vertical/horizontal
and without-fc ablations and the vanilla 1D Sequencer exist only in the original repository. This
module rebuilds them from torch.nn.LSTM/GRU/RNN with the original repository's module names, so
its `state_dict()` has the original key layout (`blocks.i.j`, `blocks.i.<depth>.down`, `head`).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from sequencer_jax.models import SequencerArch

_CELLS = {'lstm': nn.LSTM, 'gru': nn.GRU, 'rnn': nn.RNN}


class RNN2DBase(nn.Module):
  """`RNN2DBase` with `LSTM2D`/`GRU2D`/`RNN2D` cells (spec 2.5)."""

  def __init__(self, dim: int, hidden: int, arch: SequencerArch):
    super().__init__()
    cell = _CELLS[arch.cell]
    out = 2 * hidden if arch.bidirectional else hidden
    self.union, self.with_fc = arch.union, arch.with_fc
    self.with_vertical = arch.union != 'horizontal'
    self.with_horizontal = arch.union != 'vertical'
    if self.with_vertical:
      self.rnn_v = cell(dim, hidden, 1, batch_first=True, bidirectional=arch.bidirectional)
    if self.with_horizontal:
      self.rnn_h = cell(dim, hidden, 1, batch_first=True, bidirectional=arch.bidirectional)
    if arch.with_fc:
      self.fc = nn.Linear(2 * out if arch.union == 'cat' else out, dim)

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    b, h, w, c = x.shape
    if self.with_vertical:
      v = x.permute(0, 2, 1, 3).reshape(-1, h, c)
      v, _ = self.rnn_v(v)
      v = v.reshape(b, w, h, -1).permute(0, 2, 1, 3)
    if self.with_horizontal:
      hz, _ = self.rnn_h(x.reshape(-1, w, c))
      hz = hz.reshape(b, h, w, -1)
    if self.with_vertical and self.with_horizontal:
      x = torch.cat([v, hz], dim=-1) if self.union == 'cat' else v + hz
    else:
      x = v if self.with_vertical else hz
    return self.fc(x) if self.with_fc else x


class RNN1D(nn.Module):
  """The vanilla Sequencer's `LSTM(RNNBase)`: one BiRNN over the raster order."""

  def __init__(self, dim: int, hidden: int, arch: SequencerArch):
    super().__init__()
    self.rnn = _CELLS[arch.cell](dim, hidden, 1, batch_first=True,
                                 bidirectional=arch.bidirectional)

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    b, h, w, c = x.shape
    y, _ = self.rnn(x.reshape(b, -1, c))
    return y.reshape(b, h, w, -1)


class Mlp(nn.Module):
  def __init__(self, dim: int, hidden: int):
    super().__init__()
    self.fc1, self.act, self.fc2 = nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim)

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
  def __init__(self, dim: int, hidden: int, arch: SequencerArch):
    super().__init__()
    self.norm1 = nn.LayerNorm(dim, eps=1e-6)
    self.rnn_tokens = (RNN1D if arch.vanilla else RNN2DBase)(dim, hidden, arch)
    self.norm2 = nn.LayerNorm(dim, eps=1e-6)
    self.mlp_channels = Mlp(dim, int(arch.mlp_ratio * dim))

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    x = x + self.rnn_tokens(self.norm1(x))
    return x + self.mlp_channels(self.norm2(x))


class Downsample2D(nn.Module):
  def __init__(self, dim_in: int, dim_out: int, patch: int):
    super().__init__()
    self.down = nn.Conv2d(dim_in, dim_out, patch, patch)

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    return self.down(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)


class PatchEmbed(nn.Module):
  def __init__(self, dim: int, patch: int):
    super().__init__()
    self.proj = nn.Conv2d(3, dim, patch, patch)

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    return self.proj(x)


class OriginalSequencer(nn.Module):
  """`Sequencer2D` / `VanillaSequencer` of the original repository (inference path)."""

  def __init__(self, arch: SequencerArch, num_classes: int = 1000):
    super().__init__()
    self.stem = PatchEmbed(arch.embed_dims[0], arch.patch_sizes[0])
    if arch.pos_embed_size is not None:
      n = arch.pos_embed_size
      self.absolute_pos_embed = nn.Parameter(torch.zeros(1, n, n, arch.embed_dims[0]))
    stages = []
    for i, depth in enumerate(arch.layers):
      blocks = [Block(arch.embed_dims[i], arch.hidden_sizes[i], arch) for _ in range(depth)]
      if i + 1 < len(arch.layers):
        blocks.append(Downsample2D(arch.embed_dims[i], arch.embed_dims[i + 1],
                                   arch.patch_sizes[i + 1]))
      stages.append(nn.Sequential(*blocks))
    self.blocks = nn.Sequential(*stages)
    self.norm = nn.LayerNorm(arch.embed_dims[-1], eps=1e-6)
    self.head = nn.Linear(arch.embed_dims[-1], num_classes)

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    x = self.stem(x).permute(0, 2, 3, 1)
    if hasattr(self, 'absolute_pos_embed'):
      x = x + self.absolute_pos_embed
    x = self.norm(self.blocks(x))
    return self.head(x.mean(dim=(1, 2)))


def randomize_(model: nn.Module, seed: int) -> nn.Module:
  """Redraws every tensor so that no comparison can pass by accident.

  The reference zero-initialises its head (every logit 0), so both sides would agree whatever
  the body computes. Matrices get N(0, 1/fan_in), norm weights 1 + N(0, 0.1^2), the rest
  N(0, 0.1^2).
  """
  g = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for name, p in model.named_parameters():
      noise = torch.randn(p.shape, generator=g)
      if p.ndim >= 2:
        p.copy_(noise / np.sqrt(np.prod(p.shape[1:])))
      elif name.endswith('norm1.weight') or name.endswith('norm2.weight') or name == 'norm.weight':
        p.copy_(1.0 + 0.1 * noise)
      else:
        p.copy_(0.1 * noise)
  return model.eval()


def state_dict_numpy(model: nn.Module) -> dict[str, np.ndarray]:
  return {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}
