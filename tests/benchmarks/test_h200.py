"""The H200 benchmark's plan and report (benchmarks/h200.py), on constructed results: which
configurations each phase runs, the kernel-time split of a trace, and the figures reported."""

from __future__ import annotations

from benchmarks import h200
from sequencer_jax.models.rnn_impls import RNN_IMPLS


def _result(framework, mode, seconds, batch=256, phase='grid', **fields):
  return {'framework': framework, 'mode': mode, 'batch': batch, 'median_s': seconds,
          'images_per_s': batch / seconds, 'mfu': 0.1, 'peak_memory_gib': 9.0, 'phase': phase,
          'xla_flags': '', **fields}


def test_the_grid_covers_every_implementation_and_unroll_once():
  plan = dict((name, items) for name, _, items in h200.phases(h200.REAL))
  required = plan['required']([])
  done = [_result('jax', item['mode'], 1.0, impl=item['impl'], unroll=item['unroll'])
          for item in required if item['framework'] == 'jax' and item['batch'] is None]
  grid = plan['grid'](done)
  keys = {(i['mode'], i['impl'], i['unroll']) for i in grid} | {
      (r['mode'], r['impl'], r['unroll']) for r in done if r['mode'] != 'augment'}
  # 32: the full unroll, stage 0 of a 224 image; a kernel's own time loop has no unroll.
  unrolls = lambda impl: (1,) if impl in h200.LOOP_IN_KERNEL else (1, 4, 32)
  assert h200.IMPLS == RNN_IMPLS  # The orchestrator names them without importing the model.
  assert keys == {(m, impl, u) for m in ('infer', 'train') for impl in h200.IMPLS
                  for u in unrolls(impl)}
  assert len(grid) == 18  # 20 less the two the required phase measured.
  assert [i['batch'] for i in required if i['mode'] == 'infer' and i['batch']] == [1, 1]
  assert [i['framework'] for i in required if i['mode'] == 'augment'] == ['jax']


def test_loop_flags_rerun_the_fastest_configurations():
  done = [_result('jax', 'infer', 0.2, impl='fused', unroll=4),
          _result('jax', 'infer', 0.1, impl='fused_vjp', unroll=32),
          _result('jax', 'train', 0.9, impl='per_direction', unroll=1),
          _result('jax', 'train', 0.5, impl='fused_vjp', unroll=4),
          _result('jax', 'infer', 0.001, batch=1, impl='fused_vjp', unroll=32)]
  flags = [p for p in h200.phases(h200.REAL) if p[0] == 'loop_flags'][0]
  assert 'WHILE' in flags[1] and 'while_loop_unrolling' in flags[1]
  assert [(i['mode'], i['impl'], i['unroll']) for i in flags[2](done)] == [
      ('infer', 'fused_vjp', 32), ('train', 'fused_vjp', 4)]


def test_the_kernel_time_split_counts_device_kernels_by_kind():
  events = [
      {'ph': 'M', 'name': 'process_name', 'pid': 1, 'args': {'name': '/host:CPU'}},
      {'ph': 'M', 'name': 'process_name', 'pid': 2, 'args': {'name': '/device:GPU:0'}},
      {'ph': 'X', 'pid': 2, 'name': 'sm90_xmma_gemm_bf16', 'dur': 30.0},
      {'ph': 'X', 'pid': 2, 'name': 'loop_fusion_3', 'dur': 10.0},
      {'ph': 'X', 'pid': 2, 'name': 'loop_fusion_3', 'dur': 5.0},
      {'ph': 'X', 'pid': 2, 'name': 'Memcpy DtoD', 'dur': 5.0},
      {'ph': 'X', 'pid': 1, 'name': 'host work, not counted', 'dur': 1000.0},
  ]
  split = h200.kernel_time_split(events)
  assert split['time_us_by_kind'] == {'matmul': 30.0, 'other': 15.0, 'copy': 5.0}
  assert split['share_by_kind'] == {'matmul': 0.6, 'other': 0.3, 'copy': 0.1}
  assert split['top_kernels_us'][:2] == [['sm90_xmma_gemm_bf16', 30.0], ['loop_fusion_3', 15.0]]
  assert h200.kernel_time_split(events[:1] + events[-1:])['device_events'] == 0  # CPU only.


def test_the_summary_reports_the_fastest_ours_beside_timm():
  results = [
      _result('jax', 'infer', 0.1, impl='fused_vjp', unroll=32),
      _result('jax', 'train', 0.4, phase='required', impl='fused_vjp', unroll=1),
      _result('jax', 'train', 0.3, impl='fused', unroll=4, peak_memory_gib=20.0),
      _result('jax', 'infer', 0.0008, batch=1, phase='required', impl='fused_vjp', unroll=32),
      _result('torch', 'infer', 0.4, variant='eager'),
      _result('torch', 'infer', 0.2, variant='compile'),
      _result('torch', 'train', 0.9, variant='eager'),
      _result('jax', 'augment', 0.02, phase='required', impl='fused_vjp', unroll=1),
      {'framework': 'jax', 'mode': 'train', 'impl': 'per_direction', 'unroll': 32, 'batch': 256,
       'error': 'phase grid over its 100 s'},
  ]
  record = h200.summary(results, ['profile: the time budget was spent'], {'jax': 'x'}, None)
  s = record['sequencer2d_s']
  assert s['infer_img_s'] == 2560 and s['train_img_s'] == 256 / 0.3
  assert s['infer_vs_timm_eager_amp'] == 4.0 and s['infer_vs_timm_compile'] == 2.0
  assert s['train_vs_timm_eager_amp'] == 3.0 and s['train_config']['impl'] == 'fused'
  assert s['latency_b1_ms'] == 0.8 and s['peak_memory_gib'] == 9.0  # The required phase's.
  assert s['timm_eager_amp_train_img_s'] == 256 / 0.9 and s['train_mfu'] == 0.1
  assert record['skipped'] == ['profile: the time budget was spent']
  assert s['augment_ms_per_image'] == 1e3 * 0.02 / 256
  assert s['augment_share_of_train_step'] == 0.02 / 0.4  # Of the required phase's step.
  assert len(record['measurements']) == 9


def test_measurements_are_set_beside_their_prediction():
  predicted = {'model': 'sequencer2d_s', 'image_size': 224, 'dtype': 'bfloat16', 'batch': 256,
               'arch_overrides': {}, 'assumptions': {'loop_iteration_us': 8.0}, 'records': [
                   {'impl': 'fused_vjp', 'mode': 'infer', 'predicted': {
                       'central': {'images_per_s': 5000.0}, 'low': {'images_per_s': 10000.0},
                       'high': {'images_per_s': 2500.0}},
                    'predicted_pallas': {'images_per_s': 20000.0}},
                   {'impl': 'fused_vjp', 'mode': 'infer_b1', 'predicted': {
                       'central': {'images_per_s': 400.0}}}]}
  results = [_result('jax', 'infer', 0.1, impl='fused_vjp', unroll=1),
             _result('jax', 'infer', 0.05, impl='fused_vjp', unroll=32),  # Not modelled.
             _result('jax', 'infer', 0.001, batch=1, impl='fused_vjp', unroll=1),
             _result('torch', 'infer', 0.4, variant='eager')]
  compared = h200.summary(results, [], {}, None, predicted, h200.REAL)['predicted_vs_measured']
  infer, one = compared['rows']
  assert (infer['mode'], infer['measured_img_s'], infer['measured_over_central']) == (
      'infer', 2560.0, 2560.0 / 5000.0)
  assert infer['measured_over_low'] == 0.256 and infer['predicted_pallas_img_s'] == 20000.0
  assert (one['mode'], one['measured_over_central']) == ('infer_b1', 1000.0 / 400.0)
  dry = h200.summary(results, [], {}, None, predicted, h200.DRY)['predicted_vs_measured']
  assert 'not compared' in dry['note']
  assert h200.summary(results, [], {}, None)['predicted_vs_measured'] is None
