"""PyTorch <-> Flax parameter mapping for Sequencer state_dicts (NumPy only; no torch needed).

Both PyTorch layouts are handled: the original repository's (`blocks.i.j`, downsample convs as
`blocks.i.<depth>.down`, `head`) and timm's (>= 0.9: `stages.i.blocks.j`,
`stages.i.downsample.down`, `head.fc`). Everything is first normalised to timm's key names, then
mapped one to one onto the Flax tree of a freshly traced model, so a missing, unexpected or
mis-shaped tensor is always reported by name. Reading and writing the files is `torch_files.py`.
"""

from __future__ import annotations

import re
from typing import Any, Mapping

import numpy as np
from flax import traverse_util

from sequencer_jax.models import (Sequencer, SequencerArch, abstract_params, create_model,
                                  model_info, replace_head)
from sequencer_jax.models.recurrent import GATES
from sequencer_jax.models.registry import name_for_arch

StateDict = dict[str, np.ndarray]
Params = dict[str, Any]
_CELL_BY_GATES = {gates: cell for cell, gates in GATES.items()}


class ConversionError(ValueError):
  """A checkpoint that cannot be converted; the message names the file, key or shape at fault."""


def detect_layout(state_dict: Mapping[str, Any]) -> str:
  """'timm' (stages.i.blocks.j) or 'original' (blocks.i.j); anything else raises."""
  if any(k.startswith('stages.') for k in state_dict):
    return 'timm'
  if any(k.startswith('blocks.') for k in state_dict):
    return 'original'
  sample = ', '.join(list(state_dict)[:5]) or 'no keys at all'
  raise ConversionError(f'not a Sequencer state_dict: no stages.* or blocks.* keys ({sample})')


def original_to_timm(state_dict: Mapping[str, np.ndarray]) -> StateDict:
  """The rename of timm's `checkpoint_filter_fn`."""
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


def _registered_name(arch: SequencerArch) -> str:
  name = name_for_arch(arch)
  if name is None:
    raise ConversionError(f'no registered model has the architecture of this state_dict: {arch}')
  return name


_LEAF_NAMES = {'kernel': 'weight', 'scale': 'weight', 'bias': 'bias'}
_RNN_NAMES = {'kernel_ih': 'weight_ih', 'kernel_hh': 'weight_hh', 'bias_ih': 'bias_ih',
              'bias_hh': 'bias_hh'}


def _torch_key(flax_path: tuple[str, ...]) -> str:
  """The timm-layout key of one Flax parameter."""
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
  """The transpose taking a PyTorch tensor to Flax's layout."""
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


def read_arch_and_params(state_dict: Mapping[str, np.ndarray]
                         ) -> tuple[SequencerArch, int, Params]:
  """Any-layout state_dict of any architecture -> (architecture, number of classes, params)."""
  sd = to_timm_layout(state_dict)
  arch, classes = infer_arch(sd)
  return arch, classes, torch_to_flax(sd, Sequencer(arch, num_classes=classes))


def convert_state_dict(state_dict: Mapping[str, np.ndarray], model_name: str | None = None,
                       num_classes: int | None = None) -> tuple[str, int, Params]:
  """Any-layout state_dict -> (model name, number of classes, Flax params)."""
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


TIMM_MODELS = ('sequencer2d_s', 'sequencer2d_m', 'sequencer2d_l')  # timm.create_model names.


def torch_layout_for(arch: SequencerArch) -> str:
  """'timm' for timm's own models (Sequencer2D-S/M/L), else the original repository's layout."""
  return 'timm' if name_for_arch(arch) in TIMM_MODELS else 'original'


def timm_constructor_args(arch: SequencerArch) -> dict[str, Any]:
  """The arguments of timm's `Sequencer2d` that build `arch` (JSON values); architectures timm
  cannot build (GRU and tanh cells, the vanilla 1D models) raise a ConversionError."""
  if arch.cell != 'lstm' or arch.vanilla:
    what = 'a vanilla (1D) Sequencer' if arch.vanilla else f'{arch.cell.upper()} cells'
    raise ConversionError(f"timm's Sequencer2d cannot build {what} (it has only 2D LSTM "
                          f"Sequencers); write the original repository's layout instead: "
                          f"--to-torch SRC DST.safetensors --layout original")
  return {'layers': list(arch.layers), 'patch_sizes': list(arch.patch_sizes),
          'embed_dims': list(arch.embed_dims), 'hidden_sizes': list(arch.hidden_sizes),
          'mlp_ratios': [arch.mlp_ratio] * len(arch.layers), 'bidirectional': arch.bidirectional,
          'union': arch.union, 'with_fc': arch.with_fc}
