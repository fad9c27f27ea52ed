"""Times sequencer_jax beside timm's PyTorch Sequencer2D on the same device, in the same run.

  python -m benchmarks.model_speed --model sequencer2d_s --batch-size 256 --dtype bfloat16 \
      --mode infer --mode train --impl fused_vjp --impl per_direction --compare-torch

For every (model, image size, dtype, mode, implementation) it compiles, runs `--warmup` untimed
steps, then times `--steps` steps one by one (results synchronised before the clock is read) and
reports the median: images/s, ms per step, peak device memory and MFU from analytic FLOPs
(FLOPs = 2 x MACs including every LSTM gate matmul; a training step counts 3x the forward pass).
The training step timed is the trainer's own (`sequencer_jax.train.step.make_train_step`): the
paper's recipe with its augmentation inside the step (the resize of each crop from the host's
canvas, flip, RandAugment, Mixup/CutMix, label smoothing, erasing; crops drawn as
RandomResizedCrop draws them from 500 x 375 images), drop path 0.1, AdamW with its weight-decay
mask and cosine schedule, the state sharded over a 'data' mesh of every device. `--mode augment`
times that augmentation alone (timm runs it on the host: there is no timm figure beside it).
timm runs eager (bf16 autocast for --dtype bfloat16) and, with `--torch-compile`, compiled.
JAX's peak memory is the process's peak so far (XLA cannot reset it): for a clean per-config
figure, run one configuration per process. JAX's GPU memory preallocation is switched off here so
that torch can allocate in the same process.
The run ends with one table with ratios and one JSON line holding every figure. Needs no
TensorFlow; torch and timm only with --compare-torch.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import statistics
import time
from typing import Any, Callable

# Read when the first JAX backend starts, which importing jax does not do.
os.environ.setdefault('XLA_PYTHON_CLIENT_PREALLOCATE', 'false')

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from sequencer_jax.data import pil_resize  # noqa: E402
from sequencer_jax.data.device_augment import DeviceAugment, augment_batch  # noqa: E402
from sequencer_jax.data.mixup import MixupConfig  # noqa: E402
from sequencer_jax.models import (Sequencer, abstract_params, create_model, list_models,  # noqa: E402
                                  model_info)
from sequencer_jax.models.flops import forward_flops  # noqa: E402
from sequencer_jax.models.layers import DTYPES  # noqa: E402
from sequencer_jax.models.rnn_impls import RNN_IMPLS  # noqa: E402
from sequencer_jax import sharding  # noqa: E402
from sequencer_jax.train import optim  # noqa: E402
from sequencer_jax.train.state import create_train_state  # noqa: E402
from sequencer_jax.train.step import make_train_step  # noqa: E402
from tools import torchvision_stand_in  # noqa: E402

DROP_PATH_RATE = 0.1  # The paper's recipe for Sequencer2D-S, on both sides.
# Dense peak TFLOP/s by device kind and dtype, for MFU (datasheet figures).
PEAK_TFLOPS = {('NVIDIA H200', 'bfloat16'): 989.0, ('NVIDIA H200', 'float32'): 67.0,
               ('NVIDIA H100 80GB HBM3', 'bfloat16'): 989.0}


@dataclasses.dataclass
class Result:
  framework: str  # 'jax' or 'torch'
  variant: str  # implementation (jax) or 'eager' / 'compile' (torch)
  model: str
  image_size: int
  dtype: str
  mode: str
  batch_size: int
  median_s: float
  images_per_s: float
  peak_memory_gb: float | None
  mfu: float | None


def time_steps(step: Callable[[], Any], sync: Callable[[Any], Any], warmup: int,
               steps: int) -> float:
  """Median seconds of `steps` calls of `step`, after `warmup` untimed ones."""
  for _ in range(warmup):
    sync(step())
  times = []
  for _ in range(steps):
    start = time.perf_counter()
    sync(step())
    times.append(time.perf_counter() - start)
  return statistics.median(times)


def random_params(model: Sequencer, seed: int = 0) -> dict[str, Any]:
  """Random parameters of the right shapes (cheaper to build than a jitted init on the CPU)."""
  leaves, tree = jax.tree.flatten(abstract_params(model))
  rng = np.random.default_rng(seed)
  return {'params': jax.tree.unflatten(tree, [
      jnp.asarray(rng.normal(0, 0.02, s.shape).astype(np.float32)) for s in leaves])}


def _peak_memory_gb() -> float | None:
  stats = jax.local_devices()[0].memory_stats() or {}
  peak = stats.get('peak_bytes_in_use')
  return None if peak is None else peak / 2**30


def host_batch(rng: np.random.Generator, batch: int, image_size: int) -> dict[str, np.ndarray]:
  """A batch as the host pipeline yields it for training at `image_size`: random canvases of the
  default side (scaled with the image size), RandomResizedCrop's crop sizes (scale (0.08, 1),
  ratio (3/4, 4/3)) of 500 x 375 images scaled to the canvas, random filters and labels."""
  canvas = max(image_size, round(image_size * pil_resize.CANVAS_SIZE / 224))
  area = rng.uniform(0.08, 1.0, batch) * (canvas * canvas * 0.75)
  aspect = np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3), batch))
  sides = np.stack([np.sqrt(area / aspect), np.sqrt(area * aspect)], axis=1)
  return {'image': rng.integers(0, 256, (batch, canvas, canvas, 3), np.uint8),
          'crop_size': np.clip(np.round(sides), 1, canvas).astype(np.int32),
          'bicubic': rng.random(batch) < 0.5, 'label': rng.integers(0, 1000, batch)}


def paper_augment(num_classes: int, image_size: int) -> DeviceAugment:
  """The paper's augmentation in the step: RandAugment rand-m9-mstd0.5-inc1, Mixup/CutMix per
  group of 256, smoothing 0.1, erasing 0.25."""
  return DeviceAugment(num_classes, image_size, mixup=MixupConfig(num_classes=num_classes))


def jax_benchmark(name: str, image_size: int, dtype: str, mode: str, batch: int, impl: str,
                  unroll: int, warmup: int, steps: int) -> float:
  """Median seconds per step of our model: its forward pass, the trainer's training step, or
  that step's augmentation alone."""
  rng = np.random.default_rng(1)
  if mode == 'augment':
    augment = paper_augment(1000, image_size)
    run = jax.jit(lambda b, key: augment_batch(b, key, augment))
    data = jax.device_put(host_batch(rng, batch, image_size))
    keys = iter(jax.random.split(jax.random.key(0), warmup + steps))
    return time_steps(lambda: run(data, next(keys)), jax.block_until_ready, warmup, steps)
  model = create_model(name, dtype=DTYPES[dtype], rnn_impl=impl, rnn_unroll=unroll,
                       drop_path_rate=DROP_PATH_RATE if mode == 'train' else 0.0)
  variables = random_params(model)
  if mode == 'infer':
    images = rng.normal(size=(batch, image_size, image_size, 3)).astype(np.float32)
    apply = jax.jit(model.apply)
    images = jnp.asarray(images)
    return time_steps(lambda: apply(variables, images), jax.block_until_ready, warmup, steps)
  mesh = sharding.make_mesh()
  optimizer = optim.create_optimizer(optim.learning_rate_schedule(optim.ScheduleConfig(), 1000))
  state, shardings = create_train_state(model, optimizer, image_size=image_size, seed=0,
                                        mesh=mesh, params=variables['params'])
  update = make_train_step(model, optimizer, augment=paper_augment(model.num_classes, image_size),
                           mesh=mesh, state_shardings=shardings)
  data = sharding.global_batch(host_batch(rng, batch, image_size), mesh)
  current = [state]

  def step() -> Any:
    current[0], metrics = update(current[0], data)  # The state is donated, as in training.
    return metrics['loss']

  return time_steps(step, jax.block_until_ready, warmup, steps)


def torch_benchmark(name: str, image_size: int, dtype: str, mode: str, batch: int,
                    compiled: bool, warmup: int, steps: int) -> tuple[float, float | None]:
  """Median seconds per step of timm's model, and its peak CUDA memory in GiB."""
  import torch

  from sequencer_jax.weights.timm_check import timm_sequencer
  device = 'cuda' if torch.cuda.is_available() else 'cpu'
  drop_path = DROP_PATH_RATE if mode == 'train' else 0.0
  model = timm_sequencer(model_info(name).arch, drop_path_rate=drop_path).to(device)
  if compiled:
    model = torch.compile(model)
  images = torch.randn(batch, 3, image_size, image_size, device=device)
  labels = torch.randint(0, 1000, (batch,), device=device)
  amp = dict(device_type=device, dtype=torch.bfloat16, enabled=dtype == 'bfloat16')
  sync = (lambda _: torch.cuda.synchronize()) if device == 'cuda' else (lambda _: None)
  if device == 'cuda':
    torch.cuda.reset_peak_memory_stats()
  if mode == 'infer':
    model.eval()

    def step():
      with torch.inference_mode(), torch.autocast(**amp):
        return model(images)
  else:
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.05)

    def step():
      with torch.autocast(**amp):
        loss = torch.nn.functional.cross_entropy(model(images), labels)
      opt.zero_grad(set_to_none=True)
      loss.backward()
      opt.step()
      return loss
  seconds = time_steps(step, sync, warmup, steps)
  peak = torch.cuda.max_memory_allocated() / 2**30 if device == 'cuda' else None
  return seconds, peak


def _mfu(name: str, image_size: int, dtype: str, mode: str, batch: int, seconds: float,
         peak_tflops: float | None) -> float | None:
  if peak_tflops is None or mode == 'augment':
    return None
  flops = forward_flops(model_info(name).arch, image_size, image_size) * batch
  return flops * (3 if mode == 'train' else 1) / seconds / (peak_tflops * 1e12)


def _parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
  p.add_argument('--model', action='append', choices=list_models(), metavar='NAME')
  p.add_argument('--image-size', action='append', type=int)
  p.add_argument('--dtype', action='append', choices=sorted(DTYPES))
  p.add_argument('--mode', action='append', choices=('infer', 'train', 'augment'))
  p.add_argument('--impl', action='append', choices=RNN_IMPLS)
  p.add_argument('--batch-size', type=int, default=256)
  p.add_argument('--unroll', type=int, default=1, help='scan unroll factor')
  p.add_argument('--warmup', type=int, default=2)
  p.add_argument('--steps', type=int, default=10)
  p.add_argument('--compare-torch', action='store_true', help="also time timm's model")
  p.add_argument('--torch-compile', action='store_true', help='also time torch.compile(timm)')
  p.add_argument('--peak-tflops', type=float,
                 help='device peak for MFU (default: known datasheet figure, else no MFU)')
  return p


def main(argv: list[str] | None = None) -> list[Result]:
  args = _parser().parse_args(argv)
  if args.steps < 10:
    raise SystemExit('--steps must be at least 10')
  device = jax.local_devices()[0]
  results: list[Result] = []
  for name in args.model or ['sequencer2d_s']:
    for size in args.image_size or [224]:
      for dtype in args.dtype or ['float32']:
        peak = args.peak_tflops or PEAK_TFLOPS.get((device.device_kind, dtype))
        for mode in args.mode or ['infer']:
          config = (name, size, dtype, mode, args.batch_size)
          runs = [('jax', impl) for impl in args.impl or ['fused_vjp']]
          if args.compare_torch and mode != 'augment':
            runs += [('torch', 'eager')] + ([('torch', 'compile')] if args.torch_compile else [])
          for framework, variant in runs:
            memory = None
            try:
              if framework == 'jax':
                seconds = jax_benchmark(*config, variant, args.unroll, args.warmup, args.steps)
                memory = _peak_memory_gb()
              else:
                seconds, memory = torch_benchmark(*config, variant == 'compile', args.warmup,
                                                  args.steps)
            except Exception as e:  # One failing configuration must not lose the others.
              print(f'# {framework} {variant} {config}: failed: {type(e).__name__}: {e}')
              continue
            result = Result(framework, variant, name, size, dtype, mode, args.batch_size,
                            seconds, args.batch_size / seconds, memory,
                            _mfu(*config, seconds, peak))
            results.append(result)
            print(f'# {framework:5s} {variant:13s} {name} {size} {dtype} {mode} '
                  f'b{args.batch_size}: {result.images_per_s:9.1f} img/s', flush=True)
  _print_table(results)
  print(json.dumps({'device': device.device_kind, 'platform': platform.platform(),
                    'jax': jax.__version__, 'torch': _torch_version(),
                    'results': [dataclasses.asdict(r) for r in results]}))
  return results


def _torch_version() -> str | None:
  try:
    import torch
    return torch.__version__
  except ImportError:
    return None


def _print_table(results: list[Result]) -> None:
  header = (f'{"framework":9s} {"variant":13s} {"model":15s} {"size":>4s} {"dtype":8s} '
            f'{"mode":5s} {"batch":>5s} {"ms/step":>9s} {"img/s":>9s} {"peak GB":>7s} '
            f'{"MFU":>6s} {"vs torch eager":>14s}')
  print(header)
  print('-' * len(header))
  for r in results:
    eager = next((t for t in results if t.framework == 'torch' and t.variant == 'eager' and
                  (t.model, t.image_size, t.dtype, t.mode) == (r.model, r.image_size, r.dtype,
                                                               r.mode)), None)
    ratio = f'{r.images_per_s / eager.images_per_s:.2f}x' if eager else '-'
    memory = f'{r.peak_memory_gb:.2f}' if r.peak_memory_gb is not None else '-'
    mfu = f'{100 * r.mfu:.1f}%' if r.mfu is not None else '-'
    print(f'{r.framework:9s} {r.variant:13s} {r.model:15s} {r.image_size:4d} {r.dtype:8s} '
          f'{r.mode:5s} {r.batch_size:5d} {1e3 * r.median_s:9.2f} {r.images_per_s:9.1f} '
          f'{memory:>7s} {mfu:>6s} {ratio:>14s}')


if __name__ == '__main__':
  torchvision_stand_in.install()  # timm without torchvision, where it is not installed.
  main()
