"""The one place where a run's ConfigDict (configs/*.py) becomes the library's typed objects."""

from __future__ import annotations

from typing import Any

import jax
import ml_collections
import optax

from sequencer_jax.data import randaugment
from sequencer_jax.data.device_augment import DeviceAugment
from sequencer_jax.data.mixup import MixupConfig
from sequencer_jax.data.pipeline import TrainAugment
from sequencer_jax.models import Sequencer, create_model
from sequencer_jax.models.layers import dtype_named
from sequencer_jax.train import optim


class ConfigError(ValueError):
  """A config whose values cannot be used; the message names the field."""


def build_model(config: ml_collections.ConfigDict) -> Sequencer:
  """The model of `config.model` (registered name plus architecture overrides). Its drop rates
  apply only when it is called with `train=True`; otherwise it is deterministic."""
  m = config.model
  try:
    return create_model(m.name, m.num_classes, drop_rate=m.drop_rate,
                        drop_path_rate=m.drop_path_rate, rnn_impl=m.rnn_impl,
                        dtype=dtype_named(m.dtype), remat=m.remat, **m.arch.to_dict())
  except (KeyError, ValueError) as e:
    raise ConfigError(f'config.model: {e.args[0]}') from None


def schedule_config(config: ml_collections.ConfigDict) -> optim.ScheduleConfig:
  """The learning-rate schedule, with the peak scaled from the reference batch if asked."""
  o = config.optim
  lr = o.lr
  if o.scale_lr_with_batch:
    lr = optim.scale_learning_rate(lr, config.global_batch_size, o.reference_batch)
  return optim.ScheduleConfig(lr=lr, warmup_lr=o.warmup_lr, min_lr=o.min_lr, epochs=o.epochs,
                              warmup_epochs=o.warmup_epochs, cooldown_epochs=o.cooldown_epochs,
                              per_step=o.per_step_lr)


def build_optimizer(config: ml_collections.ConfigDict, steps_per_epoch: int
                    ) -> tuple[optax.GradientTransformation, optax.Schedule]:
  """AdamW with the masked weight decay and optional clipping, and its learning-rate schedule."""
  schedule = optim.learning_rate_schedule(schedule_config(config), steps_per_epoch)
  o = config.optim
  return optim.create_optimizer(schedule, b1=o.b1, b2=o.b2, eps=o.eps,
                                weight_decay=o.weight_decay, clip_grad_norm=o.clip_grad), schedule


def train_augment(config: ml_collections.ConfigDict) -> TrainAugment:
  """The host's part of the training augmentation of `config.aug`: the crop on a canvas of
  `config.data.canvas_size`."""
  a, d = config.aug, config.data
  if d.canvas_size < d.image_size:
    raise ConfigError(f'config.data.canvas_size {d.canvas_size} is smaller than '
                      f'config.data.image_size {d.image_size}; it must be at least that')
  return TrainAugment(scale=tuple(a.scale), ratio=tuple(a.ratio), interpolation=a.interpolation,
                      fused_decode=a.fused_decode, canvas_size=d.canvas_size)


def device_augment(config: ml_collections.ConfigDict) -> DeviceAugment:
  """The augmentation of `config.aug` that the train step runs: resize, flip, RandAugment (or
  colour jitter), Mixup/CutMix per group (none when both are off), normalisation,
  RandomErasing."""
  a = config.aug
  if a.remode != 'pixel' or a.recount != 1:
    raise ConfigError(f"config.aug: remode {a.remode!r} and recount {a.recount}: only 'pixel' "
                      f'and 1 (the paper\'s) are supported')
  mixup = None
  if a.mixup > 0 or a.cutmix > 0:
    mixup = MixupConfig(num_classes=config.model.num_classes, mixup_alpha=a.mixup,
                        cutmix_alpha=a.cutmix, switch_prob=a.mixup_switch_prob,
                        prob=a.mixup_prob, label_smoothing=a.smoothing)
  try:
    # timm hands the train interpolation to RandAugment ('random': a coin per op).
    rand_augment = (randaugment.parse_rand_augment(a.auto_augment, interpolation=a.interpolation)
                    if a.auto_augment else None)
    return DeviceAugment(num_classes=config.model.num_classes,
                         image_size=config.data.image_size, hflip=a.hflip,
                         rand_augment=rand_augment, color_jitter=a.color_jitter,
                         label_smoothing=a.smoothing, mixup=mixup,
                         group_size=a.mixup_group_size, reprob=a.reprob)
  except ValueError as e:
    raise ConfigError(f'config.aug: {e}') from None


# The config fields that define a run: a checkpoint whose values differ belongs to another run.
RUN_FIELDS = ('model.name', 'model.arch', 'model.num_classes', 'data.dataset', 'data.image_size',
              'global_batch_size')


def run_record(config: ml_collections.ConfigDict) -> dict[str, Any]:
  """The RUN_FIELDS of `config`, as JSON-able values."""
  record = {}
  for field in RUN_FIELDS:
    value = config
    for part in field.split('.'):
      value = value[part]
    record[field] = value.to_dict() if hasattr(value, 'to_dict') else value
  return jax.tree.map(lambda v: list(v) if isinstance(v, tuple) else v, record,
                      is_leaf=lambda v: isinstance(v, tuple))
