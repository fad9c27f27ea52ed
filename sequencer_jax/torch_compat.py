"""Makes timm importable where torchvision is not installed (tests, `--check`, the benchmark).

timm imports torchvision at import time, but its model code never uses it. The CPU build of torch
has no matching torchvision wheel (installing one replaces torch), so where torchvision is absent
`import_timm()` first registers a minimal stand-in: the names timm imports exist, and anything
that would really need torchvision fails loudly. A real torchvision is always preferred.
"""

from __future__ import annotations

import enum
import importlib.util
import sys
import types
from typing import Any

import torch

from sequencer_jax.model import SequencerArch


class _FrozenBatchNorm2d(torch.nn.Module):
  def __init__(self, *args, **kwargs):
    raise NotImplementedError('torchvision stand-in: FrozenBatchNorm2d is not available')


class _InterpolationMode(enum.Enum):
  NEAREST = 'nearest'
  NEAREST_EXACT = 'nearest-exact'
  BILINEAR = 'bilinear'
  BICUBIC = 'bicubic'
  BOX = 'box'
  HAMMING = 'hamming'
  LANCZOS = 'lanczos'


def _placeholder(module: str):
  """Module-level __getattr__: any other name is a class that refuses to be used."""

  def getattr_(name: str) -> type:
    if name.startswith('__'):
      raise AttributeError(name)

    def refuse(*args, **kwargs):
      raise NotImplementedError(f'torchvision stand-in: {module}.{name} is not available')

    return type(name, (), {'__init__': refuse, '__call__': refuse})

  return getattr_


def _install_stand_in() -> None:
  """Registers the stand-in unless a real torchvision is importable."""
  if 'torchvision' in sys.modules or importlib.util.find_spec('torchvision') is not None:
    return
  names = ['torchvision', 'torchvision.ops', 'torchvision.ops.misc', 'torchvision.transforms',
           'torchvision.transforms.functional', 'torchvision.datasets', 'torchvision.models',
           'torchvision.models.feature_extraction', 'torchvision.utils']
  modules = {name: types.ModuleType(name) for name in names}
  for name, module in modules.items():
    parent, _, child = name.rpartition('.')
    if parent:
      setattr(modules[parent], child, module)
    module.__getattr__ = _placeholder(name)
    sys.modules[name] = module
  modules['torchvision'].__version__ = '0.0.0+stand-in'
  modules['torchvision.ops.misc'].FrozenBatchNorm2d = _FrozenBatchNorm2d
  modules['torchvision.transforms'].InterpolationMode = _InterpolationMode
  modules['torchvision.transforms.functional'].InterpolationMode = _InterpolationMode


def import_timm() -> Any:
  """`import timm`, with the torchvision stand-in registered first if needed."""
  _install_stand_in()
  import timm
  return timm


def timm_sequencer(arch: SequencerArch, num_classes: int = 1000) -> torch.nn.Module:
  """timm's `Sequencer2d` with this architecture (2D LSTM models only)."""
  if arch.cell != 'lstm' or arch.vanilla:
    raise ValueError(f'timm has only the LSTM Sequencer2D, not {arch.cell} / vanilla models')
  timm = import_timm()
  return timm.models.sequencer.Sequencer2d(
      num_classes=num_classes, layers=arch.layers, patch_sizes=arch.patch_sizes,
      embed_dims=arch.embed_dims, hidden_sizes=arch.hidden_sizes,
      mlp_ratios=(arch.mlp_ratio,) * len(arch.layers), bidirectional=arch.bidirectional,
      union=arch.union, with_fc=arch.with_fc)
