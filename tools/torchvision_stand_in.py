"""A torchvision stand-in that makes timm importable where torchvision is not installed.

For the tests and the benchmarks on the CPU: timm imports torchvision at import time, but its
model code never uses it, and the CPU build of torch has no matching torchvision wheel
(installing one replaces torch). `install()` registers a minimal stand-in: the names timm imports
exist, and anything that would really need torchvision fails loudly. It imports neither torch nor
timm, and does nothing where a real torchvision is importable. The library never imports this.
"""

from __future__ import annotations

import enum
import importlib.util
import sys
import types
from typing import Any


class _FrozenBatchNorm2d:
  """timm only imports the name and tests isinstance against it."""

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


def install() -> None:
  """Registers the stand-in in sys.modules unless a real torchvision is importable."""
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
  """`import timm`, with the stand-in registered first if needed."""
  install()
  import timm
  return timm
