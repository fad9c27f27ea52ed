"""The training loop end to end on a tiny model and a generated image folder: trains, logs,
checkpoints, is interrupted by SIGTERM and resumes to the same parameters, evaluates every image
once, refuses another run's workdir, stops on a NaN loss or out of memory keeping its
checkpoints; and initialisation from a checkpoint with another head."""

from __future__ import annotations

import errno
import json
import os
import random
import shutil
import signal

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from snapshot import snapshot
from tiny_run import restore_params, tiny_config

from sequencer_jax import ModelRecord, models, save_model, sharding, storage
from sequencer_jax.errors import CheckpointError
from sequencer_jax.models import DataConfig, abstract_params
from sequencer_jax.train import config as train_config
from sequencer_jax.train import loop
from sequencer_jax.train import step as train_step


@pytest.fixture(scope='module')
def whole_run(dataset, tmp_path_factory):
  """An uninterrupted run of `tiny_config(dataset)`: (workdir, final eval metrics)."""
  workdir = str(tmp_path_factory.mktemp('whole'))
  return workdir, loop.train_and_evaluate(tiny_config(dataset), workdir)


@pytest.mark.slow
def test_train_resume_and_evaluate(dataset, whole_run, tmp_path, monkeypatch):
  config = tiny_config(dataset)
  whole, metrics = whole_run
  assert metrics['images'] == 18 and 0 <= metrics['top1'] <= 1
  assert sorted(os.listdir(os.path.join(whole, 'checkpoints'))) == ['4', '6']  # Keeps 2.
  lines = [json.loads(l) for l in open(os.path.join(whole, 'metrics.jsonl'))]
  assert [l['step'] for l in lines if l['kind'] == 'train'] == [2, 3, 4, 6]
  assert [l['step'] for l in lines if l['kind'] == 'eval/val'] == [3, 6]
  assert all(np.isfinite(l['loss']) for l in lines)
  assert any(name.startswith('events.out.tfevents') for name in os.listdir(whole))
  written = json.load(open(os.path.join(whole, 'config.json')))
  assert written['global_batch_size'] == 16
  assert written['resolved'] == {'learning_rate': config.optim.lr}  # The demo does not scale.

  # A real SIGTERM after a random step, then started again: the same final parameters, bit for
  # bit (the data pipeline is a pure function of the step; the RNG is in the state).
  kill_at = random.randint(1, 5)
  split = str(tmp_path / 'split')
  real_make_train_step = train_step.make_train_step

  def make_train_step_sending_sigterm(*args, **kwargs):
    update = real_make_train_step(*args, **kwargs)

    def update_then_sigterm(state, batch):
      state, metrics = update(state, batch)
      if int(state.step) == kill_at:
        os.kill(os.getpid(), signal.SIGTERM)
      return state, metrics
    return update_then_sigterm

  monkeypatch.setattr(train_step, 'make_train_step', make_train_step_sending_sigterm)
  handler = signal.getsignal(signal.SIGTERM)
  loop.train_and_evaluate(config, split)
  monkeypatch.undo()
  steps = sorted(int(s) for s in os.listdir(os.path.join(split, 'checkpoints')))
  assert steps[-1] == kill_at, f'SIGTERM after step {kill_at}: checkpoints {steps}'
  assert signal.getsignal(signal.SIGTERM) == handler  # Ours is removed again.
  resumed = loop.train_and_evaluate(config, split)
  want = restore_params(whole, config, 6)
  got = restore_params(split, config, 6)
  for a, b in zip(jax.tree.leaves(want), jax.tree.leaves(got)):
    np.testing.assert_array_equal(a, b, err_msg=f'SIGTERM after step {kill_at}')
  assert resumed['top1'] == metrics['top1']

  # Another run's workdir is refused, and left as it was.
  before = snapshot(whole)
  with pytest.raises(CheckpointError, match='holds another run.*global_batch_size'):
    loop.train_and_evaluate(tiny_config(dataset, global_batch_size=8), whole)
  assert snapshot(whole) == before


def test_init_from_a_checkpoint_with_another_head_keeps_the_rest(tmp_path):
  source = train_config.build_model(tiny_config('unused', **{'model.num_classes': 1000}))
  rng = np.random.default_rng(0)
  params = jax.tree.map(lambda s: rng.standard_normal(s.shape).astype(np.float32),
                        abstract_params(source))
  save_model(str(tmp_path / 'ckpt'), ModelRecord(source.arch, 1000), params)
  config = tiny_config('unused', **{'model.num_classes': 10, 'init_from': str(tmp_path / 'ckpt')})
  loaded = loop.init_params(config, train_config.build_model(config))
  flat, flat_loaded = (dict(jax.tree_util.tree_flatten_with_path(p)[0]) for p in (params,
                                                                               loaded))
  assert flat.keys() == flat_loaded.keys()
  for path, value in flat.items():
    if 'head' in str(path[0]):
      assert not np.any(flat_loaded[path]) and flat_loaded[path].shape[-1] == 10
    else:
      np.testing.assert_array_equal(flat_loaded[path], value)
  with pytest.raises(loop.TrainingError, match='has 1000 classes but model.num_classes is 10; '
                                                'set model.num_classes to 1000 to evaluate it'):
    loop.init_params(config, train_config.build_model(config), replace_head_ok=False)
  config.model.arch.layers = (2, 1)
  with pytest.raises(loop.TrainingError, match='another architecture'):
    loop.init_params(config, train_config.build_model(config))

  # A damaged file: a clear error, and the checkpoint left as it was.
  files = [os.path.join(d, f) for d, _, names in os.walk(tmp_path / 'ckpt') for f in names]
  biggest = max(files, key=os.path.getsize)
  with open(biggest, 'r+b') as f:
    f.truncate(os.path.getsize(biggest) // 2)
  before = snapshot(str(tmp_path / 'ckpt'))
  config.model.arch.layers = (1, 1)
  with pytest.raises(loop.TrainingError, match='init_from: .*ckpt: the parameters do not match '
                                                'its architecture with 1000 classes, or are '
                                                'damaged'):
    loop.init_params(config, train_config.build_model(config))
  assert snapshot(str(tmp_path / 'ckpt')) == before


@pytest.mark.slow
def test_a_nan_loss_stops_training_and_keeps_the_last_good_checkpoint(dataset, tmp_path):
  config = tiny_config(dataset, **{'optim.lr': 1e30, 'optim.warmup_epochs': 0,
                               'checkpoint_every_steps': 1, 'log_every_steps': 1})
  workdir = str(tmp_path / 'nan')
  with pytest.raises(loop.TrainingError, match=r'the loss is (nan|inf) at step \d+.*last good '
                                                r'checkpoint \(step \d+\) is kept'):
    loop.train_and_evaluate(config, workdir)
  steps = sorted(int(s) for s in os.listdir(os.path.join(workdir, 'checkpoints')))
  assert steps, 'no checkpoint was kept'
  params = restore_params(workdir, config, steps[-1])
  assert all(np.isfinite(leaf).all() for leaf in jax.tree.leaves(params))


@pytest.mark.slow
def test_out_of_memory_names_the_per_device_batch_and_changes_no_checkpoint(dataset, whole_run,
                                                                             tmp_path,
                                                                             monkeypatch):
  """A real RESOURCE_EXHAUSTED from XLA in the first step after a resume: a 256 TiB buffer, more
  than the address space, so that it fails whatever the kernel's overcommit policy."""
  workdir = str(tmp_path / 'oom')
  shutil.copytree(whole_run[0], workdir)
  before = snapshot(os.path.join(workdir, 'checkpoints'))
  real_make_train_step = train_step.make_train_step

  def make_train_step_out_of_memory(*args, **kwargs):
    update = real_make_train_step(*args, **kwargs)
    huge = jax.jit(lambda x: jnp.zeros((1 << 46,), jnp.float32) + x)

    def step(state, batch):
      huge(1.0).block_until_ready()
      return update(state, batch)
    return step

  monkeypatch.setattr(train_step, 'make_train_step', make_train_step_out_of_memory)
  config = tiny_config(dataset, **{'optim.epochs': 3})  # Resumes at step 6 of 9.
  with pytest.raises(loop.TrainingError, match=r'out of device memory with 16 images per device '
                                                r'per micro-batch.*Raise grad_accum_steps.*lower '
                                                r'the global batch'):
    loop.train_and_evaluate(config, workdir)
  assert snapshot(os.path.join(workdir, 'checkpoints')) == before


def test_a_storage_resource_exhausted_is_never_taken_for_device_memory(tmp_path):
  config, mesh = tiny_config('unused'), sharding.make_mesh()
  storage_full = jax.errors.JaxRuntimeError(
      'RESOURCE_EXHAUSTED: Error writing local file "x/checkpoints/4.orbax-checkpoint-tmp/d": '
      "Failed to write 512 bytes to file 5: No space left on device [os_error_code='28']")
  assert loop.stop_message(storage_full, config, mesh, str(tmp_path)) == (
      f'a file could not be written to {tmp_path}: no space left on device; no checkpoint is '
      f'complete yet; free space and start again to resume')
  device_full = jax.errors.JaxRuntimeError('RESOURCE_EXHAUSTED: Out of memory while trying to '
                                           'allocate 1.50GiB')
  assert loop.stop_message(device_full, config, mesh, str(tmp_path)).startswith(
      'out of device memory with 16 images per device per micro-batch')
  assert loop.stop_message(jax.errors.JaxRuntimeError('INTERNAL: a bug'), config, mesh,
                           str(tmp_path)) is None
  try:  # The first failure is named, not the same fault met again while closing.
    try:
      raise storage.WriteFailure('checkpoint 4', 'x/checkpoints', errno.ENOSPC)
    finally:
      raise storage.WriteFailure('TensorBoard events', 'x', errno.ENOSPC)
  except storage.WriteFailure as e:
    assert loop.stop_message(e, config, mesh, str(tmp_path)).startswith(
        'checkpoint 4 could not be written to x/checkpoints: no space left on device;')


@pytest.mark.slow
def test_eval_only_reproduces_validate(dataset, tmp_path):
  """`eval_only` with `init_from` evaluates a checkpoint over the whole split, as validate.py."""
  source = models.create_model('sequencer2d_s', 6)
  rng = np.random.default_rng(1)
  params = jax.tree.map(lambda s: 0.05 * rng.standard_normal(s.shape).astype(np.float32),
                        abstract_params(source))
  save_model(str(tmp_path / 'ckpt'), ModelRecord.registered('sequencer2d_s', 6), params)
  config = tiny_config(dataset, **{'model.name': 'sequencer2d_s', 'eval_only': True,
                               'init_from': str(tmp_path / 'ckpt'), 'data.image_size': 28})
  config.model.arch = type(config.model.arch)()
  metrics = loop.train_and_evaluate(config, str(tmp_path / 'eval'))
  assert metrics['images'] == 18 and metrics['skipped'] == 0
  model = train_config.build_model(config)
  from sequencer_jax.data import eval_crop, pipeline, sources
  data_config = DataConfig(28, config.data.crop_pct)
  forward = jax.jit(lambda batch: model.apply({'params': params},
                                              eval_crop.model_input(batch, data_config)))
  correct = 0
  for batch in pipeline.eval_batches(sources.open_source(dataset, 'val'), batch_size=8,
                                     data_config=data_config):
    logits = forward(batch)
    correct += int(np.sum((np.argmax(logits, -1) == batch['label']) & batch['mask']))
  assert metrics['top1'] == correct / 18
  with pytest.raises(train_config.ConfigError, match='eval_only needs init_from'):
    loop.train_and_evaluate(tiny_config(dataset, eval_only=True), str(tmp_path / 'none'))


@pytest.mark.slow
def test_named_evaluations_with_an_imagenet_suite(dataset, tmp_path, capsys):
  """config.evals: the folder's accuracy and the ImageNet metric on a WordNet-id folder, both run
  by eval_only; the suite's figures equal the evaluate command's on the same model."""
  import ml_collections
  from PIL import Image

  from sequencer_jax import evaluate as evaluate_command
  from sequencer_jax.labels import imagenet1k_wnids
  config = tiny_config(dataset, **{'model.num_classes': 1000, 'eval_only': True})
  model = train_config.build_model(config)
  params = jax.tree.map(lambda s: 0.3 * np.random.default_rng(3).standard_normal(s.shape)
                        .astype(np.float32), abstract_params(model))
  record = ModelRecord(model.arch, 1000, None, DataConfig(16, config.data.crop_pct))
  save_model(str(tmp_path / 'model'), record, params)
  for i, wnid in enumerate(imagenet1k_wnids()[:4]):
    os.makedirs(tmp_path / 'wn' / wnid)
    Image.fromarray(np.random.default_rng(i).integers(0, 256, (20, 20, 3), np.uint8)).save(
        tmp_path / 'wn' / wnid / 'a.png')
  config.init_from = str(tmp_path / 'model')
  config.evals.imagenet = ml_collections.ConfigDict(
      {'dataset': str(tmp_path / 'wn'), 'split': '', 'metric': 'imagenet'})
  metrics = loop.train_and_evaluate(config, str(tmp_path / 'eval'))
  assert set(metrics['evals']) == {'val', 'imagenet'} and metrics['images'] == 18
  assert metrics['evals']['imagenet']['images'] == 4
  assert evaluate_command.main(['--model', str(tmp_path / 'model'), '--eval',
                                f'imagenet={tmp_path / "wn"}', '--batch-size', '8',
                                '--format', 'json']) == 0
  command = json.loads(capsys.readouterr().out)['imagenet']
  assert (command['input_size'], command['crop_pct']) == (16, 1.0)  # The data config it used.
  assert metrics['evals']['imagenet'] == {k: command[k] for k in metrics['evals']['imagenet']}
  with open(tmp_path / 'eval' / 'metrics.jsonl') as f:
    assert sorted(json.loads(line)['kind'] for line in f) == ['eval/imagenet', 'eval/val']
  # A suite on a head that is not ImageNet-1k's, or a best_eval that is not named: refused.
  config = tiny_config(dataset)
  config.evals.imagenet = ml_collections.ConfigDict(
      {'dataset': str(tmp_path / 'wn'), 'split': '', 'metric': 'imagenet'})
  with pytest.raises(train_config.ConfigError, match='needs an ImageNet-1k head, but '
                                                     'model.num_classes is 6'):
    loop.train_and_evaluate(config, str(tmp_path / 'refused'))
  with pytest.raises(train_config.ConfigError, match="best_eval 'test' is not one of"):
    loop.train_and_evaluate(tiny_config(dataset, best_eval='test'), str(tmp_path / 'refused'))
  assert not (tmp_path / 'refused').exists()
