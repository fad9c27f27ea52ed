"""Effective receptive fields: the vertical-only and horizontal-only mixers see along their own
axis, numerically; and the command writes its picture and maps, overwriting nothing."""

from __future__ import annotations

import functools
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

import sequencer_jax
from sequencer_jax import erf as erf_command
from sequencer_jax.evaluation import erf
from sequencer_jax.models import DataConfig, SequencerArch

PATCH = 4


@functools.cache  # One eager `init` per union for the module.
def _model(union):
  arch = SequencerArch(layers=(1,), patch_sizes=(PATCH,), embed_dims=(16,), hidden_sizes=(8,),
                       union=union, with_fc=union == 'cat')
  model = sequencer_jax.Sequencer(arch, num_classes=0)
  return model, model.init(jax.random.key(0), jnp.zeros((1, 64, 64, 3)))


def _bands(erf_map):
  """Energy in the centre token's column band and row band, each outside the centre patch."""
  centre = (erf_map.shape[0] // PATCH // 2) * PATCH
  column = erf_map[:, centre:centre + PATCH].sum() - erf_map[centre:centre + PATCH,
                                                             centre:centre + PATCH].sum()
  row = erf_map[centre:centre + PATCH, :].sum() - erf_map[centre:centre + PATCH,
                                                          centre:centre + PATCH].sum()
  return column, row, erf_map.sum()


@pytest.mark.parametrize('union', ['vertical', 'horizontal'])
def test_one_direction_sees_along_its_own_axis(union):
  model, variables = _model(union)
  images = np.random.default_rng(0).standard_normal((4, 64, 64, 3)).astype(np.float32)
  (erf_map,) = erf.effective_receptive_fields(model, variables, [images[:2], images[2:]],
                                              [0]).values()
  column, row, total = _bands(erf_map)
  along, across = (column, row) if union == 'vertical' else (row, column)
  # Beyond the centre patch (the residual path), the field extends along the mixing axis, and
  # nothing across it reaches the centre token.
  assert along > 0.1 * total and across < 1e-6 * total, (along, across, total)


def test_the_map_is_the_mean_over_images_and_display_is_log_scaled():
  model, variables = _model('cat')
  images = np.random.default_rng(1).standard_normal((2, 32, 32, 3)).astype(np.float32)
  both = erf.effective_receptive_fields(model, variables, [images], [0])[0]
  one = [erf.effective_receptive_fields(model, variables, [images[i:i + 1]], [0])[0]
         for i in range(2)]
  np.testing.assert_allclose(both, (one[0] + one[1]) / 2, rtol=1e-5)
  shown = erf.for_display(both)
  assert shown.max() == pytest.approx(1.0)
  np.testing.assert_allclose(shown, np.log10(both + 1) / np.log10(both + 1).max())


@pytest.mark.slow  # The command end to end; the maps themselves are checked above.
def test_the_command_writes_a_picture_and_the_maps(tmp_path, capsys):
  model, variables = _model('cat')
  record = sequencer_jax.ModelRecord(model.arch, 0, None, DataConfig(32, 1.0))
  sequencer_jax.save_model(str(tmp_path / 'model'), record, variables['params'])
  for i in range(3):
    os.makedirs(tmp_path / 'images', exist_ok=True)
    Image.fromarray(np.random.default_rng(i).integers(0, 256, (40, 40, 3), np.uint8)).save(
        tmp_path / 'images' / f'{i}.png')
  out = tmp_path / 'erf.png'
  argv = ['--model', str(tmp_path / 'model'), '--images', str(tmp_path / 'images'),
          '--out', str(out), '--num-images', '2', '--size', '48']
  assert erf_command.main(argv) == 0
  assert Image.open(out).format == 'PNG'
  saved = np.load(tmp_path / 'erf_stage0.npy')
  assert saved.shape == (48, 48) and saved.sum() > 0
  before = out.read_bytes()
  assert erf_command.main(argv) == 1
  assert 'already exists; refusing to overwrite it' in capsys.readouterr().err
  assert out.read_bytes() == before
  assert erf_command.main(argv[:-4] + ['--stages', '3']) == 1
  assert 'the model has stages 0..0' in capsys.readouterr().err
