"""The predicted H200 profile (benchmarks/predicted_profile.py) end to end on a tiny model: the
JSON's structure, and its counts against the architecture (loop iterations, matmul FLOPs)."""

from __future__ import annotations

import json

import pytest

from benchmarks import hlo_cost, predicted_profile
from sequencer_jax.models import create_model
from sequencer_jax.models.flops import forward_flops

# Two stages (8x8 then 4x4 tokens at 32 px), one block each.
ARCH = {'layers': [1, 1], 'patch_sizes': [4, 2], 'embed_dims': [16, 32], 'hidden_sizes': [4, 8]}
SIZE, BATCH = 32, 4


def _run(tmp_path, impls, modes):
  out = tmp_path / 'predicted.json'
  argv = ['--arch', json.dumps(ARCH), '--image-size', str(SIZE), '--batch', str(BATCH),
          '--out', str(out)]
  for impl in impls:
    argv += ['--impl', impl]
  for mode in modes:
    argv += ['--mode', mode]
  result = predicted_profile.main(argv)
  assert json.loads(out.read_text()) == json.loads(json.dumps(result))
  return result


def _check(result, impls, modes):
  model = create_model('sequencer2d_s', **{k: tuple(v) for k, v in ARCH.items()})
  assert [(r['impl'], r['mode']) for r in result['records']] == [
      (impl, mode) for impl in impls for mode in modes]
  assert set(result['assumptions']) == {f.name for f in
                                        predicted_profile.dataclasses.fields(
                                            predicted_profile.Assumptions)}
  for r in result['records']:
    train = r['mode'] == 'train'
    if r['mode'] != 'augment':
      # Every sequential RNN step is found in the compiled program, as the architecture says.
      want = predicted_profile.analytic_recurrence_iterations(model.arch, SIZE, r['impl'], train)
      assert r['recurrence_iterations'] == r['analytic_recurrence_iterations'] == want
      assert r['trip_counts'] == [SIZE // 8, SIZE // 4]
    if r['mode'].startswith('infer'):
      # The compiled forward's matmuls are the analytic count, LSTM gates included.
      assert r['matmul_gflop'] * 1e9 == pytest.approx(
          forward_flops(model.arch, SIZE, SIZE) * r['batch'], rel=1e-6)
    for name in ('central', 'low', 'high'):
      p = r['predicted'][name]
      parts = sum(p[k] for k in ('matmul_s', 'memory_s', 'launch_s', 'loop_launch_s', 'loop_s'))
      assert p['total_s'] == pytest.approx(parts) and p['images_per_s'] == pytest.approx(
          r['batch'] / p['total_s'])
    assert (r['predicted']['low']['total_s'] <= r['predicted']['central']['total_s']
            <= r['predicted']['high']['total_s'])
    if r['recurrence_loops'] and r['impl'] == predicted_profile.PALLAS_BASE:
      assert r['predicted_pallas']['loop_s'] < r['predicted']['central']['loop_s']
  assert set(result['goals']['targets']) <= set(result['goals'])


@pytest.mark.slow  # End to end: a command, or a benchmark.
def test_the_profile_of_inference_counts_the_architecture(tmp_path):
  impls, modes = ('per_direction', 'fused_vjp'), ('infer', 'infer_b1')
  _check(_run(tmp_path, impls, modes), impls, modes)


@pytest.mark.slow
def test_the_profile_of_every_impl_and_mode(tmp_path):
  impls, modes = predicted_profile.PROFILED_IMPLS, predicted_profile.MODES
  _check(_run(tmp_path, impls, modes), impls, modes)


def test_the_hlo_walk_multiplies_loop_bodies_and_reads_slices_in_place():
  text = '''HloModule m

%body (p: (s32[], f32[8,4], f32[10,8,4])) -> (s32[], f32[8,4], f32[10,8,4]) {
  %p = (s32[], f32[8,4]{1,0}, f32[10,8,4]{2,1,0}) parameter(0)
  %i = s32[] get-tuple-element(%p), index=0
  %h = f32[8,4]{1,0} get-tuple-element(%p), index=1
  %w = f32[4,4]{1,0} constant({...})
  %d = f32[8,4]{1,0} dot(%h, %w), lhs_contracting_dims={1}, rhs_contracting_dims={0}
  %t = f32[8,4]{1,0} tanh(%d)
  %ys = f32[10,8,4]{2,1,0} get-tuple-element(%p), index=2
  %u = f32[10,8,4]{2,1,0} dynamic-update-slice(%ys, %t, %i, %i, %i)
  ROOT %r = (s32[], f32[8,4]{1,0}, f32[10,8,4]{2,1,0}) tuple(%i, %t, %u)
}

%cond (q: (s32[], f32[8,4], f32[10,8,4])) -> pred[] {
  %q = (s32[], f32[8,4]{1,0}, f32[10,8,4]{2,1,0}) parameter(0)
  %j = s32[] get-tuple-element(%q), index=0
  %n = s32[] constant(10)
  ROOT %lt = pred[] compare(%j, %n), direction=LT
}

ENTRY %main (x: f32[8,4], y: f32[10,8,4]) -> (s32[], f32[8,4], f32[10,8,4]) {
  %x = f32[8,4]{1,0} parameter(0)
  %y = f32[10,8,4]{2,1,0} parameter(1)
  %z = s32[] constant(0)
  %init = (s32[], f32[8,4]{1,0}, f32[10,8,4]{2,1,0}) tuple(%z, %x, %y)
  ROOT %loop = LOOP
}
'''
  text = text.replace('LOOP', '(s32[], f32[8,4]{1,0}, f32[10,8,4]{2,1,0}) while(%init), '
                      'condition=%cond, body=%body, backend_config={"known_trip_count":{"n":"10"}}')
  kernels, loops = hlo_cost.kernels(text)
  assert [(l.trips, l.known, l.body_kernels) for l in loops] == [(10, True, 4)]
  by_op = {k.opcode: k for k in kernels}
  assert by_op['dot'].matmul_flops == 2 * 8 * 4 * 4 and by_op['dot'].executions == 10
  assert by_op['dynamic-update-slice'].bytes == 2 * 8 * 4 * 4  # The update, not the buffer.
  assert by_op['tanh'].merged is False  # Two users (the carry and the update): not fused.
