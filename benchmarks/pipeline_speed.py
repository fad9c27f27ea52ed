"""Times the host's part of our training pipeline beside timm's whole PIL pipeline on the same
JPEGs, in the same run, and our device augmentation per image.

  python -m benchmarks.pipeline_speed --num-images 256 --repeats 5

Both read every file from disk on every pass (the OS page cache serves both alike). Ours is what
the host does in training: read, decode the RandomResizedCrop window (224, scale (0.08, 1), ratio
(3/4, 4/3), random bilinear/bicubic) and place it on the uint8 canvas (`--canvas-size`); the
resize, flip, RandAugment rand-m9-mstd0.5-inc1, Mixup/CutMix, normalisation and RandomErasing run
in the train step. timm's is its whole host pipeline as the original's loader with its prefetcher
ran it: decode, RandomResizedCrop with the resize, flip, RandAugment, to uint8 arrays. Ours runs on
one core (a private one-thread tf.data pool, one map call at a time) and on all cores (AUTOTUNE);
timm's runs in this process with one torch thread, which is one core, as one DataLoader worker is.
Each configuration runs one untimed pass (tracing, warm caches), then `--repeats` timed passes; the
median pass gives images/s, and the process CPU time of that pass gives images per CPU-second (less
sensitive to other load on the machine). The evaluation transform (decode, resize the shorter side
to size / crop_pct, centre crop) is timed too, on one core each: timm's whole transform to uint8
(its prefetcher normalises on the accelerator), and the host's part of ours (decode, the crop's
source window on the uint8 canvas with its Pillow coefficients; the step resizes and
normalises, bit-exact).

The device augmentation (`device_augment.augment_batch`, the paper's: resize, flip, RandAugment,
Mixup/CutMix, normalisation, erasing) is timed jitted on this machine's JAX backend, on canvases
the host pipeline made, warm-up excluded, median of `--repeats` calls, per image
(`benchmarks/h200.py` times it on the H200 beside the train step).

torchvision is not needed: timm's own crop sampling and RandAugment run as they are, and the few
torchvision steps between them are the PIL/torch calls torchvision makes for PIL images (listed in
EMULATED). Without `--data-dir`, `--num-images` JPEGs of ImageNet-like sizes and content are
generated into a temporary directory. The run ends with one table, the ratio of ours to timm per
core, and one JSON line holding every figure.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import math
import os
import platform
import random
import statistics
import tempfile
import time
import types
from collections.abc import Callable, Sequence
from pathlib import Path

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')

import numpy as np  # noqa: E402
import PIL  # noqa: E402
import tensorflow as tf  # noqa: E402
import torch  # noqa: E402
from PIL import Image, ImageOps  # noqa: E402

import jax  # noqa: E402

from sequencer_jax.data import device_augment, pil_resize, pipeline, transforms  # noqa: E402
from sequencer_jax.data.mixup import MixupConfig  # noqa: E402
from sequencer_jax.models.data_config import IMAGENET_MEAN, DataConfig  # noqa: E402
from tools.torchvision_stand_in import import_timm  # noqa: E402

GOAL_IMAGES_PER_S_PER_CORE = 350.0
GOAL_RATIO_PER_CORE = 2.5  # ours (the host's part) / timm (its whole pipeline), one core each.
# Images per second per accelerator at which the host-to-device bytes are stated.
TRANSFER_IMAGES_PER_S = 5000
PAPER_RAND_AUGMENT = 'rand-m9-mstd0.5-inc1'
# (width, height) of the generated files: ImageNet's common landscape and portrait shapes.
IMAGE_SIZES = ((500, 375), (375, 500), (500, 333), (333, 500), (400, 300), (500, 400))
# (grid cells, amplitude) of the smooth random fields summed into a generated image.
FIELD_SCALES = ((4, 60.0), (12, 35.0), (40, 30.0), (120, 30.0), (250, 25.0))
JPEG_SUFFIXES = ('.jpg', '.jpeg')
EMULATED = (
    "Image.open(path).convert('RGB') (timm's ImageDataset loader, inlined)",
    'F.resized_crop: img.crop((j, i, j + w, i + h)).resize((224, 224), interpolation)',
    'RandomHorizontalFlip: torch.rand(1) < p -> img.transpose(FLIP_LEFT_RIGHT)',
    "ToNumpy (the prefetcher's loader): np.array(img, uint8) -> (3, H, W)",
    "F.get_image_size (inside timm's get_params): img.size",
    "Posterize to 0 bits (PosterizeIncreasing at magnitude 10), which Pillow 13 refuses: a black "
    "image, as Pillow <= 12's posterize gave",
    'eval: Resize(int(size / crop_pct)) -> img.resize((ow, oh), BICUBIC), shorter side to that',
    'eval: CenterCrop(size) -> img.crop at round((extent - size) / 2)',
)


@dataclasses.dataclass
class Result:
  pipeline: str  # 'ours' or 'timm'
  stage: str  # 'train' (ours: the host's part; timm: its whole pipeline) or 'eval'
  cores: int
  median_s: float  # Wall-clock seconds of the median pass.
  images_per_s: float
  images_per_s_per_core: float
  images_per_cpu_s: float  # Images per second of process CPU time (median pass).


def generate_jpegs(directory: str | Path, num_images: int, seed: int = 0,
                   quality: int = 90) -> list[Path]:
  """Writes `num_images` JPEGs of ImageNet-like sizes: random colour fields at five scales plus
  pixel noise, which compress about as ImageNet photos do (~100 KiB at 500x375)."""
  rng = np.random.default_rng(seed)
  directory = Path(directory)
  paths = []
  for index in range(num_images):
    width, height = IMAGE_SIZES[rng.integers(len(IMAGE_SIZES))]
    field = np.zeros((height, width, 3), np.float32)
    for cells, amplitude in FIELD_SCALES:
      coarse = rng.normal(0.0, amplitude, (cells, cells, 3)).astype(np.float32)
      for channel in range(3):
        layer = Image.fromarray(coarse[..., channel], mode='F')
        field[..., channel] += np.asarray(layer.resize((width, height), Image.Resampling.BICUBIC))
    field += rng.uniform(60.0, 190.0, 3).astype(np.float32) + rng.normal(0.0, 8.0, field.shape)
    path = directory / f'image_{index:05d}.jpg'
    Image.fromarray(np.clip(field, 0, 255).astype(np.uint8)).save(path, quality=quality)
    paths.append(path)
  return paths


def find_jpegs(directory: str | Path, num_images: int) -> list[Path]:
  """The first `num_images` JPEGs (by name) under `directory`."""
  paths = sorted(p for p in Path(directory).rglob('*') if p.suffix.lower() in JPEG_SUFFIXES)
  if not paths:
    raise SystemExit(f'no JPEG files under {directory}')
  return paths[:num_images]


def ours_dataset(paths: Sequence[Path], image_size: int, augment: pipeline.TrainAugment,
                 threads: int | None, seed: int = 0) -> tf.data.Dataset:
  """read_file + `pipeline.train_transform` over `paths`, one seed per example as in
  `pipeline.train_batches`. threads=None: one core (one thread, one map call at a time);
  otherwise a private pool of `threads` threads and AUTOTUNE map calls."""
  base = tf.constant([seed, 0], tf.int64)

  def example(position, path):
    example_seed = tf.random.experimental.stateless_fold_in(base, position)
    return pipeline.train_transform(tf.io.read_file(path), example_seed, image_size, augment)

  options = tf.data.Options()
  options.deterministic = True
  options.threading.max_intra_op_parallelism = 1
  options.threading.private_threadpool_size = threads or 1
  return (tf.data.Dataset.from_tensor_slices([str(p) for p in paths]).enumerate()
          .map(example, num_parallel_calls=tf.data.AUTOTUNE if threads else 1)
          .with_options(options))


def ours_eval_dataset(paths: Sequence[Path], data_config: DataConfig) -> tf.data.Dataset:
  """read_file + the host's part of our evaluation transform (decode, the crop's source window
  on the canvas, and the coefficients per batch of 32; the step resizes and normalises) on one
  core."""
  options = tf.data.Options()
  options.deterministic = True
  options.threading.max_intra_op_parallelism = 1
  options.threading.private_threadpool_size = 1
  return (tf.data.Dataset.from_tensor_slices([str(p) for p in paths])
          .map(lambda path: transforms.eval_example(transforms.decode_rgb(tf.io.read_file(path)),
                                                    data_config), num_parallel_calls=1)
          .batch(32)
          .map(lambda batch: pipeline.eval_coefficients(batch, data_config))
          .unbatch()
          .with_options(options))


def _timm_get_params() -> Callable:
  """timm's RandomResizedCropAndInterpolation.get_params, run with torchvision's
  F.get_image_size for PIL images (img.size) in place of the stand-in's refusing one."""
  from timm.data.transforms import RandomResizedCropAndInterpolation
  code = RandomResizedCropAndInterpolation.get_params
  shim = types.SimpleNamespace(get_image_size=lambda img: list(img.size))
  return types.FunctionType(code.__code__, dict(code.__globals__, F=shim), code.__name__,
                            code.__defaults__, code.__closure__)


def _posterize_as_pillow_12(img: Image.Image, bits_to_keep: int, **_) -> Image.Image:
  """timm's posterize, with Pillow <= 12's result for 0 bits (black) where Pillow 13 raises."""
  if bits_to_keep >= 8:
    return img
  if bits_to_keep >= 1:
    return ImageOps.posterize(img, bits_to_keep)
  return img.point([0] * 256 * len(img.getbands()))


def timm_transform(image_size: int, augment: pipeline.TrainAugment,
                   step: device_augment.DeviceAugment) -> Callable[[Path], np.ndarray]:
  """timm's `transforms_imagenet_train(..., use_prefetcher=True)` for our host's `augment` and
  step's `step` settings: path in, uint8 (3, size, size) out."""
  import_timm()
  from timm.data import auto_augment
  from timm.data import transforms as timm_transforms
  from timm.data.auto_augment import rand_augment_transform
  for name, op in list(auto_augment.NAME_TO_OP.items()):
    if op is auto_augment.posterize:
      auto_augment.NAME_TO_OP[name] = _posterize_as_pillow_12
  if step.rand_augment is None and step.color_jitter > 0:
    raise NotImplementedError("torchvision's ColorJitter is not emulated")
  crop = timm_transforms.RandomResizedCropAndInterpolation(image_size, augment.scale,
                                                           augment.ratio, augment.interpolation)
  modes = crop.interpolation if isinstance(crop.interpolation, tuple) else (crop.interpolation,)
  pil_modes = [timm_transforms.str_to_pil_interp(timm_transforms.interp_mode_to_str(m))
               for m in modes]
  get_params = _timm_get_params()
  size = (image_size, image_size)
  rand_augment = None
  if step.rand_augment is not None:
    # What transforms_imagenet_train passes (interpolation 'random': no 'interpolation' key).
    hparams = {'translate_const': int(image_size * 0.45),
               'img_mean': tuple(min(255, round(255 * x)) for x in IMAGENET_MEAN)}
    if augment.interpolation != 'random':
      hparams['interpolation'] = timm_transforms.str_to_pil_interp(augment.interpolation)
    rand_augment = rand_augment_transform(PAPER_RAND_AUGMENT, hparams)

  def transform(path: Path) -> np.ndarray:
    img = Image.open(path).convert('RGB')
    i, j, h, w = get_params(img, crop.scale, crop.ratio)
    img = img.crop((j, i, j + w, i + h))
    if (h, w) != size:  # torchvision's resize returns an image of the right size as it is.
      img = img.resize(size, random.choice(pil_modes))
    if step.hflip > 0 and torch.rand(1) < step.hflip:
      img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    if rand_augment is not None:
      img = rand_augment(img)
    array = np.array(img, np.uint8)
    return np.rollaxis(array, 2) if array.ndim == 3 else array[None]  # timm's ToNumpy.

  return transform


def timm_eval_transform(data_config: DataConfig) -> Callable[[Path], np.ndarray]:
  """timm's `transforms_imagenet_eval(..., use_prefetcher=True)`: path in, uint8 (3, size, size)
  out (the prefetcher normalises on the accelerator; ours normalises here, on the host)."""
  size = data_config.input_size
  scale_size = int(math.floor(size / data_config.crop_pct))
  mode = {'bicubic': Image.Resampling.BICUBIC, 'bilinear': Image.Resampling.BILINEAR}[
      data_config.interpolation]

  def transform(path: Path) -> np.ndarray:
    img = Image.open(path).convert('RGB')
    w, h = img.size
    if w <= h:
      img = img.resize((scale_size, int(scale_size * h / w)), mode)
    else:
      img = img.resize((int(scale_size * w / h), scale_size), mode)
    w, h = img.size
    top, left = int(round((h - size) / 2.0)), int(round((w - size) / 2.0))
    array = np.array(img.crop((left, top, left + size, top + size)), np.uint8)
    return np.rollaxis(array, 2)

  return transform


def time_passes(run_pass: Callable[[], int], num_images: int,
                repeats: int) -> tuple[float, float]:
  """(wall, CPU) seconds of the median of `repeats` timed passes, after one untimed pass.

  `run_pass` returns how many images it produced, which must be `num_images`.
  """
  passes = []
  for timed in [False] + [True] * repeats:
    wall, cpu = time.perf_counter(), time.process_time()
    count = run_pass()
    if count != num_images:
      raise RuntimeError(f'a pass produced {count} images, expected {num_images}')
    if timed:
      passes.append((time.perf_counter() - wall, time.process_time() - cpu))
  passes.sort()
  return passes[(len(passes) - 1) // 2]


def _count(iterable) -> int:
  return sum(1 for _ in iterable)


def _result(name: str, stage: str, cores: int, num_images: int,
            seconds: tuple[float, float]) -> Result:
  wall, cpu = seconds
  return Result(name, stage, cores, wall, num_images / wall, num_images / wall / cores,
                num_images / cpu)


def paper_step_augment(image_size: int) -> device_augment.DeviceAugment:
  """The paper's augmentation in the step (resize, flip, RandAugment, Mixup/CutMix, erasing)."""
  return device_augment.DeviceAugment(1000, image_size, mixup=MixupConfig(1000))


def benchmark_ours(paths: Sequence[Path], image_size: int, augment: pipeline.TrainAugment,
                   repeats: int, threads: int) -> list[Result]:
  """The host's part of our training pipeline on one core, then on `threads` cores; our
  evaluation transform on one core."""
  results = []
  for cores in (None, threads):
    dataset = ours_dataset(paths, image_size, augment, cores)
    seconds = time_passes(functools.partial(_count, dataset), len(paths), repeats)
    results.append(_result('ours', 'train', cores or 1, len(paths), seconds))
    _print_progress(results[-1])
  dataset = ours_eval_dataset(paths, DataConfig(input_size=image_size))
  seconds = time_passes(functools.partial(_count, dataset), len(paths), repeats)
  results.append(_result('ours', 'eval', 1, len(paths), seconds))
  _print_progress(results[-1])
  return results


def benchmark_timm(paths: Sequence[Path], image_size: int, augment: pipeline.TrainAugment,
                   repeats: int, seed: int = 0) -> list[Result]:
  """timm's pipelines, train (every pass draws the same augmentations) and eval, on one core."""
  transform = timm_transform(image_size, augment, paper_step_augment(image_size))
  eval_transform = timm_eval_transform(DataConfig(input_size=image_size))

  def run_pass() -> int:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    return _count(transform(path) for path in paths)

  results = []
  threads = torch.get_num_threads()
  torch.set_num_threads(1)
  try:
    for stage, run in (('train', run_pass),
                       ('eval', lambda: _count(eval_transform(path) for path in paths))):
      results.append(_result('timm', stage, 1, len(paths), time_passes(run, len(paths), repeats)))
      _print_progress(results[-1])
  finally:
    torch.set_num_threads(threads)
  return results


def time_device_augment(paths: Sequence[Path], image_size: int, augment: pipeline.TrainAugment,
                        batch: int, repeats: int) -> dict[str, float | int | str]:
  """The paper's step augmentation, jitted, on `batch` canvases of the host pipeline: the median
  of `repeats` calls after a warm-up call, per image."""
  examples = list(ours_dataset(paths[:batch], image_size, augment, threads=None)
                  .batch(batch).take(1).as_numpy_iterator())[0]
  if len(examples['image']) != batch:
    raise SystemExit(f'--device-batch {batch} needs at least that many images')
  inputs = {'image': examples['image'], 'crop_size': examples['crop_size'],
            'bicubic': examples['bicubic'], 'label': np.zeros(batch, np.int32)}
  step = paper_step_augment(image_size)
  run = jax.jit(lambda b, key: device_augment.augment_batch(b, key, step))
  times = []
  for i in range(repeats + 1):
    start = time.perf_counter()
    jax.block_until_ready(run(inputs, jax.random.key(i)))
    if i:
      times.append(time.perf_counter() - start)
  median = statistics.median(times)
  return {'device_backend': jax.default_backend(), 'device_batch': batch,
          'device_ms_per_image': 1e3 * median / batch,
          'device_images_per_s': batch / median}


def _print_progress(r: Result) -> None:
  print(f'# {r.pipeline:4s} {r.stage:5s} {r.cores} core(s): {r.images_per_s:7.1f} img/s, '
        f'{r.images_per_s_per_core:7.1f} img/s/core', flush=True)


def summary(results: Sequence[Result], canvas_size: int) -> dict[str, float | bool | None]:
  """Ours (the host's part) against timm's whole pipeline per core, the goals, and the canvas
  bytes the host sends."""
  find = lambda name, stage: [r for r in results if r.pipeline == name and r.stage == stage]
  ours_runs, timm_runs = find('ours', 'train'), find('timm', 'train')
  ours_eval, timm_eval = find('ours', 'eval'), find('timm', 'eval')
  if not ours_runs:
    raise ValueError('no result of our training pipeline')
  ours, ours_all = ours_runs[0], ours_runs[-1]
  timm = timm_runs[0] if timm_runs else None
  ratio = ours.images_per_s / timm.images_per_s if timm else None
  canvas_bytes = canvas_size * canvas_size * 3
  return {
      'ours_per_core': ours.images_per_s,
      'ours_per_core_all_cores': ours_all.images_per_s_per_core,
      'timm_per_core': timm.images_per_s if timm else None,
      'ratio_per_core': ratio,
      'ratio_per_cpu_s': ours.images_per_cpu_s / timm.images_per_cpu_s if timm else None,
      'eval_ours_per_core': ours_eval[0].images_per_s if ours_eval else None,
      'eval_timm_per_core': timm_eval[0].images_per_s if timm_eval else None,
      'eval_ratio_per_core': (ours_eval[0].images_per_s / timm_eval[0].images_per_s
                              if ours_eval and timm_eval else None),
      'canvas_size': canvas_size,
      'canvas_bytes_per_image': canvas_bytes,
      'host_to_device_gb_per_s': canvas_bytes * TRANSFER_IMAGES_PER_S / 1e9,
      'goal_per_core_met': ours.images_per_s >= GOAL_IMAGES_PER_S_PER_CORE,
      'goal_faster_than_timm_met': ratio >= GOAL_RATIO_PER_CORE if timm else None,
  }


def _print_table(results: Sequence[Result], figures: dict) -> None:
  header = (f'{"pipeline":8s} {"stage":5s} {"cores":>5s} {"s/pass":>7s} {"img/s":>8s} '
            f'{"img/s/core":>10s} {"img/CPU-s":>9s} {"CPU ms/img":>10s} {"vs timm/core":>12s}')
  print(header)
  print('-' * len(header))
  timm = figures['timm_per_core']
  reference = {'train': timm, 'eval': figures['eval_timm_per_core']}
  for r in results:
    base = reference.get(r.stage)
    ratio = f'{r.images_per_s_per_core / base:.2f}x' if base else '-'
    print(f'{r.pipeline:8s} {r.stage:5s} {r.cores:5d} {r.median_s:7.3f} {r.images_per_s:8.1f} '
          f'{r.images_per_s_per_core:10.1f} {r.images_per_cpu_s:9.1f} '
          f'{1e3 / r.images_per_cpu_s:10.2f} {ratio:>12s}')
  print('ours/train is the host\'s part (read, decode the crop window, place it on the canvas); '
        'timm/train is its whole pipeline')
  if 'device_ms_per_image' in figures:
    print(f'device augmentation ({figures["device_backend"]}, batch {figures["device_batch"]}): '
          f'{figures["device_ms_per_image"]:.2f} ms per image')
  print(f'canvas {figures["canvas_size"]}^2: {figures["canvas_bytes_per_image"]:,} bytes per '
        f'image, {figures["host_to_device_gb_per_s"]:.2f} GB/s to the device at '
        f'{TRANSFER_IMAGES_PER_S} img/s')
  goal = GOAL_IMAGES_PER_S_PER_CORE
  print(f'goal >= {goal:.0f} img/s per core: '
        f'{"met" if figures["goal_per_core_met"] else "NOT met"} '
        f'({figures["ours_per_core"]:.1f})')
  if timm:
    print(f'goal >= {GOAL_RATIO_PER_CORE}x timm per core: '
          f'{"met" if figures["goal_faster_than_timm_met"] else "NOT met"} '
          f'(ours/timm {figures["ratio_per_core"]:.2f}x wall clock, '
          f'{figures["ratio_per_cpu_s"]:.2f}x per CPU-second)')
  print('timm steps emulated (torchvision is absent), the rest is timm\'s own code:')
  for step in EMULATED:
    print(f'  {step}')


def _parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
  p.add_argument('--num-images', type=int, default=256)
  p.add_argument('--repeats', type=int, default=5, help='timed passes (median reported)')
  p.add_argument('--image-size', type=int, default=224)
  p.add_argument('--canvas-size', type=int, default=pil_resize.CANVAS_SIZE)
  p.add_argument('--device-batch', type=int, default=8,
                 help='images per call of the timed device augmentation (0: not timed)')
  p.add_argument('--threads', type=int, default=os.cpu_count(),
                 help='cores of the all-cores run of ours')
  p.add_argument('--data-dir', help='existing JPEGs to read instead of generated ones')
  p.add_argument('--skip-timm', action='store_true', help="do not time timm's pipeline")
  p.add_argument('--json', metavar='PATH', help='also write the JSON line to PATH')
  return p


def main(argv: list[str] | None = None) -> dict:
  args = _parser().parse_args(argv)
  if args.num_images < 1 or args.repeats < 1:
    raise SystemExit('--num-images and --repeats must be at least 1')
  load = os.getloadavg()
  with tempfile.TemporaryDirectory() as tmp:
    if args.data_dir:
      paths = find_jpegs(args.data_dir, args.num_images)
    else:
      paths = generate_jpegs(tmp, args.num_images)
    mean_kib = statistics.mean(p.stat().st_size for p in paths) / 1024
    print(f'# {len(paths)} JPEGs, mean {mean_kib:.0f} KiB; {os.cpu_count()} CPUs; '
          f'load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}', flush=True)
    augment = pipeline.TrainAugment(canvas_size=args.canvas_size)
    results = benchmark_ours(paths, args.image_size, augment, args.repeats, args.threads)
    if not args.skip_timm:
      results.extend(benchmark_timm(paths, args.image_size, augment, args.repeats))
    figures = summary(results, args.canvas_size)
    if args.device_batch:
      figures.update(time_device_augment(paths, args.image_size, augment, args.device_batch,
                                         args.repeats))
  _print_table(results, figures)
  timm = import_timm()
  record = {'platform': platform.platform(), 'cpu_count': os.cpu_count(),
            'load_average_before': load, 'load_average_after': os.getloadavg(),
            'tensorflow': tf.__version__, 'torch': torch.__version__, 'jax': jax.__version__,
            'timm': timm.__version__, 'pillow': PIL.__version__,
            'num_images': len(paths), 'mean_file_kib': mean_kib, 'repeats': args.repeats,
            'image_size': args.image_size, 'goal_images_per_s_per_core': GOAL_IMAGES_PER_S_PER_CORE,
            'goal_ratio_per_core': GOAL_RATIO_PER_CORE,
            **figures, 'emulated': EMULATED,
            'results': [dataclasses.asdict(r) for r in results]}
  line = json.dumps(record)
  print(line)
  if args.json:
    Path(args.json).write_text(line + '\n')
  return record


if __name__ == '__main__':
  main()
