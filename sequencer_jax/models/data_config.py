"""What a model needs its input prepared with: timm's `pretrained_cfg` data fields."""

from __future__ import annotations

import dataclasses
from typing import Any, Literal

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
Interpolation = Literal['bicubic', 'bilinear']


@dataclasses.dataclass(frozen=True)
class DataConfig:
  """timm's evaluation transform settings: resize the shorter side to input_size / crop_pct with
  `interpolation`, centre-crop input_size, normalise with `mean` and `std` (RGB, 0..1 scale)."""

  input_size: int = 224
  crop_pct: float = 0.875
  interpolation: Interpolation = 'bicubic'
  mean: tuple[float, float, float] = IMAGENET_MEAN
  std: tuple[float, float, float] = IMAGENET_STD

  def __post_init__(self) -> None:
    for field in ('mean', 'std'):
      object.__setattr__(self, field, tuple(float(v) for v in getattr(self, field)))
    if self.interpolation not in ('bicubic', 'bilinear'):
      raise ValueError(f'interpolation {self.interpolation!r}: expected bicubic or bilinear')
    if not 0.0 < self.crop_pct <= 1.0 or self.input_size <= 0:
      raise ValueError(f'crop_pct {self.crop_pct} must be in (0, 1] and input_size '
                       f'{self.input_size} positive')

  def to_pretrained_cfg(self) -> dict[str, Any]:
    """timm's field names and shapes (`input_size` is (3, H, W))."""
    return {'input_size': [3, self.input_size, self.input_size], 'crop_pct': self.crop_pct,
            'interpolation': self.interpolation, 'mean': list(self.mean), 'std': list(self.std)}

  @classmethod
  def from_pretrained_cfg(cls, cfg: dict[str, Any]) -> DataConfig:
    """From timm's `pretrained_cfg` (a hub config.json's or ours); missing fields: defaults.

    A non-square input size raises: Sequencer's eval transform here is square."""
    kwargs: dict[str, Any] = {}
    if 'input_size' in cfg:
      _, height, width = cfg['input_size']
      if height != width:
        raise ValueError(f'input_size {cfg["input_size"]} is not square')
      kwargs['input_size'] = int(height)
    for key in ('crop_pct', 'interpolation', 'mean', 'std'):
      if cfg.get(key) is not None:
        kwargs[key] = cfg[key]
    return cls(**kwargs)
