"""The predict step and the whole training step lower for TPU and CUDA from this CPU, in every
rnn_impl, with 8-way data sharding and no host callback (`lowering_worker.py` makes the exports).

The training step is the trainer's: uint8 canvases in, the step's augmentation (resize, flip,
RandAugment, Mixup/CutMix, erasing), bf16, drop path, AdamW with its schedule. The quick tests
lower the tiny model on an abstract mesh of 8 (no devices needed); the slow one lowers
Sequencer2D-S on 8 simulated CPU devices in its own process, and checks that the two meshes give
the same module. rnn_impl 'pallas''s kernels, which XLA cannot partition, run in a shard_map over
each device's rows.

`rnn_impl='auto'` is resolved when the model is traced, from the backend of the tracing process,
not from the platforms exported for: traced here it is 'per_direction' (the CPU's choice) even in
an export for CUDA. An export meant for a device should name its implementation, as these do.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import lowering_worker as worker
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from sequencer_jax.models import rnn_impls
from sequencer_jax.models.rnn_impls import RNN_IMPLS
from sequencer_jax.sharding import DATA

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope='module')
def mesh():
  return worker.abstract_mesh()


def _assert_lowers(exported: jax.export.Exported, platform: str) -> None:
  problems = worker.lowering_problems(exported, platform)
  assert not problems, f'the export for {platform}: ' + '; '.join(problems)


@pytest.mark.parametrize('platform', worker.PLATFORMS)
@pytest.mark.parametrize('impl', RNN_IMPLS)
def test_the_training_step_lowers_for_the_device(impl, platform, mesh):
  exported = worker.export_train_step(worker.train_config(impl), mesh, platform)
  _assert_lowers(exported, platform)
  # The batch of canvases arrives split over the 8 devices; the state is replicated.
  shardings = [s.spec for s in exported.in_shardings_jax(mesh)]
  assert shardings[-4:] == [P(DATA)] * 4 and set(shardings[:-4]) == {P()}
  assert [a.dtype for a in exported.in_avals[-4:]].count(jnp.uint8) == 1
  if impl == 'pallas':  # XLA cannot partition a kernel: each runs in a shard_map over 'data'.
    text = exported.mlir_module()
    kernels = re.findall(r'custom_call @(tpu_custom_call|__gpu\$xla\.gpu\.triton)\b', text)
    shard_maps = re.findall(r'sdy\.manual_computation\(.*manual_axes=\{"data"\}', text)
    assert len(kernels) == len(shard_maps) == 8  # 2 blocks x 2 axes x forward and backward.


@pytest.mark.parametrize('platform', worker.PLATFORMS)
@pytest.mark.parametrize('impl', RNN_IMPLS)
def test_the_predict_step_lowers_for_the_device(impl, platform, mesh):
  _assert_lowers(worker.export_predict_step(worker.train_config(impl), mesh, platform), platform)


def test_the_check_names_host_callbacks_and_unknown_targets(mesh):
  def with_callback(x):
    return jax.pure_callback(lambda a: np.asarray(a) * 2, jax.ShapeDtypeStruct(x.shape, x.dtype),
                             x)

  x = jax.ShapeDtypeStruct((4, 4), jnp.float32)
  # A host callback cannot even be exported for another platform than the tracing one.
  with pytest.raises(ValueError, match='different from the lowering platform'):
    jax.export.export(jax.jit(with_callback), platforms=['cuda'])(x)
  on_host = jax.jit(with_callback).lower(x).as_text()
  assert any('runs on the host' in p for p in worker.module_problems(on_host, 'cpu'))
  solver = jax.export.export(jax.jit(lambda a: jnp.linalg.eigh(a)[0]), platforms=['cuda'])(x)
  problems = worker.lowering_problems(solver, 'cuda')
  assert any("'cusolver_syevd_ffi': not in the allow-list for cuda" in p for p in problems)
  assert any('for 1 devices, not 8' in p for p in problems)
  assert worker.custom_call_targets(
      '%0 = stablehlo.custom_call @Sharding(%a)\n"stablehlo.custom_call"(%b) '
      '<{call_target_name = "tpu_custom_call"}>') == {'Sharding', 'tpu_custom_call'}


def test_auto_resolves_on_the_tracing_backend(mesh, monkeypatch):
  assert jax.default_backend() == 'cpu'
  assert rnn_impls.resolve_rnn_impl('auto', 'lstm') == 'per_direction'
  exports = {impl: worker.export_predict_step(worker.train_config(impl), mesh, 'cuda')
             for impl in ('auto', 'per_direction')}
  assert (worker.without_locations(exports['auto'].mlir_module())
          == worker.without_locations(exports['per_direction'].mlir_module()))
  monkeypatch.setattr(jax, 'default_backend', lambda: 'gpu')  # What a GPU process resolves.
  assert rnn_impls.resolve_rnn_impl('auto', 'lstm') == 'fused_vjp'
  assert rnn_impls.resolve_rnn_impl('auto', 'gru') == 'fused'


@pytest.mark.slow
def test_sequencer2d_s_lowers_on_eight_simulated_devices(tmp_path):
  """Every rnn_impl, both steps, both platforms, for Sequencer2D-S at 224 and batch 256."""
  env = {**os.environ, 'JAX_PLATFORMS': 'cpu',
         'XLA_FLAGS': f'--xla_force_host_platform_device_count={worker.NUM_DEVICES}',
         'PYTHONPATH': os.pathsep.join(filter(None, [str(ROOT), os.environ.get('PYTHONPATH')]))}
  done = subprocess.run([sys.executable, worker.__file__, str(tmp_path / 'out.json')], env=env,
                        capture_output=True, text=True, timeout=900)
  assert done.returncode == 0, (done.stdout + done.stderr)[-5000:]
  out = json.loads((tmp_path / 'out.json').read_text())
  assert out['abstract_equals_devices']  # So the quick tests' abstract mesh stands for devices.
  assert out['impls'] == list(RNN_IMPLS)
  assert set(out['exports']) == {f'{what}/{impl}/{platform}' for what in ('train', 'predict')
                                 for impl in RNN_IMPLS for platform in worker.PLATFORMS}
  for key, record in out['exports'].items():
    assert not record['problems'], f'{key}: {record["problems"]}'
