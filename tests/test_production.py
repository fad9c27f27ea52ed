"""tests/production.py compiles as the training step compiles, and the suite's -O0 does not.

The canary is float32 a * b + c with a = b = 1 + 2^-12, c = -(1 + 2^-11): exactly 2^-24, which
a fused multiply-add returns, while a rounded product and then the add give 0. The optimising
backend contracts the two into an FMA (on this x86-64 with FMA; any CPU that CI runs on), -O0
does not. Bounds: equality with those two values, and, in a process without the suite's flag,
the default compile gives the production result.
"""

from __future__ import annotations

import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from production import production_jit

ONE = np.ones(1, np.float32)
A, C = np.float32(1 + 2 ** -12) * ONE, -np.float32(1 + 2 ** -11) * ONE
FUSED, UNFUSED = np.float32(2.0 ** -24), np.float32(0.0)


def _canary(a, b, c):
  return a * b + c


def test_production_jit_contracts_as_the_optimising_backend_and_the_suite_does_not():
  assert production_jit(_canary)(A, A, C)[0] == FUSED
  assert jax.jit(_canary)(A, A, C)[0] == UNFUSED


@pytest.mark.slow
def test_a_process_without_the_suites_flag_compiles_as_production_jit():
  code = ('import jax, numpy as np; o = np.ones(1, np.float32); '
          'a = np.float32(1 + 2 ** -12) * o; c = -np.float32(1 + 2 ** -11) * o; '
          'print(float(jax.jit(lambda a, b, c: a * b + c)(a, a, c)[0]))')
  env = {k: v for k, v in os.environ.items() if k != 'XLA_FLAGS'}
  out = subprocess.run([sys.executable, '-c', code], env=env, capture_output=True, text=True,
                       check=True, timeout=120)
  assert float(out.stdout.split()[-1]) == FUSED
