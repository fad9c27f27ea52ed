"""Shared test setup: fp32 at the highest matmul precision, and timm importable without torchvision."""

from __future__ import annotations

import os
import sys

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')
sys.path.insert(0, os.path.dirname(__file__))

import jax  # noqa: E402

jax.config.update('jax_default_matmul_precision', 'highest')

from sequencer_jax.torch_compat import import_timm  # noqa: E402

import_timm()
