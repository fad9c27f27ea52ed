"""The registry: every model name of the original code, with its architecture and eval settings."""

from __future__ import annotations

import dataclasses
import fnmatch
from collections.abc import Sequence
from typing import Any

import jax.numpy as jnp

from sequencer_jax.models.data_config import DataConfig
from sequencer_jax.models.sequencer import Sequencer, SequencerArch


@dataclasses.dataclass(frozen=True)
class ModelInfo:
  """A registered model: architecture plus the evaluation settings of its default config."""

  arch: SequencerArch
  input_size: int = 224
  crop_pct: float = 0.875

  @property
  def data_config(self) -> DataConfig:
    """The evaluation transform settings (timm's pretrained_cfg for this model)."""
    return DataConfig(input_size=self.input_size, crop_pct=self.crop_pct)


_S, _M, _L = (4, 3, 8, 3), (4, 3, 14, 3), (8, 8, 16, 4)
_PATCH = (7, 2, 1, 1)
_DIMS = (192, 384, 384, 384)
_HID = (48, 96, 96, 96)
_HID2X = (96, 192, 192, 192)


def _arch(layers=_S, hidden=_HID, patch=_PATCH, dims=_DIMS, **kw: Any) -> SequencerArch:
  return SequencerArch(layers=layers, patch_sizes=patch, embed_dims=dims, hidden_sizes=hidden,
                       **kw)


_REGISTRY: dict[str, ModelInfo] = {
    # Main models (two_dim_sequencer.py / timm sequencer.py).
    'sequencer2d_s': ModelInfo(_arch(_S)),
    'sequencer2d_m': ModelInfo(_arch(_M)),
    'sequencer2d_l': ModelInfo(_arch(_L)),
    # Same architectures. The original gives these the 224 models' eval config (224, crop 0.875);
    # here they carry the 392 fine-tune's (392, crop 1.0), which is what they are evaluated at.
    'sequencer2d_s_392': ModelInfo(_arch(_S), input_size=392, crop_pct=1.0),
    'sequencer2d_m_392': ModelInfo(_arch(_M), input_size=392, crop_pct=1.0),
    'sequencer2d_l_392': ModelInfo(_arch(_L), input_size=392, crop_pct=1.0),
    # Ablations and options of the original code.
    'sequencer2d_s_unidirectional': ModelInfo(_arch(bidirectional=False)),
    'sequencer2d_s_add': ModelInfo(_arch(union='add')),
    'sequencer2d_s_h2x': ModelInfo(_arch(hidden=_HID2X)),
    'sequencer2d_s_without_fc': ModelInfo(_arch(with_fc=False)),
    'sequencer2d_vertical': ModelInfo(_arch(hidden=_HID2X, union='vertical', with_fc=False)),
    'sequencer2d_s_horizontal': ModelInfo(_arch(hidden=_HID2X, union='horizontal',
                                                with_fc=False)),
    'gru_sequencer2d_s': ModelInfo(_arch(cell='gru')),
    'rnn_sequencer2d_s': ModelInfo(_arch(cell='rnn')),
    'sequencer2d_l_d4_3x': ModelInfo(_arch(_L, hidden=(64, 128, 128, 128),
                                           dims=(256, 512, 512, 512))),
    # Vanilla (1D) Sequencers.
    'v_sequencer_s': ModelInfo(_arch(patch=(14, 1, 1, 1), dims=(384,) * 4, hidden=(192,) * 4,
                                     with_fc=False, vanilla=True)),
    'v_sequencer_s_h': ModelInfo(_arch(hidden=_HID2X, with_fc=False, vanilla=True)),
    'v_sequencer_s_pe': ModelInfo(_arch(patch=(14, 1, 1, 1), dims=(384,) * 4,
                                        hidden=(192,) * 4, with_fc=False, vanilla=True,
                                        pos_embed_size=16)),
}


def list_models(pattern: str | Sequence[str] = '') -> list[str]:
  """The registered model names matching `pattern` (fnmatch wildcards, e.g. 'sequencer2d_*', or
  a list of patterns, any of which may match), in registration order; '' matches every name,
  as in timm's `list_models`."""
  patterns = [pattern] if isinstance(pattern, str) else list(pattern)
  if not any(patterns):
    return list(_REGISTRY)
  return [name for name in _REGISTRY if any(fnmatch.fnmatchcase(name, p) for p in patterns)]


def model_info(name: str) -> ModelInfo:
  """The registry entry for `name`; an unknown name raises a KeyError listing the valid ones."""
  try:
    return _REGISTRY[name]
  except KeyError:
    raise KeyError(f'unknown model {name!r}; valid names: {", ".join(_REGISTRY)}') from None


def name_for_arch(arch: SequencerArch) -> str | None:
  """The first registered name with exactly this architecture, or None."""
  return next((n for n, info in _REGISTRY.items() if info.arch == arch), None)


def create_model(name: str, num_classes: int = 1000, *, drop_rate: float = 0.0,
                 head_drop_rate: float = 0.0, drop_path_rate: float = 0.0,
                 rnn_impl: str = 'auto', rnn_unroll: int = 1, dtype: Any = jnp.float32,
                 param_dtype: Any = jnp.float32, remat: bool = False,
                 **arch_overrides: Any) -> Sequencer:
  """Build the registered model `name` (an unknown name raises, listing the valid names).

  `arch_overrides` replace fields of the registered architecture (e.g. `layers=(2, 2)`).
  """
  arch = model_info(name).arch
  unknown = sorted(set(arch_overrides) - {f.name for f in dataclasses.fields(arch)})
  if unknown:
    raise ValueError(f'unknown architecture field(s) {", ".join(unknown)}; valid: '
                     f'{", ".join(f.name for f in dataclasses.fields(arch))}')
  arch = dataclasses.replace(arch, **{k: tuple(v) if isinstance(v, list) else v
                                      for k, v in arch_overrides.items()})
  return Sequencer(arch, num_classes=num_classes, drop_rate=drop_rate,
                   head_drop_rate=head_drop_rate, drop_path_rate=drop_path_rate,
                   rnn_impl=rnn_impl, rnn_unroll=rnn_unroll, dtype=dtype,
                   param_dtype=param_dtype, remat=remat)
