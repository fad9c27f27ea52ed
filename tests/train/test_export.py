"""A training run, used afterwards: export, load from the export and from the workdir, eval_only,
predict with the folder's class names, --to-torch, EMA evaluations, and the export's refusals."""

from __future__ import annotations

import json
import os

import huggingface_hub
import jax
import numpy as np
import pytest
import timm
import torch
from safetensors.numpy import load_file

import sequencer_jax
from sequencer_jax import convert as convert_command
from sequencer_jax import export as export_command
from sequencer_jax import predict as predict_command
from sequencer_jax.train import loop
from hub_cache import write_hub_cache
from snapshot import snapshot
from tiny_run import restore_params, tiny_config
from torch_reference import OriginalSequencer

pytestmark = pytest.mark.slow  # Trains end to end.

CLASSES = ('checkerboard', 'diagonal_stripes', 'disc', 'dots', 'horizontal_stripes',
           'vertical_stripes')


@pytest.fixture(scope='module')
def ema_run(dataset, tmp_path_factory):
  """The tiny run with EMA weights: (workdir, config, final metrics)."""
  workdir = str(tmp_path_factory.mktemp('ema_run'))
  config = tiny_config(dataset, ema_decay=0.5)
  return workdir, config, loop.train_and_evaluate(config, workdir)


def _export(*argv) -> int:
  return export_command.main([str(a) for a in argv])


def _equal(a, b):
  jax.tree.map(np.testing.assert_array_equal, a, b)


def test_export_loads_like_the_workdir_and_evaluates_to_the_runs_last_top1(
    ema_run, dataset, tmp_path, capsys):
  workdir, config, metrics = ema_run
  assert _export(workdir, tmp_path / 'newest', '--last') == 0
  assert 'exported the newest checkpoint (step 6, raw weights)' in capsys.readouterr().out
  model, variables, record = sequencer_jax.load_pretrained(str(tmp_path / 'newest'))
  assert model.arch == loop.build_model(config).arch and record.name is None
  assert record.class_names == CLASSES and record.data_config.input_size == 16
  assert record.provenance == {'exported_from': workdir, 'step': 6, 'checkpoint': 'newest',
                               'weights': 'raw'}
  _equal(variables['params'], restore_params(workdir, config, 6))
  # With no flag, export takes the run's model as the workdir as a source does: the best.
  assert _export(workdir, tmp_path / 'best') == 0
  best = sequencer_jax.load_pretrained(str(tmp_path / 'best'))
  assert best.record.provenance['checkpoint'] == 'best'
  _equal(best.variables, sequencer_jax.load_pretrained(workdir).variables)
  # eval_only from the export reproduces the run's last evaluation exactly.
  evaluated = loop.train_and_evaluate(
      tiny_config(dataset, eval_only=True, init_from=str(tmp_path / 'newest')),
      str(tmp_path / 'eval'))
  assert evaluated['top1'] == metrics['top1'] and evaluated['top5'] == metrics['top5']
  # And predict names the folder's classes.
  capsys.readouterr()
  assert predict_command.main(['--model', str(tmp_path / 'newest'),
                               os.path.join(dataset, 'val'), '--format', 'json']) == 0
  entries = json.loads(capsys.readouterr().out)
  assert len(entries) == 18 and all(item['label'] in CLASSES
                                    for e in entries for item in e['topk'])


def test_ema_weights_are_evaluated_and_exported(ema_run, tmp_path):
  workdir, config, metrics = ema_run
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    kinds = [(r['step'], r['kind']) for r in map(json.loads, f) if r['kind'].startswith('eval')]
  assert kinds == [(3, 'eval/val'), (3, 'eval_ema/val'), (6, 'eval/val'), (6, 'eval_ema/val')]
  assert {'ema_top1', 'ema_top5', 'ema_evals'} <= set(metrics)
  assert _export(workdir, tmp_path / 'ema', '--ema', '--step', 4) == 0
  _, variables, record = sequencer_jax.load_pretrained(str(tmp_path / 'ema'))
  assert record.provenance['weights'] == 'ema' and record.provenance['step'] == 4
  raw = restore_params(workdir, config, 4)
  assert not all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(variables['params']),
                                                      jax.tree.leaves(raw)))
  assert _export(workdir, tmp_path / 'best_ema', '--ema') == 0
  _equal(sequencer_jax.load_pretrained(str(tmp_path / 'best_ema')).variables,
         sequencer_jax.load_pretrained(workdir, ema=True).variables)


def test_to_torch_takes_an_export_in_the_original_layout(ema_run, tmp_path):
  """The demo's architecture is not one of timm's models: the original repository's layout."""
  workdir, _, _ = ema_run
  assert _export(workdir, tmp_path / 'model') == 0
  dst = tmp_path / 'model.safetensors'
  assert convert_command.main(['--to-torch', str(tmp_path / 'model'), str(dst)]) == 0
  model, variables, record = sequencer_jax.load_pretrained(str(tmp_path / 'model'))
  reference = OriginalSequencer(record.arch, record.num_classes).eval()
  reference.load_state_dict({k: torch.from_numpy(v) for k, v in load_file(str(dst)).items()},
                            strict=True)
  x = np.random.RandomState(0).randn(2, 16, 16, 3).astype(np.float32)
  with torch.no_grad():
    expected = reference(torch.from_numpy(x).permute(0, 3, 1, 2)).numpy()
  got = np.asarray(jax.jit(model.apply)(variables, x))
  assert np.abs(got - expected).max() <= 1e-5


def test_a_runs_best_checkpoint_is_shared_as_a_timm_hub_folder(ema_run, tmp_path, monkeypatch):
  """The workdir itself as the source: timm loads the folder from a hub cache with our logits
  (fp32, CPU, within 1e-4), and its model card gives the top-1 the checkpoint was kept for."""
  workdir, _, _ = ema_run
  loaded = sequencer_jax.load_pretrained(workdir)
  top1 = loaded.record.provenance['validation_top1']
  assert 0.0 <= top1 <= 1.0
  folder = tmp_path / 'tiny-run'
  assert convert_command.main(['--to-torch', workdir, str(folder)]) == 0
  card = (folder / 'README.md').read_text()
  assert f"validation set, at this checkpoint: {100 * top1:.2f}%" in card
  assert f'  - workdir: {workdir}' in card and '  - checkpoint: best' in card
  monkeypatch.setattr(huggingface_hub.constants, 'HF_HUB_CACHE', str(tmp_path / 'hub'))
  monkeypatch.setenv('HF_HUB_OFFLINE', '1')
  write_hub_cache(str(tmp_path / 'hub'), 'test/tiny-run',
                  {name: (folder / name).read_bytes() for name in os.listdir(folder)})
  reference = timm.create_model('hf-hub:test/tiny-run', pretrained=True).eval()
  assert reference.pretrained_cfg['label_names'] == list(CLASSES)
  x = np.random.RandomState(0).randn(2, 16, 16, 3).astype(np.float32)
  with torch.no_grad():
    expected = reference(torch.from_numpy(x).permute(0, 3, 1, 2)).numpy()
  got = np.asarray(jax.jit(loaded.model.apply)(loaded.variables, x))
  assert np.abs(got - expected).max() <= 1e-4


def test_export_refusals_write_nothing(ema_run, dataset, tmp_path, capsys):
  workdir, _, _ = ema_run
  before = snapshot(workdir)
  (tmp_path / 'taken').mkdir()
  (tmp_path / 'taken' / 'mine.txt').write_text('mine')
  no_ema = str(tmp_path / 'no_ema')
  loop.train_and_evaluate(tiny_config(dataset, **{'optim.epochs': 1}), no_ema)
  for argv, message in [
      ([workdir, tmp_path / 'taken'], 'taken already exists; refusing to overwrite it'),
      ([dataset, tmp_path / 'a'], 'is not a training workdir'),
      ([workdir, tmp_path / 'b', '--step', 5], 'has no checkpoint 5; it has 4, 6'),
      ([no_ema, tmp_path / 'c', '--ema'], 'holds no EMA weights (the run had no ema_decay)')]:
    assert _export(*argv) == 1
    err = capsys.readouterr().err
    assert err.startswith('error: ') and message in err and len(err.splitlines()) == 1, err
  assert os.listdir(tmp_path / 'taken') == ['mine.txt']
  assert not any((tmp_path / n).exists() for n in 'abc')
  assert snapshot(workdir) == before
