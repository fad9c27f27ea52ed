"""The device-count runs of test_train_step.py, in their own process.

`XLA_FLAGS=--xla_force_host_platform_device_count=8 python tests/train_step_worker.py OUT.npz`
runs the same training steps (`run`) on 1 device ('one'), on 8 replicated ('eight'), on 8
with fsdp ('fsdp') and on 8 with fsdp and rnn_impl 'pallas' ('pallas_fsdp': its kernels in
interpret mode, in a shard_map over each device's rows), and saves the results with keys
'<run>/<key of run's result>'. It needs its own process because the device count is fixed when
JAX starts.
"""

from __future__ import annotations

import sys
from typing import Any

import jax
import numpy as np
import optax
from random_params import random_variables

from sequencer_jax.data.device_augment import DeviceAugment
from sequencer_jax.data.mixup import MixupConfig
from sequencer_jax.models import Sequencer, SequencerArch
from sequencer_jax.sharding import global_batch, make_mesh
from sequencer_jax.train.state import create_train_state
from sequencer_jax.train.step import make_train_step

# One stage of two blocks (the second with drop path): compiles in half the time of two stages.
ARCH = SequencerArch(layers=(2,), patch_sizes=(4,), embed_dims=(16,), hidden_sizes=(4,))
NUM_CLASSES = 10
NUM_DEVICES = 8
BATCH, IMAGE_SIZE, STEPS = 32, 16, 3
CANVAS = 24  # The host's canvases: crops of 4 to 24 pixels a side, resized to 16 in the step.
FSDP_MIN_SIZE = 256  # The tiny model's arrays are small: shard all but the smallest.
BIG_LEAF = 'stages_0_blocks_0/mlp_channels/fc1/kernel'  # (16, 48): sharded on its 48.


def by_path(tree: dict) -> dict[str, Any]:
  """{'a/b/c': leaf} for a nested dict."""
  return {'/'.join(k.key for k in path): leaf
          for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


def random_params(model: Sequencer, seed: int) -> dict:
  """Random parameters of `model`'s shapes (every weight nonzero), without compiling its init."""
  images = np.zeros((1, IMAGE_SIZE, IMAGE_SIZE, 3), np.float32)
  return random_variables(model, images, seed=seed)['params']


def batches(seed: int) -> list[dict[str, np.ndarray]]:
  """`STEPS` random global batches as the host yields them: canvases, crop sizes, filters and
  labels."""
  rng = np.random.default_rng(seed)
  return [{'image': rng.integers(0, 256, (BATCH, CANVAS, CANVAS, 3), np.uint8),
           'crop_size': rng.integers(4, CANVAS + 1, (BATCH, 2)).astype(np.int32),
           'bicubic': rng.random(BATCH) < 0.5,
           'label': rng.integers(0, NUM_CLASSES, BATCH).astype(np.int32)} for _ in range(STEPS)]


def run(num_devices: int, fsdp: bool, rnn_impl: str = 'auto') -> dict[str, np.ndarray]:
  """`STEPS` steps with the paper's augmentation in the step (resize, flip, RandAugment, mixup,
  cutmix, erasing) and drop path on `num_devices` devices, the model's RNNs run by `rnn_impl`
  ('auto' is 'per_direction' on the CPU).

  The optimizer is SGD with momentum after global-norm clipping: the parameters are linear in
  the gradients. AdamW's per-element normalisation would magnify the rounding of gradient
  elements that nearly cancel over the batch (measured: one element in 1,200 off by 1e-3 of its
  step, the rest within 1e-8), which says nothing about the sharding.

  Returns the final parameters (by path), the metrics of each step (':loss', ':grad_norm'),
  and the sharding spec and first shard's shape of `BIG_LEAF` (':spec', ':shard').
  """
  model = Sequencer(ARCH, num_classes=NUM_CLASSES, drop_path_rate=0.2, rnn_impl=rnn_impl)
  optimizer = optax.chain(optax.clip_by_global_norm(1.0), optax.sgd(0.5, momentum=0.9))
  mesh = make_mesh(num_devices)
  state, shardings = create_train_state(
      model, optimizer, image_size=IMAGE_SIZE, seed=0, mesh=mesh, fsdp=fsdp,
      fsdp_min_size=FSDP_MIN_SIZE, params=random_params(model, seed=0))
  # Mixup per group of 8, in the step: the same on any number of devices.
  augment = DeviceAugment(NUM_CLASSES, IMAGE_SIZE, mixup=MixupConfig(NUM_CLASSES), group_size=8)
  step = make_train_step(model, optimizer, augment=augment, mesh=mesh, state_shardings=shardings)
  metrics = []
  for batch in batches(seed=1):
    state, m = step(state, global_batch(batch, mesh))
    metrics.append(m)
  params = by_path(state.params)
  big = params[BIG_LEAF]
  return {**{k: np.asarray(v) for k, v in params.items()},
          ':loss': np.array([m['loss'] for m in metrics]),
          ':grad_norm': np.array([m['grad_norm'] for m in metrics]),
          ':spec': np.array(str(big.sharding.spec)),
          ':shard': np.array(big.addressable_shards[0].data.shape)}


def main(path: str) -> None:
  jax.config.update('jax_default_matmul_precision', 'highest')
  if jax.device_count() != NUM_DEVICES:
    raise SystemExit(f'needs XLA_FLAGS=--xla_force_host_platform_device_count={NUM_DEVICES}, '
                     f'found {jax.device_count()} devices')
  results = {'one': run(1, fsdp=False), 'eight': run(NUM_DEVICES, fsdp=False),
             'fsdp': run(NUM_DEVICES, fsdp=True),
             'pallas_fsdp': run(NUM_DEVICES, fsdp=True, rnn_impl='pallas')}
  np.savez(path, **{f'{name}/{key}': value for name, result in results.items()
                    for key, value in result.items()})


if __name__ == '__main__':
  main(sys.argv[1])
