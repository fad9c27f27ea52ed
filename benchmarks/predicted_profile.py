"""A predicted H200 profile of Sequencer2D-S from this CPU: FLOPs, bytes, loops and kernels read
from the compiled programs, and a stated cost model that turns them into times.

  python -m benchmarks.predicted_profile                  # S, bf16, batch 256: predicted_h200.json
  python -m benchmarks.predicted_profile --model sequencer2d_s --arch '{"layers": [1, 1, 1, 1]}' \
      --batch 8 --out /tmp/p.json

For each rnn_impl it compiles, with XLA:CPU, the programs `benchmarks/h200.py` times (as
`model_speed.jax_benchmark` builds them): inference (`model.apply`) at `--batch` and at batch 1,
the trainer's training step (augmentation, forward, backward, AdamW), and the step's augmentation
alone. The optimized HLO is walked (`hlo_cost.py`) for its kernels, matmul FLOPs, bytes and while
loops with their trip counts. Random bits are lowered as on GPU and TPU (unrolled threefry): the
CPU's own lowering adds a 5-step loop per draw that the devices do not run.

The cost model, per kernel (every figure is an assumption the device run can refute, listed in
the JSON under 'assumptions'):

* work = max(matmul FLOPs / (matmul_efficiency x peak), bytes / (memory_efficiency x HBM));
* a kernel inside a loop takes at least `loop_kernel_us` (launched after the previous one of a
  dependent step), one outside at least `kernel_min_us` (launches overlap the work before);
* every loop iteration adds `loop_iteration_us`: XLA:GPU evaluates a while loop's condition on
  the host, a device-to-host copy and a synchronisation per iteration;
* data-dependent loops (rejection sampling of Mixup's Beta draw) run `unknown_trips` times.

Time splits into matmul kernels, other (memory-bound) kernels, launch overhead outside loops,
and the loops' overhead (kernels waiting on launches inside loops, and the per-iteration cost).
'low' and 'high' rows bracket the overheads. The 'pallas' row models a kernel that owns the time
loop (not yet measured): each recurrence loop becomes one kernel that streams its per-step
inputs and outputs once, keeps the carry on chip, and spends `pallas_step_us` per step.

Bytes come from XLA:CPU's fusion decisions, estimated up to GPU-like producer-consumer fusion
(`hlo_cost.fuse_elementwise`); XLA:CPU keeps more separate kernels than XLA:GPU, so the
memory-bound share is an upper estimate.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import hlo_cost, model_speed
from sequencer_jax import sharding
from sequencer_jax.data.device_augment import augment_batch
from sequencer_jax.models import abstract_params, create_model
from sequencer_jax.models.flops import forward_flops
from sequencer_jax.models.layers import DTYPES
from sequencer_jax.models.rnn_impls import RNN_IMPLS

# The implementations whose XLA programs are read. 'pallas' is not: its kernels compile on the CPU
# to the interpreter's loops, which say nothing of the device; the 'pallas (model)' rows model it.
PROFILED_IMPLS = tuple(impl for impl in RNN_IMPLS if impl != 'pallas')
from sequencer_jax.train import optim
from sequencer_jax.train.state import abstract_train_state
from sequencer_jax.train.step import make_train_step

OUT = 'benchmarks/results/predicted_h200.json'
MODES = ('infer', 'infer_b1', 'train', 'augment')
RECURRENCE = '/rnn_tokens/'  # In the op name of every loop of the token mixers' RNNs.
# The implementation a kernel owning the time loop replaces: one forward loop per bidirectional
# RNN and a backward loop carrying only the recurrent gradient.
PALLAS_BASE = 'fused_vjp'



@dataclasses.dataclass(frozen=True)
class Assumptions:
  """The H200 figures and overheads of the cost model."""

  peak_tflops: float = 989.0  # Dense bf16, datasheet.
  hbm_tb_s: float = 4.8  # Datasheet.
  matmul_efficiency: float = 0.6  # Of the peak, for the matmul kernels.
  memory_efficiency: float = 0.75  # Of HBM bandwidth, for memory-bound work.
  loop_kernel_us: float = 3.0  # Least time of a kernel inside a loop.
  kernel_min_us: float = 2.0  # Least time of a kernel outside loops.
  loop_iteration_us: float = 8.0  # Per while-loop iteration: condition, copy to host, sync.
  unknown_trips: int = 2  # Iterations of a loop without a known trip count.
  pallas_step_us: float = 0.5  # Per time step inside a kernel that owns the loop.


BOUNDS = {'low': dict(loop_kernel_us=1.0, kernel_min_us=1.0, loop_iteration_us=5.0),
          'high': dict(loop_kernel_us=5.0, kernel_min_us=3.0, loop_iteration_us=10.0)}
# timm's published figures (shared reference, section 2b/7) scaled to the H200 by HBM bandwidth
# (the model is memory-bound there): estimates, not measurements; h200.py measures timm itself.
TIMM_REFERENCE = {
    'infer_eager_amp': dict(img_s=3261, device='RTX 5090', tb_s=1.79),
    'infer_compile': dict(img_s=4842, device='RTX 5090', tb_s=1.79),
    'train_eager_amp': dict(img_s=480, device='RTX 3090', tb_s=0.936),
}


@contextlib.contextmanager
def device_random_bits():
  """Lowers threefry on the CPU as on GPU and TPU (unrolled), restoring the CPU's rule after."""
  from jax._src.interpreters import mlir
  from jax._src.random import threefry2x32 as threefry

  rules = mlir._platform_specific_lowerings['cpu']
  saved = rules.get(threefry.threefry2x32_p)
  mlir.register_lowering(threefry.threefry2x32_p, threefry._threefry2x32_lowering_rule,
                         platform='cpu')
  try:
    yield
  finally:
    if saved is None:
      rules.pop(threefry.threefry2x32_p, None)
    else:
      rules[threefry.threefry2x32_p] = saved


def _struct(x: Any) -> jax.ShapeDtypeStruct:
  return jax.ShapeDtypeStruct(np.shape(x), np.asarray(x).dtype)


def programs(model_name: str, arch: dict, image_size: int, dtype: str, batch: int, impl: str,
             modes: tuple[str, ...]) -> dict[str, tuple[Any, tuple]]:
  """{mode: (jitted function, abstract arguments)} as `model_speed.jax_benchmark` runs them."""
  out = {}
  host = model_speed.host_batch(np.random.default_rng(0), batch, image_size)
  host_struct = {k: _struct(v) for k, v in host.items()}
  for mode in modes:
    train = mode == 'train'
    model = create_model(model_name, dtype=DTYPES[dtype], rnn_impl=impl,
                         drop_path_rate=model_speed.DROP_PATH_RATE if train else 0.0, **arch)
    if mode.startswith('infer'):
      size = 1 if mode == 'infer_b1' else batch
      images = jax.ShapeDtypeStruct((size, image_size, image_size, 3), jnp.float32)
      out[mode] = jax.jit(model.apply), ({'params': abstract_params(model)}, images)
    elif mode == 'augment':
      augment = model_speed.paper_augment(model.num_classes, image_size)
      out[mode] = (jax.jit(lambda b, key: augment_batch(b, key, augment)),
                   (host_struct, jax.eval_shape(lambda: jax.random.key(0))))
    else:
      mesh = sharding.make_mesh(1)
      optimizer = optim.create_optimizer(
          optim.learning_rate_schedule(optim.ScheduleConfig(), 1000))
      state = abstract_train_state(model, optimizer, image_size=image_size, mesh=mesh)
      step = make_train_step(model, optimizer, mesh=mesh,
                             augment=model_speed.paper_augment(model.num_classes, image_size),
                             state_shardings=jax.tree.map(lambda x: x.sharding, state))
      out[mode] = step, (state, host_struct)
  return out


def analyse(function: Any, args: tuple, unknown_trips: int) -> dict[str, Any]:
  """Compiles for the CPU and reads the kernels and loops of the optimized HLO."""
  start = time.perf_counter()
  with device_random_bits():
    compiled = function.lower(*args).compile()
  seconds = time.perf_counter() - start
  kernels, loops = hlo_cost.kernels(compiled.as_text(), unknown_trips)
  cost = compiled.cost_analysis() or {}
  return {'kernels': kernels, 'loops': loops, 'compile_s': seconds,
          'xla_flops_body_once': cost.get('flops'),
          'xla_bytes_body_once': cost.get('bytes accessed')}


def _kernel_times(kernels: list[hlo_cost.Kernel], a: Assumptions) -> dict[str, float]:
  """Seconds per run, split by where they go."""
  flop_rate = a.matmul_efficiency * a.peak_tflops * 1e12
  byte_rate = a.memory_efficiency * a.hbm_tb_s * 1e12
  split = {'matmul_s': 0.0, 'memory_s': 0.0, 'launch_s': 0.0, 'loop_launch_s': 0.0}
  for k in kernels:
    if k.merged:
      continue
    work = max(k.matmul_flops / flop_rate, k.group_bytes / byte_rate)
    least = 1e-6 * (a.loop_kernel_us if k.loops else a.kernel_min_us)
    split['matmul_s' if k.matmul_flops else 'memory_s'] += k.executions * work
    split['loop_launch_s' if k.loops else 'launch_s'] += k.executions * max(0.0, least - work)
  return split


def _loop_summary(loops: list[hlo_cost.Loop]) -> dict[str, Any]:
  recurrence = [l for l in loops if RECURRENCE in l.op_name]
  iterations = lambda ls: sum(l.trips * l.executions for l in ls)
  kernel_steps = sum(l.trips * l.executions * l.body_kernels for l in recurrence)
  return {'loops': len(loops), 'iterations': iterations(loops),
          'recurrence_loops': sum(l.executions for l in recurrence),
          'recurrence_iterations': iterations(recurrence),
          'recurrence_kernels_per_iteration': (kernel_steps / iterations(recurrence)
                                               if recurrence else 0.0),
          'unknown_trip_loops': sum(not l.known for l in loops),
          'trip_counts': sorted({l.trips for l in recurrence})}


def predict(analysis: dict[str, Any], a: Assumptions) -> dict[str, float]:
  """The predicted seconds per run: matmul, memory-bound, launch and loop overhead, total."""
  split = _kernel_times(analysis['kernels'], a)
  split['loop_s'] = 1e-6 * a.loop_iteration_us * sum(
      l.trips * l.executions for l in analysis['loops'])
  split['total_s'] = sum(split.values())
  return split


def predict_pallas(analysis: dict[str, Any], a: Assumptions) -> dict[str, float]:
  """`predict` with each recurrence loop as one kernel owning its time loop (a model)."""
  kernels, loops = analysis['kernels'], analysis['loops']
  recurrent = {l.name: l for l in loops if RECURRENCE in l.op_name}
  inside = [k for k in kernels if set(k.loops) & set(recurrent)]
  split = _kernel_times([k for k in kernels if k not in inside], a)
  flop_rate = a.matmul_efficiency * a.peak_tflops * 1e12
  byte_rate = a.memory_efficiency * a.hbm_tb_s * 1e12
  for loop in recurrent.values():
    body = [k for k in inside if k.loops[-1] == loop.name]
    flops = sum(k.matmul_flops * k.executions for k in body)
    streamed = sum(k.streamed_bytes * k.executions for k in body)
    steps = 1e-6 * a.pallas_step_us * loop.trips * loop.executions
    work = max(flops / flop_rate, streamed / byte_rate)
    split['matmul_s'] += work
    split['loop_launch_s'] += loop.executions * 1e-6 * a.kernel_min_us + max(0.0, steps - work)
  others = [l for l in loops if l.name not in recurrent]
  split['loop_s'] = 1e-6 * a.loop_iteration_us * sum(l.trips * l.executions for l in others)
  split['total_s'] = sum(split.values())
  return split


def analytic_recurrence_iterations(arch: Any, image_size: int, impl: str, train: bool) -> int:
  """Sequential RNN steps of one run from the architecture: per block, each branch's RNN runs
  along its axis, once per direction ('per_direction') or both directions in one loop; the
  training step runs every loop again backwards."""
  side = image_size // arch.patch_sizes[0]
  steps = 0
  for i, depth in enumerate(arch.layers):
    side = side // arch.patch_sizes[i] if i else side
    length = side * side if arch.vanilla else side
    branches = 1 if arch.vanilla or arch.union in ('vertical', 'horizontal') else 2
    loops = 2 if impl == 'per_direction' and arch.bidirectional else 1
    steps += depth * branches * loops * length
  return steps * (2 if train else 1)


def _rates(split: dict[str, float], batch: int, model_flops: float | None,
           a: Assumptions) -> dict[str, Any]:
  out = {k: v for k, v in split.items()}
  out['images_per_s'] = batch / split['total_s']
  out['ms'] = 1e3 * split['total_s']
  out['mfu'] = (None if model_flops is None
                else model_flops / split['total_s'] / (a.peak_tflops * 1e12))
  return out


def record(analysis: dict[str, Any], mode: str, batch: int, model_flops: float | None,
           recurrence_steps: int | None, a: Assumptions) -> dict[str, Any]:
  """The JSON record of one (rnn_impl, mode): counts, and the predictions."""
  kernels = analysis['kernels']
  launched = [k for k in kernels if not k.merged]
  flops = sum(k.matmul_flops * k.executions for k in kernels)
  fused_bytes = sum(k.group_bytes * k.executions for k in kernels)
  out = {'mode': mode, 'batch': batch, 'compile_s': analysis['compile_s'],
         'matmul_gflop': flops / 1e9, 'matmul_gflop_per_image': flops / batch / 1e9,
         'model_gflop_per_image': None if model_flops is None else model_flops / batch / 1e9,
         'mb_per_image': fused_bytes / batch / 1e6,
         'mb_per_image_cpu_fusion': sum(k.bytes * k.executions for k in kernels) / batch / 1e6,
         'kernel_launches': sum(k.executions for k in launched),
         'kernel_launches_cpu_fusion': sum(k.executions for k in kernels),
         'xla_cost_analysis_body_once': {'flops': analysis['xla_flops_body_once'],
                                         'bytes': analysis['xla_bytes_body_once']},
         **_loop_summary(analysis['loops']),
         'analytic_recurrence_iterations': recurrence_steps}
  variants = {'central': a, **{k: dataclasses.replace(a, **v) for k, v in BOUNDS.items()}}
  out['predicted'] = {name: _rates(predict(analysis, v), batch, model_flops, v)
                      for name, v in variants.items()}
  if out['recurrence_loops']:
    out['predicted_pallas'] = _rates(predict_pallas(analysis, a), batch, model_flops, a)
  return out


def timm_estimates(a: Assumptions) -> dict[str, Any]:
  """timm's published img/s scaled to the H200's bandwidth (estimates)."""
  return {k: {**v, 'h200_img_s': v['img_s'] * a.hbm_tb_s / v['tb_s']}
          for k, v in TIMM_REFERENCE.items()}


def goals(records: list[dict[str, Any]], a: Assumptions) -> dict[str, Any]:
  """The issue's goals against the best central prediction of each figure."""
  timm = timm_estimates(a)
  best = lambda mode, key='predicted': max(
      (r for r in records if r['mode'] == mode and key in r),
      key=lambda r: r[key]['images_per_s'] if key == 'predicted_pallas'
      else r[key]['central']['images_per_s'], default=None)
  rate = lambda r, key='predicted': None if r is None else (
      r[key]['images_per_s'] if key == 'predicted_pallas' else r[key]['central']['images_per_s'])
  infer, train, b1 = best('infer'), best('train'), best('infer_b1')
  out = {}
  for tag, key in (('', 'predicted'), ('pallas_', 'predicted_pallas')):
    i, t, one = (best(m, key) for m in ('infer', 'train', 'infer_b1'))
    if i is None:
      continue
    t_mfu = t and (t[key]['mfu'] if key == 'predicted_pallas' else t[key]['central']['mfu'])
    one_ms = one and (one[key]['ms'] if key == 'predicted_pallas' else one[key]['central']['ms'])
    out[tag + 'infer_vs_timm_eager_amp'] = rate(i, key) / timm['infer_eager_amp']['h200_img_s']
    out[tag + 'infer_vs_timm_compile'] = rate(i, key) / timm['infer_compile']['h200_img_s']
    out[tag + 'train_vs_timm_eager_amp'] = t and rate(t, key) / timm['train_eager_amp'][
        'h200_img_s']
    out[tag + 'train_mfu'] = t_mfu
    out[tag + 'latency_b1_ms'] = one_ms
    out[tag + 'best'] = {'infer': i['impl'], 'train': t and t['impl'],
                         'infer_b1': one and one['impl']}
  out['targets'] = {'infer_vs_timm_eager_amp': 2.0, 'infer_vs_timm_compile': 1.3,
                    'train_vs_timm_eager_amp': 1.5, 'train_mfu': 0.25, 'latency_b1_ms': 1.0}
  del infer, train, b1
  return out


def profile(model_name: str, arch: dict, image_size: int, dtype: str, batch: int,
            impls: tuple[str, ...], modes: tuple[str, ...], a: Assumptions) -> dict[str, Any]:
  """Every (rnn_impl, mode) record, the goals and the assumptions."""
  records = []
  for impl in impls:
    for mode, (function, args) in programs(model_name, arch, image_size, dtype, batch, impl,
                                           modes).items():
      model = create_model(model_name, rnn_impl=impl, **arch)
      size = 1 if mode == 'infer_b1' else batch
      flops = None if mode == 'augment' else forward_flops(
          model.arch, image_size, image_size, model.num_classes) * size * (
              3 if mode == 'train' else 1)
      steps = None if mode == 'augment' else analytic_recurrence_iterations(
          model.arch, image_size, impl, mode == 'train')
      analysis = analyse(function, args, a.unknown_trips)
      records.append({'impl': impl, **record(analysis, mode, size, flops, steps, a)})
      if impl != PALLAS_BASE:
        records[-1].pop('predicted_pallas', None)
      print(json.dumps({k: v for k, v in records[-1].items() if k != 'predicted'}), flush=True)
  return {'model': model_name, 'arch_overrides': arch, 'image_size': image_size,
          'dtype': dtype, 'batch': batch, 'jax': jax.__version__,
          'assumptions': dataclasses.asdict(a), 'bounds': BOUNDS,
          'timm_h200_estimates': timm_estimates(a), 'goals': goals(records, a),
          'records': records}


def markdown_table(result: dict[str, Any]) -> str:
  """The records as a Markdown table: counts, the central split in ms, img/s (low-high), MFU."""
  rows = ['| rnn_impl | mode | batch | matmul GFLOP/img | MB/img | launches | RNN steps | '
          'kernels/step | matmul ms | memory ms | launch ms | loop ms | total ms | img/s '
          '(low–high) | MFU |', '|' + '---|' * 15]
  fmt = lambda x, d=1: '–' if x is None else f'{x:,.{d}f}'
  for r in result['records']:
    variants = [('', r['predicted']['central'])] + (
        [('pallas (model)', r['predicted_pallas'])] if 'predicted_pallas' in r else [])
    for label, p in variants:
      mfu = '–' if p['mfu'] is None else f"{100 * p['mfu']:.1f}%"
      span = '' if label else (f" ({fmt(r['predicted']['high']['images_per_s'], 0)}–"
                               f"{fmt(r['predicted']['low']['images_per_s'], 0)})")
      rows.append(
          f"| {label or r['impl']} | {r['mode']} | {r['batch']} | "
          f"{fmt(r['matmul_gflop_per_image'], 2)} | {fmt(r['mb_per_image'], 0)} | "
          f"{'' if label else r['kernel_launches']} | {r['recurrence_iterations']} | "
          f"{'' if label else fmt(r['recurrence_kernels_per_iteration'])} | "
          f"{fmt(1e3 * p['matmul_s'], 2)} | {fmt(1e3 * p['memory_s'], 2)} | "
          f"{fmt(1e3 * p['launch_s'], 2)} | {fmt(1e3 * (p['loop_launch_s'] + p['loop_s']), 2)} | "
          f"{fmt(p['ms'], 2)} | {fmt(p['images_per_s'], 0)}{span} | "
          f"{mfu} |")
  return '\n'.join(rows)


def main(argv: list[str] | None = None) -> dict[str, Any]:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--model', default='sequencer2d_s')
  parser.add_argument('--arch', default='{}', help='architecture overrides, JSON')
  parser.add_argument('--image-size', type=int, default=224)
  parser.add_argument('--dtype', default='bfloat16', choices=sorted(DTYPES))
  parser.add_argument('--batch', type=int, default=256)
  parser.add_argument('--impl', action='append', choices=PROFILED_IMPLS)
  parser.add_argument('--mode', action='append', choices=MODES)
  parser.add_argument('--out', default=OUT)
  for field in dataclasses.fields(Assumptions):
    parser.add_argument('--' + field.name.replace('_', '-'), type=type(field.default),
                        default=field.default)
  args = parser.parse_args(argv)
  assumptions = Assumptions(**{f.name: getattr(args, f.name)
                               for f in dataclasses.fields(Assumptions)})
  arch = {k: tuple(v) if isinstance(v, list) else v for k, v in json.loads(args.arch).items()}
  result = profile(args.model, arch, args.image_size, args.dtype, args.batch,
                   tuple(args.impl or PROFILED_IMPLS), tuple(args.mode or MODES), assumptions)
  Path(args.out).parent.mkdir(parents=True, exist_ok=True)
  with open(args.out, 'w') as f:
    json.dump(result, f, indent=1)
  print(markdown_table(result))
  print(json.dumps(result['goals'], indent=1))
  return result


if __name__ == '__main__':
  main()
