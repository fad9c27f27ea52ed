"""The paper's optimiser recipe in optax: timm 0.5.4's AdamW and cosine schedule, as train.py ran.

ImageNet: `--opt adamw --lr 2e-3 --weight-decay 0.05 --sched cosine --epochs 300 --warmup-lr 1e-6
--warmup-epochs 20` at global batch 2048, with the defaults `--min-lr 1e-6 --cooldown-epochs 10`
and no gradient clipping (the CIFAR-10 transfer adds `--clip-grad 1`); 310 epochs are run.

- Schedule: `CosineLRScheduler(t_initial=epochs, lr_min=min_lr, warmup_lr_init=warmup_lr,
  warmup_t=warmup_epochs, cycle_limit=1, t_in_epochs=True)`, stepped once per epoch. Epoch
  t < warmup_epochs runs at `warmup_lr + t * (lr - warmup_lr) / warmup_epochs`, later epochs at
  `min_lr + (lr - min_lr) * (1 + cos(pi * t / epochs)) / 2` with t counted from 0 (the warmup is
  not a prefix), and the cooldown epochs t >= epochs at `min_lr`. With `per_step` the same curve
  is taken at the fractional epoch step / steps_per_epoch, as timm's per-update scheduling does.
  timm 1.0's `_get_lr` gives 0.5.4's values for these arguments: the two differ only in factors
  that are 1 in the single cycle run (cycle 0, t < epochs): 0.5.4's `decay_rate ** cycle` on lr
  and min_lr, 1.0's `cycle_decay ** cycle` on lr and its `k_decay`; after it both give min_lr.
- Optimiser: `torch.optim.AdamW` (betas 0.9, 0.999, eps 1e-8) with decoupled weight decay on the
  parameters of ndim >= 2 only: timm's `add_weight_decay` leaves out 1-D parameters and biases,
  which here are the biases and LayerNorm scales (kernels, LSTM matrices and the head are decayed).
- Clipping: timm's `--clip-grad` (mode norm) by global norm before AdamW. torch scales by
  `max_norm / (norm + 1e-6)`, optax by `max_norm / norm`, a relative difference of 1e-6 / norm.

tests/test_optim.py checks the schedule against timm's to a relative 1e-6, and the parameters
against torch's AdamW to 2e-5 of the distance they move: optax computes Adam's bias corrections
`1 - b ** step` in float32, torch in float64; with 64-bit scalars what is left is float32
rounding, < 1e-6 of that distance.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import optax


@dataclasses.dataclass(frozen=True)
class ScheduleConfig:
  """timm's cosine schedule, defaulting to the paper's ImageNet recipe; timm's flags beside each."""

  lr: float = 2e-3  # --lr, the peak (see `scale_learning_rate`).
  warmup_lr: float = 1e-6  # --warmup-lr
  min_lr: float = 1e-6  # --min-lr
  epochs: int = 300  # --epochs, the length of the cosine.
  warmup_epochs: int = 20  # --warmup-epochs
  cooldown_epochs: int = 10  # --cooldown-epochs, run at min_lr after the cosine.
  per_step: bool = False  # --sched-on-updates (timm >= 0.9): update per step, not per epoch.

  def __post_init__(self) -> None:
    for name in ('lr', 'warmup_lr', 'min_lr', 'cooldown_epochs'):
      if getattr(self, name) < 0:
        raise ValueError(f'{name} must be >= 0, got {getattr(self, name)}')
    if self.epochs < 1:
      raise ValueError(f'epochs must be >= 1, got {self.epochs}')
    if not 0 <= self.warmup_epochs <= self.epochs:
      raise ValueError(f'warmup_epochs must be in [0, epochs={self.epochs}], '
                       f'got {self.warmup_epochs}')


def total_epochs(config: ScheduleConfig) -> int:
  """The number of epochs train.py runs: the cosine's plus the cooldown."""
  return config.epochs + config.cooldown_epochs


def scale_learning_rate(lr: float, global_batch: int, reference_batch: int = 2048) -> float:
  """The linear scaling rule: `lr * global_batch / reference_batch`.

  Scale only the peak, `dataclasses.replace(config, lr=scale_learning_rate(config.lr, batch))`;
  warmup_lr and min_lr stay as they are.
  """
  for name, batch in (('global_batch', global_batch), ('reference_batch', reference_batch)):
    if batch < 1:
      raise ValueError(f'{name} must be >= 1, got {batch}')
  return lr * global_batch / reference_batch


def learning_rate_schedule(config: ScheduleConfig, steps_per_epoch: int) -> optax.Schedule:
  """The learning rate of the update numbered `count` (from 0, optax's count), as timm sets it."""
  if steps_per_epoch < 1:
    raise ValueError(f'steps_per_epoch must be >= 1, got {steps_per_epoch}')
  unit = steps_per_epoch if config.per_step else 1  # Steps per unit of the schedule's time.
  length, warmup = config.epochs * unit, config.warmup_epochs * unit
  slope = (config.lr - config.warmup_lr) / warmup if warmup else 0.0

  def schedule(count: jax.Array) -> jax.Array:
    t = count if config.per_step else count // steps_per_epoch
    # (1 + cos(pi t / length)) / 2 = sin(pi (length - t) / (2 length))^2: no cancellation in float32
    # as the cosine nears min_lr, and 0 from the end of the cosine on (the cooldown).
    left = jnp.maximum(length - t, 0)
    cosine = config.min_lr + (config.lr - config.min_lr) * jnp.sin(jnp.pi / 2 * left / length)**2
    return jnp.where(t < warmup, config.warmup_lr + t * slope, cosine)

  return schedule


def weight_decay_mask(params: Any) -> Any:
  """True for the parameters AdamW decays: those of ndim >= 2 (arrays or shape structs)."""
  return jax.tree.map(lambda p: len(p.shape) >= 2, params)


def create_optimizer(learning_rate: optax.ScalarOrSchedule, *, b1: float = 0.9, b2: float = 0.999,
                     eps: float = 1e-8, weight_decay: float = 0.05,
                     clip_grad_norm: float | None = None) -> optax.GradientTransformation:
  """timm's `--opt adamw` with `weight_decay_mask`, after `--clip-grad` (mode norm) when given."""
  adamw = optax.adamw(learning_rate, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay,
                      mask=weight_decay_mask)
  if clip_grad_norm is None:
    return adamw
  if clip_grad_norm <= 0:
    raise ValueError(f'clip_grad_norm must be > 0 or None, got {clip_grad_norm}')
  return optax.chain(optax.clip_by_global_norm(clip_grad_norm), adamw)
