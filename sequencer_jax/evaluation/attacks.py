"""Adversarial attacks as the original's validate.py runs them (advertorch, L-infinity, untargeted):
FGSM (`GradientSignAttack`) and PGD (`LinfPGDAttack` with its random start), on the [0, 1] image
with the normalisation inside the model, ascending the summed cross-entropy, clipped to [0, 1].

Units are the original's: `eps` and `step_size` in 1/255 of the [0, 1] range.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, Literal

import jax
import jax.numpy as jnp

LossFn = Callable[[jax.Array, jax.Array], jax.Array]  # ([0, 1] images, labels) -> summed loss.


@dataclasses.dataclass(frozen=True)
class Attack:
  """`kind` with `eps` (1/255 units); PGD takes `steps` of `step_size` (1/255 units) from a
  uniform start in the eps-ball drawn from `seed` and each image's index in its set."""

  kind: Literal['fgsm', 'pgd']
  eps: float = 1.0
  steps: int = 5
  step_size: float = 0.5
  seed: int = 0

  def __post_init__(self) -> None:
    if self.kind not in ('fgsm', 'pgd'):
      raise ValueError(f'unknown attack {self.kind!r}; expected fgsm or pgd')
    if self.eps < 0 or self.steps < 1 or self.step_size <= 0:
      raise ValueError(f'attack eps {self.eps} must be >= 0, steps {self.steps} >= 1 and '
                       f'step size {self.step_size} > 0')

  def describe(self) -> dict[str, Any]:
    """What a result records of the attack that produced it."""
    if self.kind == 'fgsm':
      return {'attack': 'fgsm', 'eps': self.eps}
    return {'attack': 'pgd', 'eps': self.eps, 'steps': self.steps,
            'step_size': self.step_size, 'seed': self.seed}

  def random_start(self, index: jax.Array, shape: tuple[int, ...]) -> jax.Array:
    """PGD's start, uniform in [-eps, eps], one draw per image from its index in the set (the
    same whatever the batch size or the number of devices)."""
    base = jax.random.key(self.seed)
    draw = lambda i: jax.random.uniform(jax.random.fold_in(base, i), shape[1:], jnp.float32,
                                        -self.eps / 255, self.eps / 255)
    return jax.vmap(draw)(index)


def fgsm(loss_fn: LossFn, x: jax.Array, labels: jax.Array, eps: float) -> jax.Array:
  """x + eps * sign(d loss / dx), clipped to [0, 1]; `eps` in [0, 1] units."""
  grad = jax.grad(loss_fn)(x, labels)
  return jnp.clip(x + eps * jnp.sign(grad), 0.0, 1.0)


def pgd(loss_fn: LossFn, x: jax.Array, labels: jax.Array, eps: float, steps: int,
        step_size: float, start: jax.Array) -> jax.Array:
  """advertorch's `perturb_iterative`: from delta = clip(x + start) - x, `steps` signed-gradient
  steps, each projected onto the eps-ball and into [0, 1]; units of [0, 1]."""
  def step(delta: jax.Array, _: None) -> tuple[jax.Array, None]:
    grad = jax.grad(loss_fn)(x + delta, labels)
    delta = jnp.clip(delta + step_size * jnp.sign(grad), -eps, eps)
    return jnp.clip(x + delta, 0.0, 1.0) - x, None

  delta0 = jnp.clip(x + start, 0.0, 1.0) - x
  delta, _ = jax.lax.scan(step, delta0, None, length=steps)
  return jnp.clip(x + delta, 0.0, 1.0)


def perturb(attack: Attack, loss_fn: LossFn, x: jax.Array, labels: jax.Array,
            index: jax.Array) -> jax.Array:
  """The adversarial [0, 1] images of `x` under `attack`; `index`: each image's index in its
  set (PGD's start)."""
  if attack.kind == 'fgsm':
    return fgsm(loss_fn, x, labels, attack.eps / 255)
  return pgd(loss_fn, x, labels, attack.eps / 255, attack.steps, attack.step_size / 255,
             attack.random_start(index, x.shape))
