"""Compiling as training compiles: XLA's default optimisation level inside the -O0 suite.

conftest.py compiles the suite at `--xla_backend_optimization_level=0` (faster compiles). The
optimising backend contracts a multiply and an add into one FMA and may reorder float
arithmetic, which -O0 does not, so a numerical guarantee tested only at -O0 says nothing about
the training step. `production_jit` is `jax.jit` with the level set back to XLA's default (3),
per compilation; test_production.py checks that it compiles as a process without the flag does.
Every exactness and fidelity test of the step's transforms compiles with it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax

XLA_DEFAULT = {'xla_backend_optimization_level': 3}  # DebugOptions' default.


def production_jit(fun: Callable[..., Any], **jit_kwargs: Any) -> Callable[..., Any]:
  """`jax.jit(fun, **jit_kwargs)`, compiled at XLA's default optimisation level."""
  return jax.jit(fun, compiler_options=XLA_DEFAULT, **jit_kwargs)
