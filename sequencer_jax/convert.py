"""PyTorch <-> Flax weight mapping for Sequencer checkpoints (NumPy only; torch is optional).

Both PyTorch layouts are handled: the original repository's (`blocks.i.j`, downsample convs as
`blocks.i.<depth>.down`, `head`) and timm's (>= 0.9: `stages.i.blocks.j`,
`stages.i.downsample.down`, `head.fc`). Everything is first normalised to timm's key names, then
mapped one to one onto the Flax tree of a freshly traced model, so a missing, unexpected or
mis-shaped tensor is always reported by name.
"""

from __future__ import annotations

import os
import re
from typing import Any, Mapping

import jax
import numpy as np
from flax import traverse_util

from sequencer_jax.model import Sequencer, SequencerArch, abstract_params
from sequencer_jax.recurrent import GATES
from sequencer_jax.registry import name_for_arch

StateDict = dict[str, np.ndarray]
Params = dict[str, Any]
_CELL_BY_GATES = {gates: cell for cell, gates in GATES.items()}


class ConversionError(ValueError):
  """A checkpoint that cannot be converted; the message names the file, key or shape at fault."""


# ---------------------------------------------------------------------------------------------
# Reading files.


def read_state_dict(path: str) -> StateDict:
  """Reads a PyTorch checkpoint (`.pth`/`.bin`/`.pt` or `.safetensors`) as NumPy arrays.

  Pickle-based files go through `torch.load(weights_only=True)`, which refuses any object other
  than tensors and plain containers, so no code in the file is ever run. `.safetensors` files
  are read without torch. A `state_dict`/`model` wrapper and a `module.` prefix are removed.
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


# ---------------------------------------------------------------------------------------------
# Layouts.


def detect_layout(state_dict: Mapping[str, Any]) -> str:
  """'timm' (stages.i.blocks.j) or 'original' (blocks.i.j); anything else raises."""
  if any(k.startswith('stages.') for k in state_dict):
    return 'timm'
  if any(k.startswith('blocks.') for k in state_dict):
    return 'original'
  sample = ', '.join(list(state_dict)[:5]) or 'no keys at all'
  raise ConversionError(f'not a Sequencer state_dict: no stages.* or blocks.* keys ({sample})')


def original_to_timm(state_dict: Mapping[str, np.ndarray]) -> StateDict:
  """The rename of timm's `checkpoint_filter_fn` (spec 4.3)."""
  out: StateDict = {}
  for key, value in state_dict.items():
    key = re.sub(r'^blocks\.(\d+)\.\d+\.down', lambda m: f'stages.{int(m[1]) + 1}.downsample.down',
                 key)
    key = re.sub(r'^blocks\.(\d+)\.(\d+)', r'stages.\1.blocks.\2', key)
    key = re.sub(r'^head\.', 'head.fc.', key)
    out[key] = value
  return out


def timm_to_original(state_dict: Mapping[str, np.ndarray], layers: tuple[int, ...]) -> StateDict:
  """Inverse of `original_to_timm`: downsample i moves to the end of stage i-1."""
  out: StateDict = {}
  for key, value in state_dict.items():
    key = re.sub(r'^stages\.(\d+)\.downsample\.down',
                 lambda m: f'blocks.{int(m[1]) - 1}.{layers[int(m[1]) - 1]}.down', key)
    key = re.sub(r'^stages\.(\d+)\.blocks\.(\d+)', r'blocks.\1.\2', key)
    key = re.sub(r'^head\.fc\.', 'head.', key)
    out[key] = value
  return out


def to_timm_layout(state_dict: Mapping[str, np.ndarray]) -> StateDict:
  """Returns the state_dict in timm's key layout, whichever layout it came in."""
  if detect_layout(state_dict) == 'original':
    return original_to_timm(state_dict)
  return dict(state_dict)


def infer_arch(sd: Mapping[str, np.ndarray]) -> tuple[SequencerArch, int]:
  """Reads the architecture and the number of classes off a timm-layout state_dict's keys."""
  try:
    depths: dict[int, int] = {}
    for key in sd:
      m = re.match(r'stages\.(\d+)\.blocks\.(\d+)\.', key)
      if m:
        depths[int(m[1])] = max(depths.get(int(m[1]), 0), int(m[2]) + 1)
    n = len(depths)
    if n == 0 or sorted(depths) != list(range(n)):
      raise ConversionError(f'stage indices {sorted(depths)} are not 0..N-1')
    patch = [sd['stem.proj.weight'].shape[2]]
    patch += [sd[f'stages.{i}.downsample.down.weight'].shape[2] for i in range(1, n)]
    dims = [sd[f'stages.{i}.blocks.0.norm1.weight'].shape[0] for i in range(n)]
    b0 = 'stages.0.blocks.0.rnn_tokens.'
    vanilla = f'{b0}rnn.weight_hh_l0' in sd
    has_v, has_h = f'{b0}rnn_v.weight_hh_l0' in sd, f'{b0}rnn_h.weight_hh_l0' in sd
    rnn = 'rnn' if vanilla else ('rnn_v' if has_v else 'rnn_h')
    hidden = [sd[f'stages.{i}.blocks.0.rnn_tokens.{rnn}.weight_hh_l0'].shape[1] for i in range(n)]
    gates = sd[f'{b0}{rnn}.weight_hh_l0'].shape[0] // hidden[0]
    if gates not in _CELL_BY_GATES:
      raise ConversionError(f'{b0}{rnn}.weight_hh_l0 has {gates} gate blocks; expected 4 (LSTM), '
                            f'3 (GRU) or 1 (tanh RNN)')
    bidirectional = f'{b0}{rnn}.weight_hh_l0_reverse' in sd
    with_fc = f'{b0}fc.weight' in sd
    directional = hidden[0] * (2 if bidirectional else 1)
    if vanilla or not (has_v and has_h):
      union = 'cat' if vanilla else ('vertical' if has_v else 'horizontal')
    elif with_fc:
      union = 'cat' if sd[f'{b0}fc.weight'].shape[1] == 2 * directional else 'add'
    else:
      union = 'cat' if 2 * directional == dims[0] else 'add'
    mlp_ratio = sd['stages.0.blocks.0.mlp_channels.fc1.weight'].shape[0] / dims[0]
    pos = sd.get('absolute_pos_embed')
    arch = SequencerArch(
        layers=tuple(depths[i] for i in range(n)), patch_sizes=tuple(patch),
        embed_dims=tuple(dims), hidden_sizes=tuple(hidden), mlp_ratio=mlp_ratio,
        cell=_CELL_BY_GATES[gates], bidirectional=bidirectional,
        union=union, with_fc=with_fc, vanilla=vanilla,
        pos_embed_size=None if pos is None else pos.shape[1])
  except ConversionError:
    raise
  except KeyError as e:
    raise ConversionError(f'not a complete Sequencer state_dict: missing {e.args[0]!r}') from None
  except (ValueError, IndexError) as e:
    raise ConversionError(f'state_dict does not describe a Sequencer: {e}') from None
  head = sd.get('head.fc.weight')
  return arch, 0 if head is None else head.shape[0]


def detect_model_name(sd: Mapping[str, np.ndarray]) -> str:
  """The registered model whose architecture the (timm-layout) state_dict has."""
  return _registered_name(infer_arch(sd)[0])


def _registered_name(arch: SequencerArch) -> str:
  name = name_for_arch(arch)
  if name is None:
    raise ConversionError(f'no registered model has the architecture of this state_dict: {arch}')
  return name


# ---------------------------------------------------------------------------------------------
# The tensor mapping.


_LEAF_NAMES = {'kernel': 'weight', 'scale': 'weight', 'bias': 'bias'}
_RNN_NAMES = {'kernel_ih': 'weight_ih', 'kernel_hh': 'weight_hh', 'bias_ih': 'bias_ih',
              'bias_hh': 'bias_hh'}


def _torch_key(flax_path: tuple[str, ...]) -> str:
  """The timm-layout key of one Flax parameter (spec 4.6)."""
  *modules, leaf = flax_path
  prefix = re.sub(r'^stages_(\d+)_blocks_(\d+)', r'stages.\1.blocks.\2', '.'.join(modules))
  prefix = re.sub(r'^stages_(\d+)_downsample', r'stages.\1.downsample.down', prefix)
  prefix = {'stem': 'stem.proj', 'head': 'head.fc'}.get(prefix, prefix)
  if leaf == 'absolute_pos_embed':
    return leaf
  if modules and modules[-1] in ('forward', 'reverse'):  # One RNN direction.
    rnn = prefix.rsplit('.', 1)[0]
    suffix = '_reverse' if modules[-1] == 'reverse' else ''
    return f'{rnn}.{_RNN_NAMES[leaf]}_l0{suffix}'
  return f'{prefix}.{_LEAF_NAMES[leaf]}'


def _flax_axes(key: str, ndim: int) -> tuple[int, ...]:
  """The transpose taking a PyTorch tensor to Flax's layout (spec 4.6)."""
  if key == 'absolute_pos_embed' or ndim not in (2, 4):  # pos embed is (1, H, W, C) in both.
    return tuple(range(ndim))
  return (2, 3, 1, 0) if ndim == 4 else (1, 0)  # Conv (O,I,kh,kw) -> (kh,kw,I,O); (out,in) -> (in,out).


def _torch_axes(key: str, ndim: int) -> tuple[int, ...]:
  return tuple(int(i) for i in np.argsort(_flax_axes(key, ndim)))


def torch_to_flax(state_dict: Mapping[str, np.ndarray], model: Sequencer) -> Params:
  """Maps a state_dict (either layout) onto `model`'s parameter tree, strictly.

  Raises ConversionError naming every missing, unexpected or mis-shaped tensor.
  """
  sd = to_timm_layout(state_dict)
  out, missing, wrong, used = {}, [], [], set()
  for path, spec in traverse_util.flatten_dict(abstract_params(model)).items():
    key = _torch_key(path)
    used.add(key)
    if key not in sd:
      missing.append(key)
      continue
    value = np.asarray(sd[key])
    expected = tuple(spec.shape[i] for i in _torch_axes(key, len(spec.shape)))
    if value.shape != expected:
      wrong.append(f'{key}: checkpoint {value.shape}, model expects {expected}')
      continue
    out[path] = np.ascontiguousarray(value.transpose(_flax_axes(key, value.ndim)),
                                     dtype=spec.dtype)
  unexpected = sorted(set(sd) - used)
  problems = []
  if missing:
    problems.append(f'missing {len(missing)} tensor(s): {", ".join(missing[:10])}')
  if unexpected:
    problems.append(f'unexpected {len(unexpected)} tensor(s): {", ".join(unexpected[:10])}')
  if wrong:
    problems.append(f'wrong shape: {"; ".join(wrong[:10])}')
  if problems:
    raise ConversionError('state_dict does not fit the model: ' + ' | '.join(problems))
  return traverse_util.unflatten_dict(out)


def flax_to_torch(params: Params, layout: str = 'timm',
                  layers: tuple[int, ...] | None = None) -> StateDict:
  """The inverse mapping: a PyTorch state_dict (NumPy arrays) in timm's or the original layout."""
  sd = {}
  for path, value in traverse_util.flatten_dict(params).items():
    key = _torch_key(path)
    value = np.asarray(value, np.float32)
    sd[key] = np.ascontiguousarray(value.transpose(_torch_axes(key, value.ndim)))
  if layout == 'timm':
    return sd
  if layout == 'original':
    if layers is None:
      raise ValueError('the original layout needs the blocks per stage (`layers`)')
    return timm_to_original(sd, layers)
  raise ValueError(f'unknown layout {layout!r}; expected "timm" or "original"')


# ---------------------------------------------------------------------------------------------
# Whole files: PyTorch checkpoint -> our checkpoint, and back.


def replace_head(params: Params, num_classes: int) -> Params:
  """A new zero-initialised head for `num_classes` (none for 0), as timm does for transfer."""
  params = {k: v for k, v in params.items() if k != 'head'}
  if num_classes > 0:
    width = params['norm']['scale'].shape[0]
    params['head'] = {'kernel': np.zeros((width, num_classes), np.float32),
                      'bias': np.zeros((num_classes,), np.float32)}
  return params


def convert_state_dict(state_dict: Mapping[str, np.ndarray], model_name: str | None = None,
                       num_classes: int | None = None) -> tuple[str, int, Params]:
  """Any-layout state_dict -> (model name, number of classes, Flax params)."""
  from sequencer_jax.registry import create_model, model_info
  sd = to_timm_layout(state_dict)
  arch, checkpoint_classes = infer_arch(sd)
  name = model_name or _registered_name(arch)
  if model_info(name).arch != arch:
    found = name_for_arch(arch) or f'an unregistered architecture {arch}'
    raise ConversionError(f'the checkpoint holds {found} (read from its keys and shapes), '
                          f'not {name}')
  params = torch_to_flax(sd, create_model(name, num_classes=checkpoint_classes))
  if num_classes is None or num_classes == checkpoint_classes:
    return name, checkpoint_classes, params
  return name, num_classes, replace_head(params, num_classes)


def torch_layout_for(name: str) -> str:
  """'timm' where timm's Sequencer2d can hold the model (2D LSTM), else 'original'."""
  from sequencer_jax.registry import model_info
  arch = model_info(name).arch
  return 'timm' if arch.cell == 'lstm' and not arch.vanilla else 'original'


def export_file(src: str, dst: str, layout: str | None = None) -> str:
  """Writes our checkpoint `src` as a PyTorch state_dict in `dst` (.safetensors).

  The default layout is timm's where timm can build the model (load it with
  `timm.create_model(name, num_classes=N).load_state_dict(..., strict=True)`), else the original
  repository's. Returns the layout written.
  """
  from safetensors.numpy import save_file

  from sequencer_jax.checkpoint import load_pretrained, read_model_record
  if not dst.endswith('.safetensors'):
    raise ValueError(f'{dst}: the export is written as .safetensors; name the file *.safetensors')
  if os.path.exists(dst):
    raise FileExistsError(f'{dst} already exists; refusing to overwrite it')
  name = read_model_record(src)['name']
  layout = layout or torch_layout_for(name)
  model, variables = load_pretrained(src)
  sd = flax_to_torch(jax.device_get(variables['params']), layout, model.arch.layers)
  tmp = f'{dst}.tmp-{os.getpid()}'
  try:
    save_file(sd, tmp, metadata={'format': 'pt', 'model': name, 'layout': layout})
    os.replace(tmp, dst)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)
  return layout


def check_timm_available(name: str) -> None:
  """Raises unless timm can build `name` and torch and timm are importable."""
  if torch_layout_for(name) != 'timm':
    raise ConversionError(f'timm has no model like {name} (it has only the LSTM Sequencer2D), '
                          f'so it cannot be compared with timm')
  try:
    import torch  # noqa: F401

    from sequencer_jax.torch_compat import import_timm
    import_timm()
  except ImportError as e:
    raise ConversionError(f'comparing with timm needs torch and timm installed: {e}') from None


def timm_logit_difference(state_dict: Mapping[str, np.ndarray], name: str, num_classes: int,
                          params: Params, batch: int = 2, seed: int = 0) -> float:
  """Max |logit difference| between timm on `state_dict` and our model on `params`.

  Needs torch and timm; compares pre-logits when the head was replaced.
  """
  import torch

  from sequencer_jax.registry import create_model, model_info
  from sequencer_jax.torch_compat import timm_sequencer
  check_timm_available(name)
  info = model_info(name)
  sd = to_timm_layout(state_dict)
  _, checkpoint_classes = infer_arch(sd)
  reference = timm_sequencer(info.arch, checkpoint_classes).eval()
  reference.load_state_dict({k: torch.from_numpy(np.asarray(v)) for k, v in sd.items()},
                            strict=True)
  compare_logits = num_classes == checkpoint_classes and num_classes > 0
  if not compare_logits:
    reference.reset_classifier(0)
  x = np.random.RandomState(seed).randn(batch, info.input_size, info.input_size, 3)
  x = x.astype(np.float32)
  with torch.no_grad():
    expected = reference(torch.from_numpy(x).permute(0, 3, 1, 2)).numpy()
  model = create_model(name, num_classes=num_classes)
  logits, feats = jax.jit(model.apply, static_argnames='return_intermediates')(
      {'params': params}, x, return_intermediates=True)
  got = logits if compare_logits else feats['pre_logits']
  return float(np.abs(np.asarray(got) - expected).max())
