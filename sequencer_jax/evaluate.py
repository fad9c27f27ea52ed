"""The evaluate command, this project's validate.py: the ImageNet suites with their own metrics.

  python -m sequencer_jax.evaluate --model SOURCE --eval NAME=DATASET[:SPLIT] [--eval ...]
      [--batch-size N] [--ema] [--format table|json] [--results-file F] [--data-dir DIR]
      [--attack fgsm|pgd [--adv-eps 1] [--adv-steps 5] [--adv-step-size 0.5] [--seed 0]]
      [--[no-]progress]

SOURCE is anything `sequencer_jax.load_pretrained` takes, with an ImageNet-1k head. NAME picks the
metric: imagenet, real, imagenet_v2, imagenet_sketch, imagenet_a, imagenet_r or imagenet_c.
DATASET is a folder laid out as the set is distributed or a TFDS name (see evaluation/suites.py).
--results-file appends one CSV row per evaluation, as timm's validate.py does. --attack evaluates
on adversarial images, as the original's validate.py --attack-type does (evaluation/attacks.py):
eps and step sizes in 1/255 of the [0, 1] range. Progress goes to
stderr when it is a terminal (each set: images done of its total, images/s, time left, running
top-1 and top-5); the results go to stdout.
"""

from __future__ import annotations

import argparse
import csv
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
from sequencer_jax.models import abstract_params
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


def _reporter(bar: tqdm.tqdm) -> Callable[[int, metrics.Metric], None]:
  """`run_eval`'s `on_batch` for a bar: images done, and the running top-1 and top-5."""
  def on_batch(images: int, metric: metrics.Metric) -> None:
    if not bar.disable:
      figures = metric.result()
      bar.set_postfix(top1=f'{100 * figures["top1"]:.2f}', top5=f'{100 * figures["top5"]:.2f}',
                      refresh=False)
    bar.update(images)
  return on_batch


def main(argv: list[str] | None = None) -> int:
  parser = _parser()
  args = parser.parse_args(argv)
  names = [name for name, _, _ in args.evals]
  if len(set(names)) != len(names):
    parser.error('each NAME may be given once')
  if args.batch_size < 1 or args.max_pixels < 1:
    parser.error('--batch-size and --max-pixels must be positive')
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
    model, variables, record = pretrained.load_pretrained(args.model, ema=args.ema)
    if record.num_classes != 1000:
      raise DatasetError(f'{args.model} has {record.num_classes} classes; the ImageNet suites '
                         f'need an ImageNet-1k head (1000 classes)')
  except (DatasetError, pretrained.SourceError) as e:
    print(f'error: {e}', file=sys.stderr)
    return 1
  params_sharding = sharding.param_shardings(abstract_params(model), mesh, False)
  params = jax.device_put(variables['params'], params_sharding)
  results = {}
  for eval_set in sets:
    step = runner.make_predict_step(model, mesh=mesh, params_sharding=params_sharding,
                                    classes=eval_set.classes, attack=attack,
                                    data_config=record.data_config)
    with progress.bar(eval_set.source.num_examples, eval_set.name, 'img', args.progress) as bar:
      results[eval_set.name] = runner.run_eval(
          step, params, eval_set, batch_size=args.batch_size, data_config=record.data_config,
          mesh=mesh, max_pixels=args.max_pixels, on_batch=_reporter(bar))
    if attack:
      results[eval_set.name].update(attack.describe())
  datasets = {name: dataset + (f':{split}' if split else '') for name, dataset, split in args.evals}
  if args.results_file:
    n_params = sum(int(np.prod(p.shape)) for p in jax.tree.leaves(variables['params']))
    configs = {s.name: s.data_config(record.data_config) for s in sets}
    _append_results(args.results_file, [{
        'model': args.model, 'eval': name, 'dataset': datasets[name],
        'top1': round(100 * r['top1'], 4), 'top1_err': round(100 - 100 * r['top1'], 4),
        'top5': round(100 * r['top5'], 4), 'top5_err': round(100 - 100 * r['top5'], 4),
        'mce': '' if r.get('mce') is None else round(100 * r['mce'], 4), 'images': r['images'],
        'param_count': round(n_params / 1e6, 2), 'img_size': configs[name].input_size,
        'crop_pct': configs[name].crop_pct, 'interpolation': configs[name].interpolation}
        for name, r in results.items()])
  if args.format == 'json':
    print(json.dumps(results, indent=1))
  else:
    print(_table(results, datasets))
  return 0


def run() -> None:
  """The console script's entry point."""
  sys.exit(main())


if __name__ == '__main__':
  run()
