"""The jitted train and eval steps: 1 vs 8 devices, fsdp, gradient accumulation, EMA, donation.

The device-count runs need their own process (the device count is fixed when JAX starts): those
tests (slow tier) start `train_step_worker.py` and read its results; the other tests run here on
whatever devices this process has.
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from typing import Any

import flax.linen as nn
import jax
import numpy as np
import optax
import pytest
import train_step_worker as worker
from jax.sharding import PartitionSpec as P

from sequencer_jax.data.device_augment import DeviceAugment
from sequencer_jax.evaluation import metrics, runner
from sequencer_jax.models import Sequencer
from sequencer_jax.sharding import fsdp_spec, global_batch, make_mesh, on_mesh, param_shardings
from sequencer_jax.train.state import TrainState, create_train_state
from sequencer_jax.train.step import make_train_step, soft_target_cross_entropy

# Parameters of two runs that should agree up to float32 rounding: per leaf, the largest
# difference relative to the leaf's largest magnitude. Measured: 2.0e-7 for 8 devices vs 1
# (1.1e-7 without the worker's -O0), 0 for fsdp vs replicated, 7e-8 for accumulation: 1 to 2
# float32 ulps of the parameters.
PARAMS_RTOL = 1e-6
METRICS_RTOL = 1e-6  # Losses and gradient norms; measured <= 1.8e-7.
EMA_DECAY = 0.9
ACCUM = 4
# The accumulation runs have no drop path: the first block of the worker's model is enough, and
# halves the compile time of their steps.
ACCUM_ARCH = dataclasses.replace(worker.ARCH, layers=(1,))


@pytest.fixture(scope='module')
def worker_process(tmp_path_factory: pytest.TempPathFactory) -> Any:
  """Starts the device-count runs in a subprocess."""
  directory = tmp_path_factory.mktemp('train_step_worker')
  # LLVM's -O0 shortens the compiles; the runs compared all use it.
  flags = (f'--xla_force_host_platform_device_count={worker.NUM_DEVICES} '
           '--xla_backend_optimization_level=0')
  env = {**os.environ, 'JAX_PLATFORMS': 'cpu', 'XLA_FLAGS': flags}
  with open(directory / 'log.txt', 'w') as log:
    process = subprocess.Popen([sys.executable, worker.__file__, str(directory / 'out.npz')],
                               env=env, stdout=log, stderr=subprocess.STDOUT)
  yield process, directory
  if process.poll() is None:
    process.kill()
    process.wait()


@pytest.fixture(scope='module')
def multi_device(worker_process: Any) -> dict[str, np.ndarray]:
  """The worker's results: '<run>/<key>' for the runs 'one', 'eight', 'fsdp' and
  'pallas_fsdp'."""
  process, directory = worker_process
  returncode = process.wait(timeout=600)
  assert returncode == 0, (directory / 'log.txt').read_text()[-5000:]
  with np.load(directory / 'out.npz') as f:
    return dict(f)


def _run(results: dict[str, np.ndarray], name: str) -> dict[str, np.ndarray]:
  """One run's part of the worker's results, keyed as `worker.run` returns them."""
  return {k.split('/', 1)[1]: v for k, v in results.items() if k.startswith(name + '/')}


def _params(result: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  return {k: v for k, v in result.items() if not k.startswith(':')}


def _assert_params_close(got: dict[str, Any], want: dict[str, Any], what: str) -> None:
  assert got.keys() == want.keys()
  for key, value in want.items():
    scale = np.abs(value).max()
    error = np.abs(np.asarray(got[key]) - value).max()
    assert error <= PARAMS_RTOL * scale, f'{what}: {key} differs by {error} (scale {scale})'


def test_fsdp_spec():
  assert fsdp_spec((32, 96), 8, min_size=256) == P(None, 'data')
  assert fsdp_spec((96, 32), 8, min_size=256) == P('data')
  assert fsdp_spec((3, 3, 12, 16), 4, min_size=256) == P(None, None, None, 'data')
  assert fsdp_spec((31, 97), 8, min_size=256) == P()  # Nothing divisible.
  assert fsdp_spec((32, 96), 8) == P()  # Under the default 2**14 elements.
  assert fsdp_spec((), 8, min_size=0) == P()


def test_on_mesh_is_the_context_mesh_of_a_jitted_step():
  """What the model's shard_maps run over ('pallas'), from a real mesh or an abstract one."""
  abstract = jax.sharding.AbstractMesh((8,), ('data',))
  for mesh in (make_mesh(), abstract):
    seen = []
    traced = jax.jit(on_mesh(lambda x: seen.append(jax.sharding.get_abstract_mesh()) or x, mesh))
    traced.trace(np.zeros(8, np.float32))
    assert seen == [mesh.abstract_mesh], mesh
  assert jax.sharding.get_abstract_mesh().empty  # Nothing outlives the trace.


def test_soft_target_cross_entropy():
  rng = np.random.default_rng(0)
  logits = rng.standard_normal((6, 5)).astype(np.float32)
  targets = rng.dirichlet(np.ones(5), 6).astype(np.float32)
  log_probs = logits - np.log(np.exp(logits.astype(np.float64)).sum(-1, keepdims=True))
  want = np.mean(np.sum(-targets * log_probs, axis=-1))
  np.testing.assert_allclose(soft_target_cross_entropy(logits, targets), want, rtol=1e-6)


def test_train_step_rejects_inconsistent_settings():
  model = Sequencer(worker.ARCH, num_classes=worker.NUM_CLASSES)
  mesh = make_mesh()
  optimizer = optax.sgd(0.1)
  shardings = TrainState(step=None, params=None, opt_state=None, ema_params=None, rng=None)
  with pytest.raises(ValueError, match='augmentation is for 5 classes'):
    make_train_step(model, optimizer, augment=DeviceAugment(5, 16), mesh=mesh,
                    state_shardings=shardings)
  with pytest.raises(ValueError, match='ema_decay'):
    make_train_step(model, optimizer, augment=DeviceAugment(worker.NUM_CLASSES, 16),
                    ema_decay=0.99, mesh=mesh, state_shardings=shardings)


class _Linear(nn.Module):
  """A stand-in classifier whose logits numpy can check: Dense on the flattened image."""

  num_classes: int

  @nn.compact
  def __call__(self, images: jax.Array) -> jax.Array:
    return nn.Dense(self.num_classes)(images.reshape(images.shape[0], -1))


def test_the_predict_step_gives_training_its_loss_over_valid_examples():
  """Training's `accuracy` evaluations: the evaluate command's predict step with each image's
  loss, summed by the metric over the unmasked images only."""
  batch_size, num_classes = 64, 10
  rng = np.random.default_rng(0)
  kernel = rng.standard_normal((4 * 4 * 3, num_classes)).astype(np.float32)
  params = {'Dense_0': {'kernel': kernel, 'bias': rng.standard_normal(num_classes, np.float32)}}
  mask = rng.random(batch_size) < 0.7
  images = rng.standard_normal((batch_size, 4, 4, 3)).astype(np.float32)
  images[~mask] = np.nan  # Padding must not leak into the sums, even as NaN.
  labels = np.where(mask, rng.integers(0, num_classes, batch_size), 0).astype(np.int32)
  mesh = make_mesh()
  step = runner.make_predict_step(_Linear(num_classes), mesh=mesh, with_loss=True,
                                  params_sharding=param_shardings(params, mesh, fsdp=False),
                                  inputs=lambda batch: batch['image'])
  batch = {'image': images, 'label': labels, 'mask': mask,
           'index': np.arange(batch_size, dtype=np.int32)}
  out = jax.device_get(step(params, global_batch(batch, mesh)))
  metric = metrics.TopK()
  keep = out['mask']
  metric.update(out['top5'][keep], out['label'][keep], out['index'][keep], out['loss'][keep])
  got = metric.result()

  logits = images[mask].reshape(mask.sum(), -1).astype(np.float64) @ kernel
  logits += params['Dense_0']['bias']
  log_probs = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
  valid = labels[mask]
  ranks = np.sum(logits > logits[np.arange(len(valid)), valid][:, None], axis=-1)
  np.testing.assert_allclose(got['loss'], -log_probs[np.arange(len(valid)), valid].mean(),
                             rtol=1e-6)
  assert got['top1'] == np.mean(ranks == 0) > 0
  assert got['top5'] == np.mean(ranks < 5) > got['top1']
  assert got['images'] == mask.sum() < batch_size


def test_create_train_state_initialises_on_the_mesh():
  model, mesh, optimizer = _Linear(10), make_mesh(), optax.adam(1e-3)
  states = {fsdp: create_train_state(model, optimizer, image_size=4, seed=0, mesh=mesh,
                                     fsdp=fsdp, fsdp_min_size=64, ema=True)
            for fsdp in (False, True)}
  state, shardings = states[True]
  kernel = state.params['Dense_0']['kernel']  # (48, 10); the bias is under fsdp_min_size.
  assert kernel.sharding.spec == P('data') == shardings.params['Dense_0']['kernel'].spec
  assert state.params['Dense_0']['bias'].sharding.spec == P()
  assert state.opt_state[0].mu['Dense_0']['kernel'].sharding.spec == P('data')
  assert int(state.step) == 0 and np.std(kernel) > 0
  for a, b in zip(jax.tree.leaves(state.params), jax.tree.leaves(states[False][0].params)):
    np.testing.assert_array_equal(a, b)  # The initialisation does not depend on the sharding.
  given, _ = create_train_state(model, optimizer, image_size=4, seed=0, mesh=mesh, fsdp=True,
                                fsdp_min_size=64, ema=True, params=state.params)
  pointer = lambda x: x.addressable_shards[0].data.unsafe_buffer_pointer()
  for p, e, g, ge in zip(*(jax.tree.leaves(t) for t in (state.params, state.ema_params,
                                                        given.params, given.ema_params))):
    for x in (e, g, ge):
      np.testing.assert_array_equal(x, p)
    # Separate buffers, or donating the state would fail or delete the caller's arrays.
    assert len({pointer(x) for x in (p, e, g, ge)}) == 4


@pytest.fixture(scope='module')
def accumulation() -> dict[str, Any]:
  """`STEPS` SGD steps (no mixup, no drop path) on the full batch and in `ACCUM` micro-batches
  from the same parameters, with EMA; plus what the donation and EMA tests need."""
  model = Sequencer(ACCUM_ARCH, num_classes=worker.NUM_CLASSES)
  optimizer = optax.sgd(0.1)
  mesh = make_mesh()
  init = worker.random_params(model, seed=3)
  create = lambda params: create_train_state(model, optimizer, image_size=worker.IMAGE_SIZE,
                                             seed=0, mesh=mesh, ema=True, params=params)
  full, shardings = create(init)
  split, _ = create(full.params)
  # The resize alone, and smoothed one-hot targets.
  augment = DeviceAugment(worker.NUM_CLASSES, worker.IMAGE_SIZE, hflip=0.0, rand_augment=None,
                          color_jitter=0.0, reprob=0.0)
  steps = {n: make_train_step(model, optimizer, augment=augment, grad_accum_steps=n,
                              ema_decay=EMA_DECAY, mesh=mesh, state_shardings=shardings)
           for n in (1, ACCUM)}
  batches = [global_batch(b, mesh) for b in worker.batches(seed=2)]
  copy = lambda tree: worker.by_path(jax.tree.map(np.array, tree))  # No views: they block donation.
  out: dict[str, Any] = {'init': copy(init)}
  metrics: dict[int, list] = {1: [], ACCUM: []}
  for batch in batches:
    split, m = steps[ACCUM](split, batch)
    metrics[ACCUM].append(m)
  out['given_alive'] = not any(x.is_deleted() for x in jax.tree.leaves(full.params))
  donated = jax.tree.leaves(full.params)[0], jax.tree.leaves(full.ema_params)[0]
  for i, batch in enumerate(batches):
    full, m = steps[1](full, batch)
    metrics[1].append(m)
    if i == 0:
      out['donated'] = [x.is_deleted() for x in donated]
      out['first'], out['first_ema'] = copy(full.params), copy(full.ema_params)
  out['full'], out['split'] = copy(full.params), copy(split.params)
  out['step'] = int(full.step)
  for key in ('loss', 'grad_norm'):
    out[key] = {n: np.array([m[key] for m in ms]) for n, ms in metrics.items()}
  return out


def test_gradient_accumulation_equals_full_batch(accumulation: dict[str, Any]):
  a = accumulation
  assert a['step'] == worker.STEPS
  for key in ('loss', 'grad_norm'):
    np.testing.assert_allclose(a[key][ACCUM], a[key][1], rtol=METRICS_RTOL)
  _assert_params_close(a['split'], a['full'], f'{ACCUM} micro-batches vs 1')


def test_ema_after_one_step(accumulation: dict[str, Any]):
  a = accumulation
  for key, init in a['init'].items():
    want = EMA_DECAY * init + (1 - EMA_DECAY) * a['first'][key]
    np.testing.assert_allclose(a['first_ema'][key], want, rtol=1e-6, atol=1e-7, err_msg=key)


def test_state_is_donated_and_given_params_are_copied(accumulation: dict[str, Any]):
  assert accumulation['donated'] == [True, True]  # A params leaf and an EMA leaf.
  assert accumulation['given_alive']  # create_train_state(params=...) copied them.


@pytest.mark.slow
def test_eight_devices_equal_one(multi_device: dict[str, np.ndarray]):
  one, eight = _run(multi_device, 'one'), _run(multi_device, 'eight')
  for key in (':loss', ':grad_norm'):
    np.testing.assert_allclose(eight[key], one[key], rtol=METRICS_RTOL)
  assert eight[':spec'] == str(P())
  _assert_params_close(_params(eight), _params(one), '8 devices vs 1')


@pytest.mark.slow
def test_fsdp_equals_replicated(multi_device: dict[str, np.ndarray]):
  fsdp, replicated = _run(multi_device, 'fsdp'), _run(multi_device, 'eight')
  assert fsdp[':spec'] == str(P(None, 'data'))
  assert tuple(fsdp[':shard']) == (16, 48 // worker.NUM_DEVICES)
  for key in (':loss', ':grad_norm'):
    np.testing.assert_allclose(fsdp[key], replicated[key], rtol=METRICS_RTOL)
  _assert_params_close(_params(fsdp), _params(replicated), 'fsdp vs replicated')


@pytest.mark.slow
def test_pallas_kernels_sharded_with_fsdp_equal_per_direction_on_one_device(multi_device):
  """The kernels in a shard_map over the batch's rows, the fsdp-sharded weights gathered whole
  into it, against 'per_direction' on one device."""
  pallas, one = _run(multi_device, 'pallas_fsdp'), _run(multi_device, 'one')
  assert pallas[':spec'] == str(P(None, 'data'))
  for key in (':loss', ':grad_norm'):
    np.testing.assert_allclose(pallas[key], one[key], rtol=METRICS_RTOL)
  _assert_params_close(_params(pallas), _params(one), 'pallas on 8 devices with fsdp vs 1')
