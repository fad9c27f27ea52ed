"""Bad input meets a clear message, and nothing that existed before is changed: unknown config
fields and model names, missing/empty/unreadable datasets, checkpoints of another run, and
truncated or corrupted checkpoints. (The converter's bad inputs are in test_convert.py; a NaN
loss, running out of memory and a bad init_from checkpoint in test_train.py.)"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from random_params import random_variables
from snapshot import snapshot
from tiny_run import tiny_config

from configs import demo
from sequencer_jax import ModelRecord, save_model
from sequencer_jax.data import synthetic
from sequencer_jax.errors import CheckpointError, DatasetError
from sequencer_jax.train import __main__ as train_command
from sequencer_jax.train import loop, start
from sequencer_jax.train import overrides
from sequencer_jax.train.checkpoints import TrainCheckpoints, checksums
from sequencer_jax.train.config import ConfigError, build_model, run_record

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.mark.parametrize('override, message', [
    ('bogus', "the config has no field 'bogus'; its fields: aug, best_eval, checkpoint_every_steps, data"),
    ('optim.lr_max', "config.optim has no field 'lr_max'; its fields: b1, b2, clip_grad"),
    ('seed.x', 'seed is a value, not a group of fields'),
])
def test_unknown_config_fields_are_named_with_the_valid_ones(override, message):
  config = demo.get_config()
  with pytest.raises(overrides.ConfigFieldError, match=message):
    overrides.check_overrides(config, ['main.py', '--config=configs/demo.py',
                                           f'--config.{override}=1'])
  overrides.check_overrides(config, ['--config.optim.lr=1', '--config.model.arch.layers=1'])
  with pytest.raises(overrides.ConfigFieldError, match="config.optim has no field 'lrr'"):
    overrides.apply_overrides(config, {'optim.lrr': 1.0})
  overrides.apply_overrides(config, {'optim.lr': 1.0, 'model.arch.layers': (1, 1)})
  assert config.optim.lr == 1.0 and config.model.arch.layers == (1, 1)


def _main(*args: str) -> subprocess.CompletedProcess:
  return subprocess.run(
      [sys.executable, os.path.join(REPO, 'main.py'), '--config=configs/demo.py', *args],
      cwd=REPO, capture_output=True, text=True, timeout=300, check=False,
      env=dict(os.environ, JAX_PLATFORMS='cpu'))


@pytest.mark.slow
def test_main_reports_an_unknown_field_in_one_line_and_writes_nothing(tmp_path):
  workdir = tmp_path / 'run'
  result = _main(f'--workdir={workdir}', '--config.optim.lrr=0.1')
  assert result.returncode == 1
  assert result.stderr.strip().splitlines()[-1] == (
      "error: --config.optim.lrr: config.optim has no field 'lrr'; its fields: b1, b2, "
      'clip_grad, cooldown_epochs, epochs, eps, lr, min_lr, per_step_lr, reference_batch, '
      'scale_lr_with_batch, warmup_epochs, warmup_lr, weight_decay')
  assert not workdir.exists()


def test_unknown_model_name_lists_the_registered_ones_and_writes_nothing(tmp_path):
  workdir = tmp_path / 'run'
  config = tiny_config('unused', **{'model.name': 'sequencer2d_xl'})
  with pytest.raises(ConfigError, match="unknown model 'sequencer2d_xl'; valid names: "
                                        'sequencer2d_s, sequencer2d_m, sequencer2d_l'):
    loop.train_and_evaluate(config, str(workdir))
  config = tiny_config('unused')
  config.model.arch.depth = 3  # A config file can add a field that the architecture lacks.
  with pytest.raises(ConfigError, match='unknown architecture field.*depth; valid: '):
    loop.train_and_evaluate(config, str(workdir))
  assert not workdir.exists()


def test_a_workdir_that_is_a_file_is_refused_and_left_alone(tmp_path):
  workdir = tmp_path / 'run'
  workdir.write_text('mine')
  with pytest.raises(ConfigError, match=f'the workdir {workdir} is a file, not a directory'):
    loop.train_and_evaluate(tiny_config('unused'), str(workdir))
  assert workdir.read_text() == 'mine'


@pytest.mark.slow
def test_main_reports_a_workdir_that_is_a_file_in_one_line(tmp_path):
  workdir = tmp_path / 'run'
  workdir.write_text('mine')
  result = _main(f'--workdir={workdir}')
  assert result.returncode == 1 and 'Traceback' not in result.stderr
  assert result.stderr.strip().splitlines()[-1] == (
      f'error: the workdir {workdir} is a file, not a directory; give a directory')
  assert workdir.read_text() == 'mine'


def test_the_demo_writes_its_images_only_where_its_own_default_puts_them(tmp_path):
  config = demo.get_config()
  config.demo.train_per_class, config.demo.val_per_class = 2, 1
  given = tmp_path / 'my_images'  # A path the user gave that does not exist: never written.
  config.data.dataset = str(given)
  start.prepare_demo_data(config, str(tmp_path / 'run'))
  assert not given.exists() and not (tmp_path / 'run').exists()
  with pytest.raises(DatasetError, match=f"'{given}' is neither an existing image folder"):
    loop.train_and_evaluate(config, str(tmp_path / 'run'))
  config.data.dataset = ''  # The demo's default: <workdir>/data, generated once.
  start.prepare_demo_data(config, str(tmp_path / 'run'))
  assert config.data.dataset == str(tmp_path / 'run' / 'data')
  assert sorted(os.listdir(tmp_path / 'run' / 'data' / 'train')) == list(synthetic.CLASSES)


def _undecodable_folder(root: str) -> str:
  for split in ('train', 'val'):
    for label in ('a', 'b'):
      os.makedirs(os.path.join(root, split, label))
      for i in range(8):
        with open(os.path.join(root, split, label, f'{i}.jpg'), 'wb') as f:
          f.write(b'not an image' * 10)
  return root


def _model_directory(path: str, config) -> str:
  """A model directory at `path` of `config`'s model with random parameters."""
  model = build_model(config)
  size = config.data.image_size
  params = random_variables(model, np.zeros((1, size, size, 3), np.float32))['params']
  save_model(path, ModelRecord(model.arch, model.num_classes), params)
  return path


@pytest.mark.parametrize('case', ['missing', 'empty', 'unreadable'])
def test_bad_datasets_are_named_and_the_workdir_is_left_as_it_was(case, tmp_path):
  dataset = str(tmp_path / 'images')
  message = {'missing': 'is neither an existing image folder nor a supported TFDS dataset',
             'empty': 'has no class directories',
             'unreadable': r'ran out .* could not be decoded \(first: .*\.jpg'}[case]
  if case == 'empty':
    os.makedirs(os.path.join(dataset, 'train'))
    os.makedirs(os.path.join(dataset, 'val'))
  elif case == 'unreadable':
    _undecodable_folder(dataset)
  workdir = tmp_path / 'run'
  workdir.mkdir()
  (workdir / 'notes.txt').write_text('kept')
  before = snapshot(str(workdir))
  config = tiny_config(dataset, **{'model.num_classes': 2})
  if case == 'unreadable':
    # The run makes its state before the data runs out: from saved parameters, so that no
    # initialiser is compiled.
    config.init_from = _model_directory(str(tmp_path / 'init'), config)
  with pytest.raises(DatasetError, match=message):
    loop.train_and_evaluate(config, str(workdir))
  after = snapshot(str(workdir))
  assert {k: v for k, v in after.items() if k in before} == before
  if case != 'unreadable':  # Refused before anything was written.
    assert after == before


def test_checksums_change_with_any_array():
  state = _small_state()
  want = checksums(state)
  assert checksums(state) == want
  assert checksums({**state, 'w': state['w'].at[1, 2].add(1e-6)}) != want
  assert checksums({**state, 'rng': jax.random.key(1)}) != want
  assert checksums({**state, 'step': state['step'] + 1}) != want


def _small_state():
  return {'step': jnp.array(3, jnp.int32), 'w': jnp.arange(12.0).reshape(3, 4),
          'rng': jax.random.key(0)}


def _saved(workdir: str, record: dict, steps=(1, 2)) -> None:
  checkpoints = TrainCheckpoints(workdir, record, keep=3)
  for step in steps:
    checkpoints.save(step, _small_state())
  checkpoints.wait()
  checkpoints.close()


def _restore(workdir: str, record: dict, step: int | None = None):
  checkpoints = TrainCheckpoints(workdir, record, keep=3)
  try:
    return checkpoints.restore(_small_state(), step)
  finally:
    checkpoints.close()


@pytest.mark.parametrize('field, value', [('model.name', 'sequencer2d_m'),
                                          ('model.num_classes', 10)])
def test_a_checkpoint_of_another_variant_or_head_is_refused(field, value, tmp_path):
  workdir = str(tmp_path / 'run')
  _saved(workdir, run_record(tiny_config('data')))
  before = snapshot(workdir)
  with pytest.raises(CheckpointError, match=f'holds another run .*{field}'):
    _restore(workdir, run_record(tiny_config('data', **{field: value})))
  assert snapshot(workdir) == before


def _damage(step_dir: str, how: str) -> None:
  files = [os.path.join(d, f) for d, _, names in os.walk(step_dir) for f in names]
  if how == 'truncated':
    biggest = max((f for f in files if '/state/' in f), key=os.path.getsize)
    with open(biggest, 'r+b') as f:
      f.truncate(os.path.getsize(biggest) // 2)
  elif how == 'run record deleted':
    shutil.rmtree(os.path.join(step_dir, 'run'))
  elif how == 'arrays changed':  # Stands for bytes that still decode, to other values.
    path = next(f for f in files if '/checksums/' in f)
    with open(path) as f:
      sums = json.load(f)
    with open(path, 'w') as f:
      json.dump([sums[0] + 1] + sums[1:], f)


@pytest.mark.parametrize('how, reason', [
    ('truncated', 'its arrays cannot be read'),
    ('run record deleted', 'its run record cannot be read'),
    ('arrays changed', '1 of 3 arrays differ from what was written'),
])
def test_a_damaged_checkpoint_is_named_left_alone_and_can_be_moved_aside(how, reason, tmp_path):
  workdir = str(tmp_path / 'run')
  record = run_record(tiny_config('data'))
  _saved(workdir, record)
  _damage(os.path.join(workdir, 'checkpoints', '2'), how)
  before = snapshot(workdir)
  with pytest.raises(CheckpointError, match=f'checkpoint 2 in .* is damaged \\({reason}.*\\). '
                                            'Nothing was changed; .* mv .*/2 .*/2.damaged'):
    _restore(workdir, record)
  assert snapshot(workdir) == before
  # Doing what the message says resumes from the checkpoint before.
  directory = os.path.join(workdir, 'checkpoints')
  os.rename(os.path.join(directory, '2'), os.path.join(directory, '2.damaged'))
  restored = _restore(workdir, record)
  np.testing.assert_array_equal(restored['w'], _small_state()['w'])
  assert os.path.isdir(os.path.join(directory, '2.damaged'))
