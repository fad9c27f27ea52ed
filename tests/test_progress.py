"""The long commands' progress: on stderr when it is a terminal (a pseudo-terminal here), never in
what they print on stdout, off when stderr is not a terminal unless --progress asks for it."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import pty
import struct
import sys
import termios
import threading

import numpy as np
import pytest
from PIL import Image

import sequencer_jax
from sequencer_jax import erf as erf_command
from sequencer_jax import evaluate as evaluate_command
from sequencer_jax import predict as predict_command
from sequencer_jax.labels import imagenet1k_wnids
from sequencer_jax.models import DataConfig, SequencerArch
from random_params import random_variables

ARCH = SequencerArch(layers=(1,), patch_sizes=(4,), embed_dims=(16,), hidden_sizes=(4,))
WNIDS = imagenet1k_wnids()[:3]


@pytest.fixture(scope='module')
def model_dir(tmp_path_factory):
  model = sequencer_jax.Sequencer(ARCH, num_classes=1000)
  params = random_variables(model, np.zeros((1, 16, 16, 3), np.float32))['params']
  path = str(tmp_path_factory.mktemp('model') / 'm')
  sequencer_jax.save_model(path, sequencer_jax.ModelRecord(ARCH, 1000, None, DataConfig(16, 1.0)),
                           params)
  return path


@pytest.fixture(scope='module')
def val(tmp_path_factory):
  """An ImageNet validation folder of 6 images, 2 per class."""
  root = tmp_path_factory.mktemp('val')
  rng = np.random.default_rng(0)
  for wnid in WNIDS:
    os.makedirs(root / wnid)
    for i in range(2):
      Image.fromarray(rng.integers(0, 256, (20, 24, 3), np.uint8)).save(root / wnid / f'{i}.JPEG')
  return str(root)


@contextlib.contextmanager
def _terminal_stderr():
  """sys.stderr on a pseudo-terminal 100 columns wide; yields the list its output is read into
  (by a thread, so that a full terminal buffer never blocks the command)."""
  master, slave = pty.openpty()
  fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack('HHHH', 24, 100, 0, 0))
  terminal = os.fdopen(slave, 'w', buffering=1)
  chunks: list[str] = []

  def drain():
    while True:
      try:
        data = os.read(master, 4096)
      except OSError:  # The slave side was closed.
        return
      if not data:
        return
      chunks.append(data.decode(errors='replace'))

  reader = threading.Thread(target=drain, daemon=True)
  reader.start()
  captured, sys.stderr = sys.stderr, terminal
  try:
    yield chunks
  finally:
    sys.stderr = captured
    terminal.close()
    reader.join(timeout=10)
    os.close(master)


@pytest.mark.slow  # End to end: a command, or a benchmark.
def test_predict_shows_progress_on_a_terminal_and_keeps_it_out_of_the_json(
    model_dir, val, monkeypatch, capsys):
  monkeypatch.setenv('LINES', '4')  # More files than the terminal has lines.
  argv = ['--model', model_dir, val, '--format', 'json', '--batch-size', '4']
  with _terminal_stderr() as terminal:
    assert predict_command.main(argv) == 0
  shown = ''.join(terminal)
  assert 'predict: 100%' in shown and '6/6' in shown and 'img/s' in shown
  entries = json.loads(capsys.readouterr().out)
  assert len(entries) == 6
  # Not on a terminal: no bar unless asked; and never for fewer files than lines.
  assert predict_command.main(argv) == 0
  assert capsys.readouterr().err == ''
  assert predict_command.main([*argv, '--progress']) == 0
  out, err = capsys.readouterr()
  assert '6/6' in err and len(json.loads(out)) == 6
  monkeypatch.setenv('LINES', '40')
  with _terminal_stderr() as terminal:
    assert predict_command.main(argv) == 0
  assert '6/6' not in ''.join(terminal)


@pytest.mark.slow  # End to end: a command, or a benchmark.
def test_evaluate_shows_images_rate_and_running_accuracy(model_dir, val, capsys):
  argv = ['--model', model_dir, '--eval', f'imagenet={val}', '--batch-size', '2',
          '--format', 'json']
  with _terminal_stderr() as terminal:
    assert evaluate_command.main(argv) == 0
  shown = ''.join(terminal)
  assert 'imagenet: 100%' in shown and '6/6' in shown and 'img/s' in shown
  assert 'top1=' in shown and 'top5=' in shown
  results = json.loads(capsys.readouterr().out)
  assert results['imagenet']['images'] == 6
  with _terminal_stderr() as terminal:
    assert evaluate_command.main([*argv, '--no-progress']) == 0
  assert '6/6' not in ''.join(terminal)
  assert json.loads(capsys.readouterr().out) == results


@pytest.mark.slow  # End to end: a command, or a benchmark.
def test_erf_shows_progress_over_its_images(model_dir, val, tmp_path, capsys):
  with _terminal_stderr() as terminal:
    assert erf_command.main(['--model', model_dir, '--images', val, '--out',
                             str(tmp_path / 'erf.png'), '--num-images', '3',
                             '--batch-size', '2']) == 0
  shown = ''.join(terminal)
  assert 'erf: 100%' in shown and '3/3' in shown
  assert 'wrote' in capsys.readouterr().out
