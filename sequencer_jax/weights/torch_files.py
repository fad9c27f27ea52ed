"""Reading PyTorch checkpoint files (`.pth`/`.bin`/`.pt`, `.safetensors`) and writing them back.

Pickle-based files go through `torch.load(weights_only=True)`, which refuses any object other than
tensors and plain containers, so no code in a file is ever run; `.safetensors` need no torch.
"""

from __future__ import annotations

import os
from typing import Any, Mapping

import jax
import numpy as np

from sequencer_jax.weights.model_format import ModelRecord
from sequencer_jax.weights.torch_keys import ConversionError, StateDict, flax_to_torch, torch_layout_for


def read_state_dict(path: str) -> StateDict:
  """Reads a PyTorch checkpoint (`.pth`/`.bin`/`.pt` or `.safetensors`) as NumPy arrays.

  A `state_dict`/`model` wrapper and a `module.` prefix are removed.
  """
  if os.path.isdir(path):
    raise ConversionError(f'{path} is a directory, not a checkpoint file')
  if not os.path.isfile(path):
    raise ConversionError(f'{path} does not exist')
  if os.path.getsize(path) == 0:
    raise ConversionError(f'{path} is empty')
  with open(path, 'rb') as f:
    head = f.read(8)
  if path.endswith('.safetensors'):
    raw = _read_safetensors(path)
  elif head[:4] == b'PK\x03\x04' or head[:1] == b'\x80':  # torch zip format or legacy pickle.
    raw = _read_torch(path)
  else:
    raise ConversionError(
        f'{path} is not a PyTorch checkpoint (expected a torch.save zip/pickle or .safetensors)')
  return _unwrap(raw, path)


def _read_safetensors(path: str) -> StateDict:
  from safetensors import SafetensorError
  from safetensors.numpy import load_file
  try:
    return load_file(path)
  except (SafetensorError, OSError, ValueError) as e:
    raise ConversionError(f'{path} is not a readable safetensors file: {e}') from None


def _read_torch(path: str) -> Any:
  try:
    import torch
  except ImportError:
    raise ConversionError(f'reading {path} needs torch (pip install torch); '
                          f'.safetensors files can be read without it') from None
  try:
    obj = torch.load(path, map_location='cpu', weights_only=True)
  except Exception as e:  # torch raises several types for truncated or hostile files.
    if 'weights_only' in str(e) or 'Unsupported global' in str(e):
      raise ConversionError(
          f'refused to load {path}: it contains Python objects other than tensors, which '
          f'could run code when unpickled. Only plain state_dicts are accepted') from None
    raise ConversionError(f'{path} could not be read as a PyTorch checkpoint '
                          f'(truncated or corrupted?): {type(e).__name__}: {e}') from None
  return obj


def _unwrap(obj: Any, path: str) -> StateDict:
  for key in ('state_dict', 'model'):
    if isinstance(obj, Mapping) and key in obj and isinstance(obj[key], Mapping):
      obj = obj[key]
  if not isinstance(obj, Mapping):
    raise ConversionError(f'{path} holds a {type(obj).__name__}, not a state_dict')
  out: StateDict = {}
  for key, value in obj.items():
    if not isinstance(key, str) or not hasattr(value, 'shape'):
      raise ConversionError(f'{path}: entry {key!r} is not a tensor')
    if hasattr(value, 'detach'):  # torch.Tensor
      value = value.detach().cpu().float().numpy() if value.is_floating_point() \
          else value.detach().cpu().numpy()
    out[key.removeprefix('module.')] = np.asarray(value)
  return out


def export_file(record: ModelRecord, params: Any, dst: str, layout: str | None = None) -> str:
  """Writes `params` (described by `record`) as a PyTorch state_dict in `dst` (.safetensors).

  The default layout is timm's for timm's own models (load it with `timm.create_model(name,
  num_classes=N).load_state_dict(..., strict=True)`), else the original repository's. Returns
  the layout written.
  """
  from safetensors.numpy import save_file
  if not dst.endswith('.safetensors'):
    raise ValueError(f'{dst}: the export is written as .safetensors; name the file *.safetensors')
  if os.path.exists(dst):
    raise FileExistsError(f'{dst} already exists; refusing to overwrite it')
  layout = layout or torch_layout_for(record.arch)
  sd = flax_to_torch(jax.device_get(params), layout, record.arch.layers)
  tmp = f'{dst}.tmp-{os.getpid()}'
  try:
    save_file(sd, tmp, metadata={'format': 'pt', 'model': record.name or 'custom',
                                 'layout': layout, 'num_classes': str(record.num_classes)})
    os.replace(tmp, dst)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)
  return layout
