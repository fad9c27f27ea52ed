"""The optimiser recipe against timm's scheduler and optimiser factories and torch's AdamW."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch
from timm.optim import create_optimizer_v2, param_groups_weight_decay
from timm.scheduler import create_scheduler_v2
from timm.utils import dispatch_clip_grad

from sequencer_jax import create_model, model_info
from sequencer_jax.models import abstract_params
from sequencer_jax.train.optim import (ScheduleConfig, create_optimizer, learning_rate_schedule,
                                       scale_learning_rate, total_epochs, weight_decay_mask)
from sequencer_jax.weights.timm_check import timm_sequencer

IMAGENET = ScheduleConfig()
FINETUNE_392 = ScheduleConfig(lr=5e-5, epochs=30, warmup_epochs=0, cooldown_epochs=0)
CIFAR = ScheduleConfig(lr=1e-4, epochs=200, warmup_epochs=5)  # The lr is only an example here.
RECIPES = {'imagenet': IMAGENET, 'finetune_392': FINETUNE_392, 'cifar': CIFAR}
STEPS_PER_EPOCH = 625  # ImageNet-1k's 1,281,167 images in batches of 2048, the last one dropped.
RTOL = 1e-6


def _timm_scheduler(optimizer: torch.optim.Optimizer, config: ScheduleConfig,
                    steps_per_epoch: int):
  """timm's scheduler factory with train.py's flags: returns (scheduler, epochs to run)."""
  return create_scheduler_v2(
      optimizer, sched='cosine', num_epochs=config.epochs, warmup_epochs=config.warmup_epochs,
      warmup_lr=config.warmup_lr, min_lr=config.min_lr, cooldown_epochs=config.cooldown_epochs,
      step_on_epochs=not config.per_step, updates_per_epoch=steps_per_epoch)


def _timm_lrs(config: ScheduleConfig, times: np.ndarray) -> np.ndarray:
  """The lr timm's scheduler puts in the optimizer at each epoch (or update, when per step)."""
  optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=config.lr)
  scheduler, _ = _timm_scheduler(optimizer, config, STEPS_PER_EPOCH)
  lrs = []
  for t in times:
    if config.per_step:
      scheduler.step_update(int(t))
    else:
      scheduler.step(int(t))
    lrs.append(optimizer.param_groups[0]['lr'])
  return np.asarray(lrs)


def _check_close(got: np.ndarray, want: np.ndarray) -> None:
  np.testing.assert_allclose(got, want, rtol=RTOL, atol=0)


@pytest.mark.parametrize('name', RECIPES)
def test_schedule_per_epoch_equals_timm(name):
  config = RECIPES[name]
  epochs = np.arange(total_epochs(config))
  want = _timm_lrs(config, epochs)
  schedule = jax.jit(learning_rate_schedule(config, STEPS_PER_EPOCH))
  for offset in (0, STEPS_PER_EPOCH - 1):  # Every step of an epoch runs at the epoch's lr.
    _check_close(schedule(jnp.asarray(epochs * STEPS_PER_EPOCH + offset)), want)
  if config.cooldown_epochs:
    assert want[-1] == config.min_lr


@pytest.mark.parametrize('name', RECIPES)
def test_schedule_per_step_equals_timm(name):
  config = dataclasses.replace(RECIPES[name], per_step=True)
  total = total_epochs(config) * STEPS_PER_EPOCH
  edges = [e * STEPS_PER_EPOCH + d for e in (config.warmup_epochs, config.epochs)
           for d in (-1, 0, 1)]
  steps = np.unique(np.clip(np.r_[np.arange(0, total, 97), edges, total - 1], 0, total - 1))
  got = jax.jit(learning_rate_schedule(config, STEPS_PER_EPOCH))(jnp.asarray(steps))
  _check_close(got, _timm_lrs(config, steps))


def test_total_epochs_equals_timm():
  optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))])
  for config in RECIPES.values():
    assert total_epochs(config) == _timm_scheduler(optimizer, config, STEPS_PER_EPOCH)[1]
  assert total_epochs(IMAGENET) == 310


def test_weight_decay_mask_equals_timm_split():
  name = 'sequencer2d_s'
  params = abstract_params(create_model(name))
  mask = weight_decay_mask(params)
  decayed, excluded = [], []
  for (path, leaf), decay in zip(jax.tree_util.tree_leaves_with_path(params),
                                 jax.tree.leaves(mask)):
    (decayed if decay else excluded).append((path[-1].key, leaf.shape))
  assert {k for k, _ in decayed} == {'kernel', 'kernel_ih', 'kernel_hh'}
  assert {k for k, _ in excluded} == {'bias', 'scale', 'bias_ih', 'bias_hh'}
  assert all(len(s) >= 2 for _, s in decayed) and all(len(s) == 1 for _, s in excluded)

  with torch.device('meta'):
    model = timm_sequencer(model_info(name).arch)
  groups = {g['weight_decay']: g['params'] for g in param_groups_weight_decay(model, 0.05)}
  for ours, theirs in ((decayed, groups[0.05]), (excluded, groups[0.0])):
    assert len(ours) == len(theirs)
    assert sum(int(np.prod(s)) for _, s in ours) == sum(p.numel() for p in theirs)

  optimizer = create_optimizer(1e-3)
  jax.eval_shape(lambda p: optimizer.update(p, optimizer.init(p), p), params)


def _torch_adamw(layer: torch.nn.Linear, config: ScheduleConfig, steps_per_epoch: int,
                 clip: float | None, grads: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
  """timm train.py's loop: the parameters (kernel = weight.T) after updates with these grads."""
  optimizer = create_optimizer_v2(layer, opt='adamw', lr=config.lr, weight_decay=0.05)
  scheduler, epochs = _timm_scheduler(optimizer, config, steps_per_epoch)
  assert len(grads) == epochs * steps_per_epoch
  for num_updates, grad in enumerate(grads, 1):
    layer.weight.grad = torch.tensor(grad['kernel'].T)
    layer.bias.grad = torch.tensor(grad['bias'])
    if clip is not None:
      dispatch_clip_grad(layer.parameters(), clip, mode='norm')
    optimizer.step()
    scheduler.step_update(num_updates)
    if num_updates % steps_per_epoch == 0:
      scheduler.step(num_updates // steps_per_epoch)
  return {'kernel': layer.weight.detach().numpy().T, 'bias': layer.bias.detach().numpy()}


def _optax_adamw(params: dict[str, jax.Array], config: ScheduleConfig, steps_per_epoch: int,
                 clip: float | None, grads: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
  """The parameters after `create_optimizer`'s updates with these gradients."""
  optimizer = create_optimizer(learning_rate_schedule(config, steps_per_epoch),
                               weight_decay=0.05, clip_grad_norm=clip)
  state = optimizer.init(params)
  update = jax.jit(optimizer.update)
  for grad in grads:
    updates, state = update(jax.tree.map(jnp.asarray, grad), state, params)
    params = optax.apply_updates(params, updates)
  return jax.tree.map(np.asarray, params)


@pytest.mark.parametrize('per_step,clip', [(False, None), (True, None), (False, 1.0),
                                           (True, 1.0)])
def test_adamw_equals_torch(per_step, clip):
  """Compares how far each parameter moved, relative to the largest move.

  optax computes Adam's bias correction `1 - b2 ** step` in float32 (`1 - 0.999` is 1.3e-5 off
  there), torch in float64: ~7e-6 apart. With 64-bit scalars (params still float32) what is left
  is float32 rounding, < 1e-6.
  """
  config = ScheduleConfig(lr=0.05, warmup_lr=1e-3, min_lr=1e-4, epochs=4, warmup_epochs=1,
                          cooldown_epochs=1, per_step=per_step)
  steps_per_epoch = 2
  torch.manual_seed(0)
  layer = torch.nn.Linear(4, 3)  # A 2-D weight, decayed, and a 1-D bias, not.
  start = {'kernel': layer.weight.detach().numpy().T.copy(),
           'bias': layer.bias.detach().numpy().copy()}
  params = jax.tree.map(jnp.asarray, start)
  rng = np.random.default_rng(0)
  grads = [{k: (i + 1) * rng.standard_normal(v.shape, np.float32) for k, v in params.items()}
           for i in range(total_epochs(config) * steps_per_epoch)]  # Norms vary: clipping bites.
  want = _torch_adamw(layer, config, steps_per_epoch, clip, grads)
  for x64, tol in ((False, 2e-5), (True, 2e-6)):
    with jax.enable_x64(x64):
      got = _optax_adamw(params, config, steps_per_epoch, clip, grads)
    for k in params:
      assert np.abs(got[k] - want[k]).max() <= tol * np.abs(want[k] - start[k]).max(), k


def test_scale_learning_rate():
  assert scale_learning_rate(2e-3, 2048) == 2e-3
  assert scale_learning_rate(2e-3, 1024) == 1e-3
  assert scale_learning_rate(1e-3, 512, reference_batch=256) == 2e-3


@pytest.mark.parametrize('build,field', [
    (lambda: ScheduleConfig(lr=-1.0), 'lr'),
    (lambda: ScheduleConfig(min_lr=-1e-6), 'min_lr'),
    (lambda: ScheduleConfig(epochs=0), 'epochs'),
    (lambda: ScheduleConfig(epochs=10, warmup_epochs=20), 'warmup_epochs'),
    (lambda: ScheduleConfig(cooldown_epochs=-1), 'cooldown_epochs'),
    (lambda: learning_rate_schedule(IMAGENET, 0), 'steps_per_epoch'),
    (lambda: scale_learning_rate(2e-3, 0), 'global_batch'),
    (lambda: create_optimizer(1e-3, clip_grad_norm=0.0), 'clip_grad_norm'),
])
def test_invalid_input_raises(build, field):
  with pytest.raises(ValueError, match=f'^{field} must'):
    build()
