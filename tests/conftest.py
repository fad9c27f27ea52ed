"""Shared test setup: fp32 at the highest matmul precision, compilations cached, and timm
importable without torchvision.

Only the torchvision stand-in is registered here (it imports neither torch nor timm): torch and
timm are imported by the tests that compare against them, and by no other. The suite is bound by
XLA's compile time, not by the run time of its small computations: LLVM compiles at -O0 (shorter
compiles), and a computation compiled twice in one session is read back from a disk cache.
"""

from __future__ import annotations

import os
import sys

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')
if os.environ.get('PYTEST_XDIST_WORKER'):
  # One worker per core: torch's and NumPy's OpenMP threads would spin on the other workers' core.
  os.environ.setdefault('OMP_NUM_THREADS', '1')
  os.environ['XLA_FLAGS'] = ' '.join([os.environ.get('XLA_FLAGS', ''),
                                      '--xla_cpu_multi_thread_eigen=false']).strip()
os.environ['XLA_FLAGS'] = ' '.join(
    [os.environ.get('XLA_FLAGS', ''), '--xla_backend_optimization_level=0']).strip()
sys.path.insert(0, os.path.dirname(__file__))  # The helpers beside this file.

import jax  # noqa: E402
import pytest  # noqa: E402

from tools import torchvision_stand_in  # noqa: E402

jax.config.update('jax_default_matmul_precision', 'highest')
torchvision_stand_in.install()


@pytest.fixture(scope='session', autouse=True)
def compilation_cache(tmp_path_factory: pytest.TempPathFactory):
  """One disk cache of compilations for the session (each xdist worker has its own)."""
  jax.config.update('jax_compilation_cache_dir', str(tmp_path_factory.mktemp('jax_cache')))
  jax.config.update('jax_persistent_cache_min_compile_time_secs', 0.0)
  jax.config.update('jax_persistent_cache_min_entry_size_bytes', 0)
  yield
  jax.config.update('jax_compilation_cache_dir', None)
