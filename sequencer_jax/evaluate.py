"""The evaluate command, this project's validate.py: the ImageNet suites with their own metrics.

  python -m sequencer_jax.evaluate --model SOURCE --eval NAME=DATASET[:SPLIT] [--eval ...]
      [--batch-size N] [--ema] [--format table|json] [--results-file F] [--data-dir DIR]
      [--img-size SIZE... [--plot PNG]] [--crop-pct P] [--interpolation bicubic|bilinear]
      [--attack fgsm|pgd [--adv-eps 1] [--adv-steps 5] [--adv-step-size 0.5] [--seed 0]]
      [--[no-]progress]

SOURCE is anything `sequencer_jax.load_pretrained` takes, with an ImageNet-1k head. NAME picks the
metric: imagenet, real, imagenet_v2, imagenet_sketch, imagenet_a, imagenet_r or imagenet_c.
DATASET is a folder laid out as the set is distributed or a TFDS name (see evaluation/suites.py).
--results-file appends one CSV row per evaluation, as timm's validate.py does. --img-size,
--crop-pct and --interpolation override the model's data config (not ImageNet-C's, whose images
reach the model unchanged); several sizes are a sweep, each result keyed NAME@SIZE, and --plot
draws top-1 against the size. --attack evaluates on adversarial images, as the original's
validate.py --attack-type does (evaluation/attacks.py): eps and step sizes in 1/255 of the
[0, 1] range. Progress goes to stderr when it is a terminal (each set: images done of its total,
images/s, time left, running top-1 and top-5); the results go to stdout.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import logging
import os
import sys
from collections.abc import Callable
from typing import Any

import jax
import numpy as np
import tqdm

from sequencer_jax import pretrained, progress
from sequencer_jax.data import cpu_only
from sequencer_jax.data.image_header import MAX_PIXELS
from sequencer_jax.errors import DatasetError
from sequencer_jax.evaluation import attacks, metrics, runner, suites
from sequencer_jax.models import DataConfig, abstract_params
from sequencer_jax import sharding

RESULT_FIELDS = ('model', 'eval', 'dataset', 'top1', 'top1_err', 'top5', 'top5_err', 'mce',
                 'images', 'param_count', 'img_size', 'crop_pct', 'interpolation')


def parse_eval(spec: str) -> tuple[str, str, str | None]:
  """`NAME=DATASET[:SPLIT]` -> (name, dataset, split or None)."""
  name, sep, target = spec.partition('=')
  if not sep or not name or not target:
    raise argparse.ArgumentTypeError(f'{spec!r}: expected NAME=DATASET[:SPLIT]')
  if name not in suites.SUITES:
    raise argparse.ArgumentTypeError(f'{name!r}: NAME is one of {", ".join(suites.SUITES)}')
  dataset, sep, split = target.rpartition(':')
  if not sep or '/' in split:  # No split, or the colon belongs to a path.
    return name, target, None
  return name, dataset, split


def _parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(prog='python -m sequencer_jax.evaluate', description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument('--model', required=True, metavar='SOURCE', help='any model source')
  p.add_argument('--eval', required=True, action='append', type=parse_eval, dest='evals',
                 metavar='NAME=DATASET[:SPLIT]', help='an evaluation; repeat for several')
  p.add_argument('--batch-size', type=int, default=256)
  p.add_argument('--ema', action='store_true', help="a training workdir's EMA weights")
  p.add_argument('--format', choices=('table', 'json'), default='table')
  p.add_argument('--results-file', help='append one CSV row per evaluation to this file')
  p.add_argument('--data-dir', help='the TFDS data_dir')
  p.add_argument('--max-pixels', type=int, default=MAX_PIXELS,
                 help=f'skip images whose header claims more pixels (default {MAX_PIXELS:,})')
  p.add_argument('--attack', choices=('fgsm', 'pgd'),
                 help='evaluate on adversarial images (untargeted, L-infinity)')
  p.add_argument('--adv-eps', type=float, default=1.0, help='the attack\'s eps, in 1/255 (1)')
  p.add_argument('--adv-steps', type=int, default=5, help='PGD steps (5)')
  p.add_argument('--adv-step-size', type=float, default=0.5, help='PGD step, in 1/255 (0.5)')
  p.add_argument('--seed', type=int, default=0, help="PGD's random start (0)")
  p.add_argument('--img-size', type=int, nargs='+', metavar='SIZE',
                 help="input size instead of the model's; several sizes: a sweep")
  p.add_argument('--crop-pct', type=float, help="crop_pct instead of the model's")
  p.add_argument('--interpolation', choices=('bicubic', 'bilinear'),
                 help="resize interpolation instead of the model's")
  p.add_argument('--plot', metavar='PNG', help='draw top-1 against the input size (matplotlib)')
  progress.add_flag(p)
  return p


def _table(results: dict[str, dict[str, Any]], datasets: dict[str, str]) -> str:
  lines = [f'{"eval":<16} {"images":>8} {"top-1":>8} {"top-5":>8} {"mCE":>8} {"raw mCE":>8}'
           f'  dataset']
  percent = lambda r, key: '' if r.get(key) is None else f'{100 * r[key]:.2f}'
  for name, r in results.items():
    lines.append(f'{name:<16} {r["images"]:>8} {100 * r["top1"]:>8.3f} {100 * r["top5"]:>8.3f} '
                 f'{percent(r, "mce"):>8} {percent(r, "unnormalized_mce"):>8}  {datasets[name]}')
    for corruption, c in r.get('corruptions', {}).items():
      ce = 'partial' if c['ce'] is None else f'CE {100 * c["ce"]:.2f}'
      lines.append(f'  {corruption:<22} top-1 {100 * c["top1"]:.3f}  {ce}')
    if 'attack' in r:
      lines.append('  on adversarial images: ' + ', '.join(
          f'{k} {v}' for k, v in r.items() if k in ('attack', 'eps', 'steps', 'step_size',
                                                    'seed')) + ' (eps and steps in 1/255)')
    if 'partial' in r:
      lines.append(f'  partial set, no mCE; missing or incomplete: '
                   f'{", ".join(r["partial"]["missing"]) or "none"}')
  return '\n'.join(lines)


def _append_results(path: str, rows: list[dict[str, Any]]) -> None:
  new = not os.path.exists(path) or os.path.getsize(path) == 0
  with open(path, 'a', newline='') as f:
    writer = csv.DictWriter(f, RESULT_FIELDS)
    if new:
      writer.writeheader()
    writer.writerows(rows)


def _row(model: str, key: str, dataset: str, r: dict[str, Any], n_params: int) -> dict[str, Any]:
  """One row of --results-file, in timm's units (percent, millions of parameters)."""
  return {'model': model, 'eval': key, 'dataset': dataset,
          'top1': round(100 * r['top1'], 4), 'top1_err': round(100 - 100 * r['top1'], 4),
          'top5': round(100 * r['top5'], 4), 'top5_err': round(100 - 100 * r['top5'], 4),
          'mce': '' if r.get('mce') is None else round(100 * r['mce'], 4), 'images': r['images'],
          'param_count': round(n_params / 1e6, 2), 'img_size': r['input_size'],
          'crop_pct': r['crop_pct'], 'interpolation': r['interpolation']}


def _reporter(bar: tqdm.tqdm) -> Callable[[int, metrics.Metric], None]:
  """`run_eval`'s `on_batch` for a bar: images done, and the running top-1 and top-5."""
  def on_batch(images: int, metric: metrics.Metric) -> None:
    if not bar.disable:
      figures = metric.result()
      bar.set_postfix(top1=f'{100 * figures["top1"]:.2f}', top5=f'{100 * figures["top5"]:.2f}',
                      refresh=False)
    bar.update(images)
  return on_batch


def _check(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
  """Refuses, through `parser`, what cannot run; before anything is read."""
  names = [name for name, _, _ in args.evals]
  if len(set(names)) != len(names):
    parser.error('each NAME may be given once')
  if args.batch_size < 1 or args.max_pixels < 1:
    parser.error('--batch-size and --max-pixels must be positive')
  sizes = args.img_size or []
  if any(size < 1 for size in sizes) or len(set(sizes)) != len(sizes):
    parser.error('--img-size takes distinct positive sizes')
  if (args.img_size or args.crop_pct is not None) and 'imagenet_c' in names:
    parser.error("--img-size and --crop-pct do not apply to imagenet_c: its 224 x 224 images "
                 "reach the model unchanged, as validate_c.py feeds them")
  if args.plot and os.path.exists(args.plot):
    parser.error(f'{args.plot} already exists; refusing to overwrite it')
  if args.plot:
    try:
      import matplotlib  # noqa: F401
    except ImportError:
      parser.error("--plot needs matplotlib (pip install 'sequencer-jax[plots]')")


def _configs(model: DataConfig, args: argparse.Namespace) -> dict[int | None, DataConfig]:
  """The data configs to evaluate with, keyed by the size of a sweep (None: no sweep)."""
  changes: dict[str, Any] = {k: v for k, v in (('crop_pct', args.crop_pct),
                                               ('interpolation', args.interpolation))
                             if v is not None}
  if not args.img_size or len(args.img_size) == 1:
    size = {'input_size': args.img_size[0]} if args.img_size else {}
    return {None: dataclasses.replace(model, **changes, **size)}
  return {size: dataclasses.replace(model, **changes, input_size=size) for size in args.img_size}


def _plot(results: dict[str, dict[str, Any]], keys: dict[str, tuple[str, int | None]],
          path: str) -> None:
  """Top-1 against the input size, one line per evaluation."""
  import matplotlib
  matplotlib.use('Agg')
  from matplotlib import pyplot as plt
  fig, ax = plt.subplots(figsize=(5, 3.5))
  for name in dict.fromkeys(name for name, _ in keys.values()):
    points = sorted((results[k]['input_size'], 100 * results[k]['top1'])
                    for k, (n, _) in keys.items() if n == name)
    ax.plot(*zip(*points), marker='o', label=name)
  ax.set_xlabel('input size (pixels)')
  ax.set_ylabel('top-1 (%)')
  ax.legend()
  ax.grid(alpha=0.3)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def _evaluate(args: argparse.Namespace, sets: list[suites.EvalSet], loaded: pretrained.Pretrained,
              configs: dict[int | None, DataConfig], attack: attacks.Attack | None, mesh: Any
              ) -> tuple[dict[str, dict[str, Any]], dict[str, tuple[str, int | None]]]:
  """Every set at every data config: the results by key (NAME, or NAME@SIZE in a sweep) and
  each key's (NAME, size)."""
  model, variables, record = loaded
  params_sharding = sharding.param_shardings(abstract_params(model), mesh, False)
  params = jax.device_put(variables['params'], params_sharding)
  results, keys = {}, {}
  for eval_set in sets:
    step = runner.make_predict_step(model, mesh=mesh, params_sharding=params_sharding,
                                    classes=eval_set.classes, attack=attack,
                                    data_config=record.data_config)
    for size, config in configs.items():
      key = eval_set.name if size is None else f'{eval_set.name}@{size}'
      with progress.bar(eval_set.source.num_examples, key, 'img', args.progress) as bar:
        result = runner.run_eval(step, params, eval_set, batch_size=args.batch_size,
                                 data_config=config, mesh=mesh, max_pixels=args.max_pixels,
                                 on_batch=_reporter(bar))
      used = eval_set.data_config(config)
      result.update(input_size=used.input_size, crop_pct=used.crop_pct,
                    interpolation=used.interpolation, **(attack.describe() if attack else {}))
      results[key], keys[key] = result, (eval_set.name, size)
  return results, keys


def main(argv: list[str] | None = None) -> int:
  parser = _parser()
  args = parser.parse_args(argv)
  _check(parser, args)
  logging.getLogger('absl').setLevel(logging.ERROR)  # orbax's notes on read-only managers.
  cpu_only.keep_tensorflow_on_the_cpu()
  try:
    attack = None if args.attack is None else attacks.Attack(
        args.attack, args.adv_eps, args.adv_steps, args.adv_step_size, args.seed)
  except ValueError as e:
    parser.error(str(e))
  mesh = sharding.make_mesh()
  if args.batch_size % mesh.size:
    parser.error(f'--batch-size {args.batch_size} must be a multiple of the {mesh.size} devices')
  try:
    sets = [suites.open_eval(name, name, dataset, split, args.data_dir)
            for name, dataset, split in args.evals]
    unlabelled = [s.name for s in sets if attack and not s.labelled]
    if unlabelled:
      raise DatasetError(f'{unlabelled[0]}: an attack needs each image\'s ImageNet label, and '
                         f'flat ReaL images have none; sort them into WordNet-id folders')
    loaded = pretrained.load_pretrained(args.model, ema=args.ema)
    if loaded.record.num_classes != 1000:
      raise DatasetError(f'{args.model} has {loaded.record.num_classes} classes; the ImageNet '
                         f'suites need an ImageNet-1k head (1000 classes)')
    configs = _configs(loaded.record.data_config, args)  # A bad --crop-pct fails here.
  except (DatasetError, pretrained.SourceError, ValueError) as e:
    print(f'error: {e}', file=sys.stderr)
    return 1
  results, keys = _evaluate(args, sets, loaded, configs, attack, mesh)
  datasets = {name: dataset + (f':{split}' if split else '') for name, dataset, split in args.evals}
  datasets = {key: datasets[name] for key, (name, _) in keys.items()}
  if args.results_file:
    n_params = sum(int(np.prod(p.shape)) for p in jax.tree.leaves(loaded.variables['params']))
    _append_results(args.results_file, [_row(args.model, key, datasets[key], r, n_params)
                                        for key, r in results.items()])
  if args.plot:
    _plot(results, keys, args.plot)
  print(json.dumps(results, indent=1) if args.format == 'json' else _table(results, datasets))
  return 0


def run() -> None:
  """The console script's entry point."""
  sys.exit(main())


if __name__ == '__main__':
  run()
