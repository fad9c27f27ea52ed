"""The H200 measurements in one run: our model beside timm, the rnn_impl x unroll grid, loop flags.

  bash benchmarks/h200.sh                               # on the H200, within its time budget
  python -m benchmarks.h200 --dry-run --out /tmp/h200   # the same plan at toy sizes, on the CPU

Sequencer2D-S, bf16, batch 256, 224x224, timm in the same run on the same device, warm-up
excluded, median of `--steps` (>= 10) synchronised steps (`model_speed.time_steps`). Each phase
runs in its own process (XLA flags are read when JAX starts, and JAX's peak memory is per
process), in this order, until the time budget is spent; a phase that does not fit, or fails, is
recorded as such and the others still run:

  required      ours (fused_vjp, unroll 1) and timm eager AMP, inference and training step;
                batch-1 latency of both; the step's augmentation alone (resize from the
                512 canvas, flip, RandAugment, mixup, erasing), as a share of our training step
  timm_compile  timm under torch.compile, inference
  grid          every rnn_impl x unroll {1, 4, full} (pallas: 1), inference and training step
  loop_flags    the grid's fastest inference and training configurations again with XLA:GPU's
                command buffers for while loops and its while-loop unrolling
  profile       a profiler trace of the fastest training configuration, its GPU time split by
                kernel kind (matrix products, other fusions, copies), and the top kernels

The result is `OUT/h200.json` (versions, every figure, ratios, MFU, what was skipped, and, when
`benchmarks/results/predicted_h200.json` is there, each comparable measurement over its
prediction: `predicted_vs_measured`) and the raw output of every phase in `OUT/h200_raw.txt`.
"""

from __future__ import annotations

import argparse
import dataclasses
import gzip
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tools import torchvision_stand_in

# XLA:GPU flags that matter for loops: command buffers that include while loops, and unrolling.
LOOP_FLAGS = ('--xla_gpu_enable_command_buffer=FUSION,CUBLAS,CUBLASLT,CUSTOM_CALL,CUDNN,'
              'CONDITIONAL,WHILE --xla_gpu_enable_while_loop_unrolling='
              'WHILE_LOOP_UNROLLING_AUTO_UNROLL')
IMPLS = ('per_direction', 'fused', 'fused_vjp', 'pallas')  # rnn_impls.RNN_IMPLS (tested equal).
LOOP_IN_KERNEL = ('pallas',)  # Its time loop runs inside a kernel: no unroll, timed at 1 only.
MODEL = 'sequencer2d_s'
# benchmarks/predicted_profile.py's prediction, compared with the measurements when present.
PREDICTED = Path(__file__).resolve().parent / 'results' / 'predicted_h200.json'


@dataclasses.dataclass(frozen=True)
class Sizes:
  """What a run measures at: the real sizes, or toy ones for a dry run on the CPU."""

  image_size: int = 224
  batch: int = 256
  dtype: str = 'bfloat16'
  warmup: int = 3
  steps: int = 10
  budget_s: float = 450.0

  @property
  def full_unroll(self) -> int:
    """The longest sequence of the model at this size (stage 0: image_size / 7)."""
    return self.image_size // 7


REAL = Sizes()
DRY = Sizes(image_size=28, batch=2, dtype='float32', warmup=1, steps=10, budget_s=600.0)


def _jax_item(mode: str, impl: str, unroll: int, batch: int | None = None) -> dict[str, Any]:
  return {'framework': 'jax', 'mode': mode, 'impl': impl, 'unroll': unroll, 'batch': batch}


def _torch_item(mode: str, variant: str, batch: int | None = None) -> dict[str, Any]:
  return {'framework': 'torch', 'mode': mode, 'variant': variant, 'batch': batch}


def measure(items: list[dict[str, Any]], sizes: Sizes) -> list[dict[str, Any]]:
  """Times each item in this process (the worker side of a phase)."""
  from benchmarks import model_speed

  device = model_speed.jax.local_devices()[0]
  results = []
  for item in items:
    batch = item['batch'] or sizes.batch
    config = (MODEL, sizes.image_size, sizes.dtype, item['mode'], batch)
    start = time.perf_counter()
    try:
      if item['framework'] == 'jax':
        seconds = model_speed.jax_benchmark(*config, item['impl'], item['unroll'],
                                            sizes.warmup, sizes.steps)
        memory = model_speed._peak_memory_gb()
      else:
        seconds, memory = model_speed.torch_benchmark(
            *config, item['variant'] == 'compile', sizes.warmup, sizes.steps)
    except Exception as e:  # One failing configuration must not lose the others.
      results.append({**item, 'error': f'{type(e).__name__}: {e}'[:500]})
      continue
    peak = model_speed.PEAK_TFLOPS.get((device.device_kind, sizes.dtype))
    results.append({**item, 'batch': batch, 'median_s': seconds, 'images_per_s': batch / seconds,
                    'peak_memory_gib': memory, 'wall_s': time.perf_counter() - start,
                    'mfu': model_speed._mfu(*config, seconds, peak)})
    print(json.dumps(results[-1]), flush=True)
  return results


def profile(item: dict[str, Any], sizes: Sizes, trace_dir: str) -> dict[str, Any]:
  """A profiler trace of `item`'s timed steps; GPU (or, on the CPU, XLA) time by kernel kind."""
  import jax

  from benchmarks import model_speed

  with jax.profiler.trace(trace_dir, create_perfetto_trace=True):
    model_speed.jax_benchmark(MODEL, sizes.image_size, sizes.dtype, item['mode'], sizes.batch,
                              item['impl'], item['unroll'], sizes.warmup, sizes.steps)
  traces = sorted(Path(trace_dir).rglob('perfetto_trace.json.gz'))
  with gzip.open(traces[-1], 'rt') as f:
    events = json.load(f)
  events = events.get('traceEvents', events) if isinstance(events, dict) else events
  return {**item, **kernel_time_split(events)}


def kernel_kind(name: str) -> str:
  """'matmul', 'copy' or 'other' for a device kernel's name."""
  lowered = name.lower()
  if any(k in lowered for k in ('gemm', 'cublas', 'cutlass', 'nvjet', 'dot', 'matmul', 'xmma')):
    return 'matmul'
  if any(k in lowered for k in ('memcpy', 'memset', 'copy')):
    return 'copy'
  return 'other'


def kernel_time_split(events: list[dict[str, Any]]) -> dict[str, Any]:
  """Total duration per kernel kind and the 15 costliest kernels, from the complete trace events
  of the accelerator's processes (named after a GPU or TPU); none on a CPU-only trace."""
  names = {e['pid']: e.get('args', {}).get('name', '') for e in events
           if e.get('ph') == 'M' and e.get('name') == 'process_name'}
  device_pids = {pid for pid, name in names.items()
                 if any(k in name.upper() for k in ('GPU', 'TPU', '/DEVICE:'))}
  kernels = [e for e in events if e.get('ph') == 'X' and 'dur' in e and e.get('pid') in device_pids]
  if not kernels:
    return {'device_events': 0, 'note': 'no accelerator kernels in this trace'}
  by_kind: dict[str, float] = {}
  by_name: dict[str, float] = {}
  for e in kernels:
    by_kind[kernel_kind(e['name'])] = by_kind.get(kernel_kind(e['name']), 0.0) + e['dur']
    by_name[e['name']] = by_name.get(e['name'], 0.0) + e['dur']
  total = sum(by_kind.values()) or 1.0
  top = sorted(by_name.items(), key=lambda kv: -kv[1])[:15]
  return {'device_events': len(kernels), 'time_us_by_kind': by_kind,
          'share_by_kind': {k: v / total for k, v in by_kind.items()},
          'top_kernels_us': [[name[:120], us] for name, us in top]}


def _fastest(results: list[dict[str, Any]], mode: str) -> dict[str, Any] | None:
  """Our fastest measurement of `mode` at the full batch."""
  ours = [r for r in results if r['framework'] == 'jax' and r['mode'] == mode and 'median_s' in r
          and r['batch'] != 1]
  return min(ours, key=lambda r: r['median_s']) if ours else None


def phases(sizes: Sizes) -> list[tuple[str, str, Callable[[list], list[dict[str, Any]]]]]:
  """(name, XLA flags, items given the results so far), in the order they run."""
  full = sizes.full_unroll

  def required(_):
    return [_jax_item('infer', 'fused_vjp', 1), _jax_item('train', 'fused_vjp', 1),
            _torch_item('infer', 'eager'), _torch_item('train', 'eager'),
            _jax_item('infer', 'fused_vjp', full, batch=1), _torch_item('infer', 'eager', batch=1),
            _jax_item('augment', 'fused_vjp', 1)]

  def grid(done):
    seen = {(r['mode'], r.get('impl'), r.get('unroll')) for r in done
            if r['framework'] == 'jax' and r['batch'] != 1}
    return [_jax_item(mode, impl, unroll) for mode in ('infer', 'train') for impl in IMPLS
            for unroll in dict.fromkeys((1,) if impl in LOOP_IN_KERNEL else (1, 4, full))
            if (mode, impl, unroll) not in seen]

  def loop_flags(done):
    best = [_fastest(done, mode) for mode in ('infer', 'train')]
    return [_jax_item(b['mode'], b['impl'], b['unroll']) for b in best if b]

  return [('required', '', required),
          ('timm_compile', '', lambda _: [_torch_item('infer', 'compile')]),
          ('grid', '', grid), ('loop_flags', LOOP_FLAGS, loop_flags)]


def _text(output: str | bytes | None) -> str:
  return output.decode(errors='replace') if isinstance(output, bytes) else output or ''


def _run_phase(name: str, flags: str, items: list[dict[str, Any]], sizes: Sizes, out: Path,
               timeout_s: float, extra: tuple[str, ...] = ()) -> tuple[list[dict[str, Any]], str]:
  """Runs one phase in a worker process; returns its results and its raw output."""
  env = dict(os.environ, PYTHONUNBUFFERED='1')
  env['XLA_FLAGS'] = ' '.join(filter(None, [env.get('XLA_FLAGS', ''), flags]))
  command = [sys.executable, '-m', 'benchmarks.h200', '--worker', json.dumps(items),
             '--out', str(out), *extra] + (['--dry-run'] if sizes is DRY else [])
  try:
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout_s)
    raw, failed = done.stdout + done.stderr, done.returncode and f'exit status {done.returncode}'
  except subprocess.TimeoutExpired as e:
    raw, failed = _text(e.stdout) + _text(e.stderr), f'over its {timeout_s:.0f} s'
  results = [json.loads(line) for line in raw.splitlines() if line.startswith('{"framework"')]
  if failed:
    results += [{**item, 'error': f'phase {name} {failed}'} for item in items[len(results):]]
  return [{**r, 'phase': name, 'xla_flags': flags} for r in results], raw


def predicted_vs_measured(results: list[dict[str, Any]], predicted: dict[str, Any] | None,
                          sizes: Sizes) -> dict[str, Any] | None:
  """Each measurement of ours that the prediction models (unroll 1, no extra XLA flags, the
  prediction's model, size, dtype and batch) beside its predicted img/s: measured / predicted,
  for the central prediction and its low and high bounds, and the modelled Pallas kernel's."""
  if predicted is None:
    return None
  same = (predicted.get('model'), predicted.get('image_size'), predicted.get('dtype'),
          predicted.get('batch')) == (MODEL, sizes.image_size, sizes.dtype, sizes.batch)
  if not same or predicted.get('arch_overrides'):
    return {'note': 'the prediction is for other sizes or another model; not compared'}
  records = {(r['impl'], r['mode']): r for r in predicted.get('records', [])}
  rows = []
  for r in results:
    if r['framework'] != 'jax' or 'median_s' not in r or r.get('unroll') != 1 or r['xla_flags']:
      continue
    mode = 'infer_b1' if r['mode'] == 'infer' and r['batch'] == 1 else r['mode']
    p = records.get((r['impl'], mode))
    if p is None:
      continue
    row = {'impl': r['impl'], 'mode': mode, 'measured_img_s': r['images_per_s']}
    for name, value in p['predicted'].items():
      row[f'predicted_{name}_img_s'] = value['images_per_s']
      row[f'measured_over_{name}'] = r['images_per_s'] / value['images_per_s']
    if 'predicted_pallas' in p:
      row['predicted_pallas_img_s'] = p['predicted_pallas']['images_per_s']
    rows.append(row)
  return {'assumptions': predicted.get('assumptions'), 'rows': rows}


def summary(results: list[dict[str, Any]], skipped: list[str], versions: dict[str, Any],
            profile_result: dict[str, Any] | None,
            predicted: dict[str, Any] | None = None, sizes: Sizes = REAL) -> dict[str, Any]:
  """The h200.json record: the figures the issue names, ratios, and every measurement."""
  def get(framework: str, mode: str, batch_one: bool = False, **match: Any) -> dict | None:
    for r in results:
      if (r['framework'], r['mode']) == (framework, mode) and 'median_s' in r and (
          (r['batch'] == 1) == batch_one) and all(r.get(k) == v for k, v in match.items()):
        return r
    return None

  best_infer, best_train = _fastest(results, 'infer'), _fastest(results, 'train')
  eager_infer, eager_train = get('torch', 'infer', variant='eager'), get('torch', 'train',
                                                                         variant='eager')
  compiled = get('torch', 'infer', variant='compile')
  required_train = get('jax', 'train', phase='required')
  ours_b1, timm_b1 = get('jax', 'infer', batch_one=True), get('torch', 'infer', batch_one=True,
                                                              variant='eager')
  augment = get('jax', 'augment')
  rate = lambda r: None if r is None else r['images_per_s']
  ratio = lambda a, b: None if a is None or b is None else rate(a) / rate(b)
  figures = {
      'infer_img_s': rate(best_infer), 'infer_config': best_infer and {
          k: best_infer[k] for k in ('impl', 'unroll', 'xla_flags')},
      'timm_eager_amp_infer_img_s': rate(eager_infer),
      'timm_compile_infer_img_s': rate(compiled),
      'train_img_s': rate(best_train), 'train_config': best_train and {
          k: best_train[k] for k in ('impl', 'unroll', 'xla_flags')},
      'timm_eager_amp_train_img_s': rate(eager_train),
      'train_mfu': best_train and best_train['mfu'],
      'latency_b1_ms': ours_b1 and 1e3 * ours_b1['median_s'],
      'timm_eager_latency_b1_ms': timm_b1 and 1e3 * timm_b1['median_s'],
      # The process's peak after the required phase's training step (JAX cannot reset it).
      'peak_memory_gib': required_train and required_train['peak_memory_gib'],
      'infer_vs_timm_eager_amp': ratio(best_infer, eager_infer),
      'infer_vs_timm_compile': ratio(best_infer, compiled),
      'train_vs_timm_eager_amp': ratio(best_train, eager_train),
      'augment_ms_per_image': augment and 1e3 * augment['median_s'] / augment['batch'],
      # The goal: at most 0.05 of the training step at the same batch.
      'augment_share_of_train_step': (augment and required_train and
                                      augment['median_s'] / required_train['median_s']),
  }
  return {'versions': versions, MODEL: figures, 'profile': profile_result, 'skipped': skipped,
          'predicted_vs_measured': predicted_vs_measured(results, predicted, sizes),
          'measurements': results}


def _versions() -> dict[str, Any]:
  import platform

  import jax
  versions = {'python': platform.python_version(), 'jax': jax.__version__,
              'device': jax.local_devices()[0].device_kind, 'backend': jax.default_backend()}
  for package in ('jaxlib', 'flax', 'optax', 'torch', 'timm'):
    try:
      versions[package] = __import__(package).__version__
    except ImportError:
      versions[package] = None
  return versions


def _read_predicted(path: Path) -> dict[str, Any] | None:
  try:
    return json.loads(path.read_text())
  except (OSError, ValueError):
    return None


def orchestrate(sizes: Sizes, out: Path, predicted: Path = PREDICTED) -> dict[str, Any]:
  """Runs every phase that fits in the budget; writes h200.json and h200_raw.txt under `out`."""
  out.mkdir(parents=True, exist_ok=True)
  deadline = time.monotonic() + sizes.budget_s
  results: list[dict[str, Any]] = []
  skipped: list[str] = []
  profiled: dict[str, Any] | None = None
  with open(out / 'h200_raw.txt', 'w') as raw_file:
    for name, flags, plan in phases(sizes) + [('profile', None, None)]:
      left = deadline - time.monotonic()
      best = _fastest(results, 'train')
      if name == 'profile':
        items = [_jax_item('train', best['impl'], best['unroll'])] if best else []
        flags, extra = (best or {}).get('xla_flags', ''), ('--profile',)
      else:
        items, extra = plan(results), ()
      if left < 30 or not items:
        skipped.append(f'{name}: ' + ('the time budget was spent' if items else 'nothing to run'))
        continue
      print(f'# phase {name}: {len(items)} item(s), {left:.0f} s left', flush=True)
      phase_results, raw = _run_phase(name, flags, items, sizes, out, left, extra)
      raw_file.write(f'# phase {name}, XLA_FLAGS={flags!r}\n{raw}\n')
      raw_file.flush()
      if name == 'profile':
        profiled = next((r for r in phase_results if 'device_events' in r), None)
      else:
        results += phase_results
  record = summary(results, skipped, _versions(), profiled, _read_predicted(predicted), sizes)
  with open(out / 'h200.json', 'w') as f:
    json.dump(record, f, indent=1)
  return record


def main(argv: list[str] | None = None) -> dict[str, Any]:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--out', default='benchmarks/results', help='where the results go')
  parser.add_argument('--dry-run', action='store_true', help='toy sizes, for the CPU')
  parser.add_argument('--worker', help=argparse.SUPPRESS)  # JSON items: run them here.
  parser.add_argument('--profile', action='store_true', help=argparse.SUPPRESS)
  args = parser.parse_args(argv)
  sizes = DRY if args.dry_run else REAL
  torchvision_stand_in.install()  # timm without torchvision, where it is not installed.
  if args.worker is None:
    record = orchestrate(sizes, Path(args.out))
    print(json.dumps(record[MODEL], indent=1))
    return record
  items = json.loads(args.worker)
  if args.profile:
    result = profile(items[0], sizes, str(Path(args.out) / 'trace'))
    print(json.dumps({'framework': 'jax', **result}), flush=True)
    return result
  return {'results': measure(items, sizes)}


if __name__ == '__main__':
  main()
