"""Images whose header claims too many pixels are skipped undecoded and named, in training and in
evaluation; a training folder holding a real pixel bomb trains with its normal peak memory."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from pixel_bomb import write_png_bomb
from sequencer_jax.data import image_header, pipeline, sources
from sequencer_jax.models import DataConfig
from tiny_run import write_dataset

TESTS = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_the_bomb_declares_its_size_in_its_header(tmp_path):
  write_png_bomb(str(tmp_path / 'bomb.png'), 3000, 2000)
  data = (tmp_path / 'bomb.png').read_bytes()
  assert len(data) < 100_000
  assert image_header.header_size(tf.constant(data)).numpy().tolist() == [2000, 3000]
  assert np.asarray(Image.open(tmp_path / 'bomb.png')).shape == (2000, 3000, 3)  # Valid PNG.


def test_images_over_the_limit_are_skipped_and_named(tmp_path, caplog):
  root = tmp_path / 'data'
  # 7 training images and the large one at batch 4: the second step reads past the first pass,
  # wherever the shuffle put the large one, so its gap is always seen.
  for split, count in (('train', 7), ('val', 3)):
    for i in range(count):
      os.makedirs(root / split / 'c', exist_ok=True)
      Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(root / split / 'c' / f'{i}.png')
  big_train, big_val = root / 'train' / 'c' / '9.png', root / 'val' / 'c' / '9.png'
  for path in (big_train, big_val):
    Image.fromarray(np.zeros((40, 40, 3), np.uint8)).save(path)  # 1,600 pixels > 1,000.
  train = sources.open_source(str(root), 'train')
  batches = pipeline.train_batches(train, global_batch=4, image_size=8,
                                   augment=pipeline.TrainAugment(canvas_size=16), seed=0,
                                   epoch=0, max_pixels=1000)
  over = 'its header claims 40 x 40 = 1,600 pixels, over the limit of 1,000; not decoded'
  assert len(list(batches)) == 2 and batches.skipped == {str(big_train): over}
  assert f'skipped {big_train}: {over}' in caplog.text
  val = sources.open_source(str(root), 'val')
  evaluated = pipeline.eval_batches(val, batch_size=4, data_config=DataConfig(8, 1.0),
                                    max_pixels=1000)
  assert sum(int(b['mask'].sum()) for b in evaluated) == 3
  assert evaluated.skipped == {str(big_val): over}
  unlimited = pipeline.eval_batches(val, batch_size=4, data_config=DataConfig(8, 1.0))
  assert sum(int(b['mask'].sum()) for b in unlimited) == 4 and not unlimited.skipped


def _train(dataset, workdir):
  run = subprocess.run([sys.executable, os.path.join(TESTS, 'pixel_bomb.py'), dataset, workdir],
                       capture_output=True, text=True, timeout=600, cwd=os.path.dirname(TESTS))
  assert run.returncode == 0, run.stderr[-3000:]
  return json.loads(run.stdout.strip().splitlines()[-1]), run.stderr


@pytest.mark.slow  # Two training runs in their own processes.
def test_a_training_folder_with_a_pixel_bomb_keeps_its_peak_memory(tmp_path):
  clean = write_dataset(str(tmp_path / 'clean'))
  bombed = str(tmp_path / 'bombed')
  shutil.copytree(clean, bombed)
  bomb = os.path.join(bombed, 'train', 'disc', 'bomb.png')
  write_png_bomb(bomb)  # 20000 x 20000: 1.2 GB decoded, about 1 MB on disk.
  assert os.path.getsize(bomb) < 2_000_000
  baseline, _ = _train(clean, str(tmp_path / 'run_clean'))
  with_bomb, log = _train(bombed, str(tmp_path / 'run_bombed'))
  assert with_bomb['skipped_images'] >= 1 and bomb in log
  assert with_bomb['peak_mib'] < baseline['peak_mib'] + 300, (baseline, with_bomb)
