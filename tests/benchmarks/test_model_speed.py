"""The analytic FLOP counts and the model benchmark (benchmarks/model_speed.py)."""

from __future__ import annotations

import json

import numpy as np
import pytest

import sequencer_jax
from benchmarks import model_speed as benchmark
from sequencer_jax.models.flops import forward_flops, forward_macs

# Spec 1.2 / 1.3: GMACs at 224 including the LSTMs (and at 392 for S/M/L), two decimals.
SPEC_GMACS = {
    'sequencer2d_s': 8.33, 'sequencer2d_m': 11.05, 'sequencer2d_l': 16.49,
    'sequencer2d_s_unidirectional': 6.30, 'sequencer2d_s_add': 7.99, 'sequencer2d_s_h2x': 13.77,
    'sequencer2d_s_without_fc': 7.65, 'sequencer2d_vertical': 8.33,
    'sequencer2d_s_horizontal': 8.33, 'gru_sequencer2d_s': 7.48, 'rnn_sequencer2d_s': 5.79,
    'sequencer2d_l_d4_3x': 29.30,
}
# The spec writes 33.9 for M; S's 25.52 plus M's 6 extra blocks (784 tokens x 1,769,472 MACs
# each) is 33.846, so its figure is a rounding slip of 33.85.
SPEC_GMACS_392 = {'sequencer2d_s': 25.5, 'sequencer2d_m': 33.85, 'sequencer2d_l': 50.5}


@pytest.mark.parametrize('name', sorted(SPEC_GMACS))
def test_macs_match_the_specification(name):
  arch = sequencer_jax.model_info(name).arch
  # Within the rounding of the spec's figures.
  assert abs(forward_macs(arch, 224, 224) / 1e9 - SPEC_GMACS[name]) <= 0.005
  if name in SPEC_GMACS_392:
    assert abs(forward_macs(arch, 392, 392) / 1e9 - SPEC_GMACS_392[name]) <= 0.05
  assert forward_flops(arch, 224, 224) == 2 * forward_macs(arch, 224, 224)


def test_time_steps_excludes_warmup_and_takes_the_median():
  calls, clock = [], iter([0.0, 1.0, 10.0, 13.0, 20.0, 22.0])  # Durations 1, 3, 2.
  original = benchmark.time.perf_counter
  benchmark.time.perf_counter = lambda: next(clock)
  try:
    median = benchmark.time_steps(lambda: calls.append(1), lambda _: None, warmup=2, steps=3)
  finally:
    benchmark.time.perf_counter = original
  assert len(calls) == 5 and median == 2.0


@pytest.mark.slow
def test_benchmark_runs_end_to_end_beside_timm(capsys):
  results = benchmark.main(['--model', 'sequencer2d_s', '--image-size', '28', '--batch-size', '2',
                            '--impl', 'fused_vjp', '--mode', 'infer', '--compare-torch',
                            '--steps', '10', '--warmup', '1', '--peak-tflops', '1'])
  out = capsys.readouterr().out
  assert [(r.framework, r.variant) for r in results] == [('jax', 'fused_vjp'), ('torch', 'eager')]
  assert all(r.images_per_s > 0 and 0 < r.mfu < 1 for r in results)
  assert 'vs torch eager' in out and '1.00x' in out
  record = json.loads(out.strip().splitlines()[-1])
  assert len(record['results']) == 2 and record['jax']


def test_benchmark_refuses_fewer_than_ten_steps():
  with pytest.raises(SystemExit, match='at least 10'):
    benchmark.main(['--steps', '3'])


@pytest.mark.slow
def test_the_training_benchmark_times_the_trainers_own_step(monkeypatch, capsys):
  made = []

  def recording_make_train_step(model, optimizer, **kwargs):
    made.append(kwargs)
    update = benchmark_make_train_step(model, optimizer, **kwargs)

    def step(state, batch):
      made[-1].setdefault('calls', 0)
      made[-1]['calls'] += 1
      return update(state, batch)

    return step

  benchmark_make_train_step = benchmark.make_train_step
  monkeypatch.setattr(benchmark, 'make_train_step', recording_make_train_step)
  results = benchmark.main(['--model', 'sequencer2d_s', '--image-size', '28', '--batch-size', '2',
                            '--impl', 'per_direction', '--mode', 'train', '--steps', '10',
                            '--warmup', '1'])
  assert [(r.framework, r.mode) for r in results] == [('jax', 'train')]
  assert results[0].images_per_s > 0
  (kwargs,) = made
  assert kwargs['calls'] == 11  # One warm-up step and ten timed ones.
  augment = kwargs['augment']
  assert augment.image_size == 28 and augment.hflip == 0.5
  assert augment.rand_augment.magnitude == 9.0 and augment.rand_augment.increasing
  assert augment.mixup.mixup_alpha == 0.8 and augment.mixup.cutmix_alpha == 1.0
  assert augment.label_smoothing == 0.1 and augment.reprob == 0.25 and augment.group_size == 256
  assert kwargs['mesh'].axis_names == ('data',)


def test_host_batches_are_canvases_with_crops_that_fit():
  batch = benchmark.host_batch(np.random.default_rng(0), 64, 224)
  assert batch['image'].shape == (64, 512, 512, 3) and batch['image'].dtype == np.uint8
  assert batch['crop_size'].min() >= 1 and batch['crop_size'].max() <= 512
  assert 0.3 < batch['bicubic'].mean() < 0.7
  assert benchmark.host_batch(np.random.default_rng(0), 2, 28)['image'].shape == (2, 64, 64, 3)


@pytest.mark.slow  # The benchmark end to end, as test_pipeline_speed.py runs it.
def test_the_augmentation_alone_is_timed_without_timm(capsys):
  # Batch 2 at 28 on 64 x 64 canvases: the program test_pipeline_speed.py times, compiled once
  # per test process when both run in it.
  results = benchmark.main(['--image-size', '28', '--batch-size', '2', '--mode', 'augment',
                            '--steps', '10', '--warmup', '1', '--compare-torch'])
  assert [(r.framework, r.mode) for r in results] == [('jax', 'augment')]
  assert results[0].images_per_s > 0 and results[0].mfu is None
