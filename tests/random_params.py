"""Random parameters for tests, without compiling an initialiser.

`jax.jit(module.init)` compiles one random-number kernel per parameter, and each eager
`jax.random` call compiles one per shape: on the CPU that costs seconds for even a tiny Sequencer,
while the suite only needs some nonzero values of the right shapes. Here the shapes come from
`jax.eval_shape` (a trace, nothing compiled) and the values from NumPy.
"""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import numpy as np


def random_variables(module: nn.Module, *init_args: Any, seed: int = 0, scale: float = 0.3,
                     **init_kwargs: Any) -> dict[str, Any]:
  """`module.init`'s variables with every array drawn from N(0, scale²) (float arrays in their
  own dtype); `init_args` and `init_kwargs` are what `init` would be called with (Python values
  such as an axis stay static)."""
  init = functools.partial(module.init, jax.random.key(0), *init_args, **init_kwargs)
  shapes = jax.eval_shape(init)
  rng = np.random.default_rng(seed)
  return jax.tree.map(lambda s: (scale * rng.standard_normal(s.shape)).astype(s.dtype), shapes)
