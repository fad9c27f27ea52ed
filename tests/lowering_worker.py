"""Exports of the predict step and the training step for TPU and CUDA, made on this CPU, and the
checks of test_lowering.py on them; run as a program, the slow tier's part in its own process.

An export for another platform traces and lowers with `jax.export` and compiles nothing. The
shardings are on a mesh of `NUM_DEVICES`: an `AbstractMesh` in the test's own process (it needs no
devices), or, in the worker process started with
`XLA_FLAGS=--xla_force_host_platform_device_count=8`, the trainer's own mesh over 8 simulated CPU
devices (`sharding.make_mesh`):

  XLA_FLAGS=--xla_force_host_platform_device_count=8 python tests/lowering_worker.py OUT.json

exports Sequencer2D-S (the paper's recipe at 224, batch 256) in every rnn_impl for both
platforms on that mesh, and the tiny model on both meshes to show that they lower alike; it
writes what test_lowering.py checks (targets, sizes, times) to OUT.json.
"""

from __future__ import annotations

import json
import re
import sys
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
from jax.sharding import AbstractMesh, AxisType, Mesh

from configs import default
from sequencer_jax.data import eval_crop
from sequencer_jax.evaluation import runner
from sequencer_jax.models import DataConfig, abstract_params
from sequencer_jax.models.rnn_impls import RNN_IMPLS
from sequencer_jax.sharding import DATA, make_mesh, param_shardings
from sequencer_jax.train.config import build_model, build_optimizer, device_augment
from sequencer_jax.train.state import abstract_train_state
from sequencer_jax.train.step import make_train_step

NUM_DEVICES = 8
PLATFORMS = ('tpu', 'cuda')
# Two stages (so a downsampling conv), one block each: the smallest model with every layer kind.
TINY = dict(layers=(1, 1), patch_sizes=(4, 2), embed_dims=(16, 32), hidden_sizes=(4, 8))
TINY_SIZES = dict(image_size=32, canvas_size=40, batch=8, num_classes=10)
S_SIZES = dict(image_size=224, canvas_size=512, batch=256, num_classes=1000)

# Custom-call targets an export may hold: partitioning markers on every platform, and the
# kernels Pallas (Mosaic TPU; Mosaic GPU or Triton) and jax-triton emit on their own platform.
# Anything else (a host callback, a CPU library such as LAPACK or DUCC, a solver) fails the test.
DEVICE_NEUTRAL_TARGETS = frozenset({
    'Sharding', 'SPMDFullToShardShape', 'SPMDShardToFullShape', 'xla.sdy.GlobalToLocalShape',
    'xla.sdy.LocalToGlobalShape', 'xla.sdy.FuncResultSharding', 'xla.sdy.ManualComputation'})
TRITON = '__gpu$xla.gpu.triton'  # Pallas's Triton kernels on CUDA.
PLATFORM_TARGETS = {
    'tpu': frozenset({'tpu_custom_call'}),
    'cuda': frozenset({'mosaic_gpu', 'mosaic_gpu_v2', TRITON,
                       'triton_kernel_call'}),
}
HOST_WORDS = ('callback', 'lapack', 'ducc', 'cpu')  # In a target's name: it runs on the host.
# StableHLO ops that move data between the device and the host.
HOST_TRANSFER_OPS = ('stablehlo.send', 'stablehlo.recv', 'stablehlo.infeed', 'stablehlo.outfeed')


def abstract_mesh() -> AbstractMesh:
  """A 'data' mesh of `NUM_DEVICES` for lowering, with no devices behind it."""
  return AbstractMesh((NUM_DEVICES,), (DATA,), axis_types=(AxisType.Auto,))


def train_config(impl: str, arch: dict | None = TINY, sizes: dict = TINY_SIZES
                 ) -> ml_collections.ConfigDict:
  """The default config (the paper's recipe: bf16, AdamW, RandAugment, Mixup/CutMix, erasing,
  drop path) with `impl`, `arch`'s overrides (None: Sequencer2D-S) and `sizes`."""
  config = default.get_config()
  if arch is not None:
    config.model.arch = ml_collections.ConfigDict(arch)
  config.model.rnn_impl = impl
  config.model.num_classes = sizes['num_classes']
  config.data.image_size = sizes['image_size']
  config.data.canvas_size = sizes['canvas_size']
  config.global_batch_size = sizes['batch']
  return config


def _struct(shape: tuple[int, ...], dtype: Any) -> jax.ShapeDtypeStruct:
  return jax.ShapeDtypeStruct(shape, jnp.dtype(dtype))


def _export(function: Any, platform: str) -> Any:
  """`jax.export.export` for `platform`. Pallas's Triton call on CUDA has no compatibility
  guarantee, so export refuses it unless told; the allow-list above still checks every target."""
  checks = ([jax.export.DisabledSafetyCheck.custom_call(TRITON)] if platform == 'cuda' else [])
  return jax.export.export(function, platforms=[platform], disabled_checks=checks)


def export_train_step(config: ml_collections.ConfigDict, mesh: Mesh | AbstractMesh,
                      platform: str) -> jax.export.Exported:
  """The trainer's step for `config` (`loop._train`'s construction: the state's shardings on
  `mesh`, the batch of uint8 canvases sharded over 'data'), exported for `platform`."""
  model = build_model(config)
  optimizer, _ = build_optimizer(config, steps_per_epoch=100)
  state = abstract_train_state(model, optimizer, image_size=config.data.image_size, mesh=mesh,
                               fsdp=config.fsdp, ema=config.ema_decay is not None)
  shardings = jax.tree.map(lambda x: x.sharding, state)
  step = make_train_step(model, optimizer, augment=device_augment(config),
                         grad_accum_steps=config.grad_accum_steps, ema_decay=config.ema_decay,
                         mesh=mesh, state_shardings=shardings)
  b, s = config.global_batch_size, config.data.canvas_size
  batch = {'image': _struct((b, s, s, 3), jnp.uint8), 'crop_size': _struct((b, 2), jnp.int32),
           'bicubic': _struct((b,), jnp.bool_), 'label': _struct((b,), jnp.int32)}
  return _export(step, platform)(state, batch)


def export_predict_step(config: ml_collections.ConfigDict, mesh: Mesh | AbstractMesh,
                        platform: str) -> jax.export.Exported:
  """The evaluation's predict step (`runner.make_predict_step`, with the loss training's
  evaluations ask for) of `config`'s model, exported for `platform`."""
  model = build_model(config)
  params = abstract_params(model)
  step = runner.make_predict_step(model, mesh=mesh, with_loss=True,
                                  params_sharding=param_shardings(params, mesh, fsdp=False))
  b = config.global_batch_size
  shapes = eval_crop.shapes(DataConfig(config.data.image_size, config.data.crop_pct))
  batch = {name: _struct((b, *shapes[name]), dtype) for name, dtype in eval_crop.FIELDS}
  batch.update(label=_struct((b,), jnp.int32), mask=_struct((b,), jnp.bool_),
               index=_struct((b,), jnp.int32))
  return _export(step, platform)(params, batch)


def custom_call_targets(module_text: str) -> set[str]:
  """Every custom-call target named in StableHLO text, in pretty or generic form."""
  pretty = re.findall(r'custom_call\s*@([^\s(]+)', module_text)
  generic = re.findall(r'call_target_name\s*=\s*"([^"]+)"', module_text)
  return set(pretty) | set(generic)


def module_problems(module_text: str, platform: str) -> list[str]:
  """The custom calls and host transfers in StableHLO text that do not belong in a module for
  `platform`, each in words naming its target or op; [] when there are none."""
  allowed = DEVICE_NEUTRAL_TARGETS | PLATFORM_TARGETS.get(platform, frozenset())
  problems = []
  for target in sorted(custom_call_targets(module_text) - allowed):
    host = any(word in target.lower() for word in HOST_WORDS)
    problems.append(f'custom call {target!r}: ' + (
        'runs on the host' if host else f'not in the allow-list for {platform}'))
  return problems + [f'host transfer op {op}' for op in HOST_TRANSFER_OPS if op in module_text]


def lowering_problems(exported: jax.export.Exported, platform: str) -> list[str]:
  """What is wrong with an export meant for `platform` on `NUM_DEVICES` devices: its platforms,
  its device count, and `module_problems`; [] when nothing is."""
  text = exported.mlir_module()
  problems = []
  if tuple(exported.platforms) != (platform,):
    problems.append(f'exported for {exported.platforms}, not ({platform!r},)')
  if exported.nr_devices != NUM_DEVICES or f'mhlo.num_partitions = {NUM_DEVICES}' not in text:
    problems.append(f'lowered for {exported.nr_devices} devices, not {NUM_DEVICES}')
  return problems + module_problems(text, platform)


def without_locations(module_text: str) -> str:
  """StableHLO text less its source locations (which name the calling file and line)."""
  return re.sub(r'loc\([^\n]*', '', module_text)


def _record(exported: jax.export.Exported, platform: str, seconds: float) -> dict[str, Any]:
  text = exported.mlir_module()
  return {'seconds': seconds, 'text_bytes': len(text),
          'serialized_bytes': len(exported.mlir_module_serialized),
          'problems': lowering_problems(exported, platform),
          'targets': sorted(custom_call_targets(text))}


def main(path: str) -> None:
  if jax.device_count() != NUM_DEVICES:
    raise SystemExit(f'needs XLA_FLAGS=--xla_force_host_platform_device_count={NUM_DEVICES}, '
                     f'found {jax.device_count()} devices')
  mesh = make_mesh()
  out: dict[str, Any] = {'impls': list(RNN_IMPLS), 'exports': {}}
  tiny = train_config('fused_vjp')
  texts = [without_locations(export_train_step(tiny, m, 'cuda').mlir_module())
           for m in (abstract_mesh(), mesh)]
  out['abstract_equals_devices'] = texts[0] == texts[1]
  for impl in RNN_IMPLS:
    config = train_config(impl, arch=None, sizes=S_SIZES)
    for what, export in (('train', export_train_step), ('predict', export_predict_step)):
      for platform in PLATFORMS:
        start = time.perf_counter()
        exported = export(config, mesh, platform)
        out['exports'][f'{what}/{impl}/{platform}'] = _record(
            exported, platform, time.perf_counter() - start)
        print(what, impl, platform, out['exports'][f'{what}/{impl}/{platform}'], flush=True)
  with open(path, 'w') as f:
    json.dump(out, f, indent=1)


if __name__ == '__main__':
  main(sys.argv[1])
