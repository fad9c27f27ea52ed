"""The predict command: the top-k classes of images, with any model.

  python -m sequencer_jax.predict --model SOURCE PATH... [--topk 5] [--format table|csv|json]
      [--batch-size N] [--max-pixels N] [--[no-]progress]

SOURCE is anything `sequencer_jax.load_pretrained` takes (a model directory, a training workdir,
a PyTorch file, hf-hub:timm/sequencer2d_s.in1k). PATHs are images or folders (searched
recursively). A file that cannot be read is reported by name with why, in words ("truncated
JPEG", "empty file", "not an image (text)"), and the others still predicted; the exit status is
then 1. Over more files than the terminal has lines, progress goes to stderr when it is a
terminal; the predictions go to stdout.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import shutil
import sys
from collections.abc import Iterable
from typing import Any

import tqdm

from sequencer_jax import pretrained, progress
from sequencer_jax.data import cpu_only
from sequencer_jax.data.image_header import MAX_PIXELS
from sequencer_jax.inference import Classifier, ImageError, find_images

CSV_FIELDS = ('path', 'rank', 'index', 'label', 'probability', 'error')


def _parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(prog='python -m sequencer_jax.predict', description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument('--model', required=True, metavar='SOURCE', help='any model source')
  p.add_argument('paths', nargs='+', metavar='PATH', help='image files or folders')
  p.add_argument('--topk', type=int, default=5, help='classes per image (default 5)')
  p.add_argument('--format', choices=('table', 'csv', 'json'), default='table')
  p.add_argument('--batch-size', type=int, default=32, help='images per forward pass')
  p.add_argument('--max-pixels', type=int, default=MAX_PIXELS,
                 help=f'refuse images whose header claims more pixels (default {MAX_PIXELS:,})')
  p.add_argument('--ema', action='store_true', help="a training workdir's EMA weights")
  progress.add_flag(p)
  return p


def _table(entry: dict[str, Any]) -> str:
  lines = [entry['path']]
  for rank, item in enumerate(entry['topk'], 1):
    lines.append(f'  {rank}. {100 * item["probability"]:6.2f}%  {item["index"]:>4}  '
                 f'{item["label"]}')
  return '\n'.join(lines)


def _write(results: Iterable[dict[str, Any]], fmt: str,
           bar: tqdm.tqdm) -> tuple[int, list[dict[str, Any]]]:
  """Prints each result as it comes in `fmt` (json: kept and returned, to print at the end)
  through the bar, which stays below; returns the number of failed files and the json entries."""
  failed, entries = 0, []
  writer = csv.DictWriter(sys.stdout, CSV_FIELDS) if fmt == 'csv' else None
  if writer:
    writer.writeheader()
  for entry in results:
    if 'error' in entry:
      failed += 1
      if fmt != 'json':
        bar.write(f'error: {entry["error"]}', file=sys.stderr)
    if fmt == 'json':
      entries.append(entry)
    elif writer:
      rows = [{'path': entry['path'], 'rank': rank, **item}
              for rank, item in enumerate(entry.get('topk', []), 1)]
      with bar.external_write_mode():
        writer.writerows(rows or [{'path': entry['path'], 'error': entry['error']}])
    elif 'topk' in entry:
      bar.write(_table(entry), file=sys.stdout)
      sys.stdout.flush()
    bar.update(1)
  return failed, entries


def main(argv: list[str] | None = None) -> int:
  parser = _parser()
  args = parser.parse_args(argv)
  if args.topk < 1 or args.batch_size < 1 or args.max_pixels < 1:
    parser.error('--topk, --batch-size and --max-pixels must be positive')
  logging.getLogger('absl').setLevel(logging.ERROR)  # orbax's notes on read-only managers.
  cpu_only.keep_tensorflow_on_the_cpu()
  try:
    paths = find_images(args.paths)
    classifier = Classifier.from_source(args.model, ema=args.ema, batch_size=args.batch_size)
  except (ImageError, pretrained.SourceError) as e:
    print(f'error: {e}', file=sys.stderr)
    return 1
  with progress.bar(len(paths), 'predict', 'img', args.progress,
                    at_least=shutil.get_terminal_size().lines) as bar:
    failed, entries = _write(classifier.predict_files(paths, args.topk, args.max_pixels),
                             args.format, bar)
  if args.format == 'json':
    json.dump(entries, sys.stdout, indent=1)
    print()
  return 1 if failed else 0


def run() -> None:
  """The console script's entry point."""
  sys.exit(main())


if __name__ == '__main__':
  run()
