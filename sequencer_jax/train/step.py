"""The jitted train step, on a 'data' mesh (see `sharding.py`).

big_vision's design: the step is one `jax.jit` over the global batch, donating the old state,
with the randomness derived from the state's key folded with the step. The augmentation sees
the whole global batch (Mixup/CutMix in fixed groups of consecutive images), so the result does
not depend on the number of devices.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from sequencer_jax.data.device_augment import DeviceAugment, augment_batch
from sequencer_jax.models import Sequencer
from sequencer_jax.sharding import DATA, data_sharding, on_mesh, replicated
from sequencer_jax.train.state import TrainState

Batch = dict[str, jax.Array]
Metrics = dict[str, jax.Array]


def soft_target_cross_entropy(logits: jax.Array, targets: jax.Array) -> jax.Array:
  """timm's SoftTargetCrossEntropy in float32: mean over the batch of sum(-t * log_softmax)."""
  log_probs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  return jnp.mean(jnp.sum(-targets * log_probs, axis=-1))


def _micro_batches(x: jax.Array, n: int, mesh: Mesh) -> jax.Array:
  """(B, ...) -> (n, B / n, ...), micro-batch i holding examples i, i + n, ...

  The strided split keeps each device's examples on it: every micro-batch is sharded like the
  batch, with no data movement.
  """
  x = x.reshape(x.shape[0] // n, n, *x.shape[1:]).swapaxes(0, 1)
  return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, P(None, DATA)))


def _accumulated_grads(loss_fn: Callable[..., jax.Array], params: Any, images: jax.Array,
                       targets: jax.Array, rng: jax.Array, n: int,
                       mesh: Mesh) -> tuple[jax.Array, Any]:
  """Mean loss and gradients over `n` equal micro-batches, summed in float32 by a scan."""
  if n == 1:
    return jax.value_and_grad(loss_fn)(params, images, targets, rng)

  def body(carry: tuple[jax.Array, Any], xs: tuple[jax.Array, ...]) -> tuple[Any, None]:
    micro_images, micro_targets, i = xs
    loss, grads = jax.value_and_grad(loss_fn)(params, micro_images, micro_targets,
                                              jax.random.fold_in(rng, i))
    grads = jax.tree.map(lambda g: g.astype(jnp.float32), grads)
    return jax.tree.map(jnp.add, carry, (loss, grads)), None

  zeros = (jnp.zeros((), jnp.float32),
           jax.tree.map(lambda p: jnp.zeros(p.shape, jnp.float32), params))
  xs = (_micro_batches(images, n, mesh), _micro_batches(targets, n, mesh), jnp.arange(n))
  (loss, grads), _ = jax.lax.scan(body, zeros, xs)
  return loss / n, jax.tree.map(lambda g, p: (g / n).astype(p.dtype), grads, params)


def _ema(ema: Any, params: Any, decay: float) -> Any:
  return jax.tree.map(lambda e, p: (decay * e + (1.0 - decay) * p).astype(e.dtype), ema, params)


def make_train_step(model: Sequencer, optimizer: optax.GradientTransformation, *,
                    augment: DeviceAugment, grad_accum_steps: int = 1,
                    ema_decay: float | None = None, mesh: Mesh, state_shardings: TrainState
                    ) -> Callable[[TrainState, Batch], tuple[TrainState, Metrics]]:
  """The jitted step `(state, batch) -> (state, metrics)`; the state argument is donated.

  The batch holds the host's 'image' (uint8 canvases), 'crop_size', 'bicubic' and 'label' global
  arrays sharded over 'data' (`sharding.global_batch`). `augment` runs first, in timm's order
  (resize, flip, RandAugment, then mixup per group, normalisation, erasing:
  `data/device_augment.py`); then the batch is split into
  `grad_accum_steps` micro-batches whose gradients are averaged: without mixup and drop path
  that equals the one-batch step up to float rounding. Metrics: 'loss' (the mean soft-target
  cross-entropy) and 'grad_norm' (the global L2 norm of the averaged gradients, before the
  optimizer's clipping).
  """
  if augment.num_classes != model.num_classes:
    raise ValueError(f'the augmentation is for {augment.num_classes} classes, the model has '
                     f'{model.num_classes}')
  if (ema_decay is None) != (state_shardings.ema_params is None):
    raise ValueError('ema_decay must be given exactly when the state has ema_params '
                     '(create_train_state(..., ema=True))')
  if grad_accum_steps < 1:
    raise ValueError(f'grad_accum_steps must be >= 1, got {grad_accum_steps}')

  def loss_fn(params: Any, images: jax.Array, targets: jax.Array,
              rng: jax.Array) -> jax.Array:
    logits = model.apply({'params': params}, images, train=True, rngs={'dropout': rng})
    return soft_target_cross_entropy(logits, targets)

  def step(state: TrainState, batch: Batch) -> tuple[TrainState, Metrics]:
    size = batch['image'].shape[0]
    if size % (grad_accum_steps * mesh.size):
      raise ValueError(f'the global batch ({size}) must divide into {grad_accum_steps} '
                       f'micro-batches sharded over {mesh.size} devices')
    augment_rng, drop_rng = jax.random.split(jax.random.fold_in(state.rng, state.step))
    images, targets = augment_batch(batch, augment_rng, augment)
    loss, grads = _accumulated_grads(loss_fn, state.params, images, targets, drop_rng,
                                     grad_accum_steps, mesh)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    ema_params = None if ema_decay is None else _ema(state.ema_params, params, ema_decay)
    new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state,
                              ema_params=ema_params)
    return new_state, {'loss': loss, 'grad_norm': optax.tree.norm(grads)}

  return jax.jit(on_mesh(step, mesh), in_shardings=(state_shardings, data_sharding(mesh)),
                 out_shardings=(state_shardings, replicated(mesh)), donate_argnums=(0,))

