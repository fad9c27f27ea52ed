"""The ERF command: the paper's effective-receptive-field figure for any model.

  python -m sequencer_jax.erf --model SOURCE --images DIR --out erf.png [--stages 0 1 2 3]
      [--num-images N] [--size PIXELS] [--batch-size N] [--[no-]progress]

Writes one PNG with a panel per stage (matplotlib) and the raw maps beside it as
`<out>_stage<k>.npy`. Images are prepared with the model's eval transform (at --size pixels if
given). Nothing existing is overwritten. Progress over the images goes to stderr when it is a
terminal.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import sys
from collections.abc import Iterator

import numpy as np
import tqdm

from sequencer_jax import pretrained, progress
from sequencer_jax.data import cpu_only
from sequencer_jax.evaluation import erf
from sequencer_jax.inference import Classifier, ImageError, find_images


def _parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(prog='python -m sequencer_jax.erf', description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument('--model', required=True, metavar='SOURCE', help='any model source')
  p.add_argument('--images', required=True, help='a folder of images (searched recursively)')
  p.add_argument('--out', required=True, help='the new PNG file')
  p.add_argument('--stages', type=int, nargs='+', help='stages to draw (default: all)')
  p.add_argument('--num-images', type=int, default=50, help='images averaged (default 50)')
  p.add_argument('--size', type=int, help='input pixels (default: the model\'s input size)')
  p.add_argument('--batch-size', type=int, default=8)
  progress.add_flag(p)
  return p


def outputs(out: str, stages: list[int]) -> list[str]:
  """The PNG and the .npy files the command writes."""
  stem = out[:-len('.png')]
  return [out] + [f'{stem}_stage{s}.npy' for s in stages]


def draw(maps: dict[int, np.ndarray], path: str, title: str) -> None:
  """One panel per stage, on the figure's log scale."""
  import matplotlib
  matplotlib.use('Agg')
  from matplotlib import pyplot as plt
  fig, axes = plt.subplots(1, len(maps), figsize=(3.2 * len(maps), 3.4), squeeze=False)
  for ax, (stage, values) in zip(axes[0], sorted(maps.items())):
    image = ax.imshow(erf.for_display(values), cmap='RdYlGn', vmin=0.0, vmax=1.0)
    ax.set_title(f'stage {stage}')
    ax.set_xticks([])
    ax.set_yticks([])
  fig.colorbar(image, ax=axes[0].tolist(), shrink=0.8)
  fig.suptitle(title)
  fig.savefig(path, dpi=100)
  plt.close(fig)


def _batches(classifier: Classifier, paths: list[str], bar: tqdm.tqdm) -> Iterator[np.ndarray]:
  """The prepared images, one batch at a time (50 images at 1024 pixels would be 600 MB at
  once); the bar counts a batch when the next one is asked for, once it was used."""
  for start in range(0, len(paths), classifier.batch_size):
    chunk = paths[start:start + classifier.batch_size]
    yield np.stack([classifier.preprocess(classifier.read_file(p)) for p in chunk])
    bar.update(len(chunk))


def main(argv: list[str] | None = None) -> int:
  parser = _parser()
  args = parser.parse_args(argv)
  if not args.out.endswith('.png'):
    parser.error('--out names a .png file')
  if min(args.num_images, args.batch_size, args.size or 1) < 1:
    parser.error('--num-images, --batch-size and --size must be positive')
  logging.getLogger('absl').setLevel(logging.ERROR)
  cpu_only.keep_tensorflow_on_the_cpu()
  try:
    paths = find_images([args.images])[:args.num_images]
    loaded = pretrained.load_pretrained(args.model)
    stages = args.stages or list(range(len(loaded.record.arch.layers)))
    bad = [s for s in stages if not 0 <= s < len(loaded.record.arch.layers)]
    if bad:
      raise ImageError(f'--stages {bad}: the model has stages 0..{len(loaded.record.arch.layers) - 1}')
    existing = [p for p in outputs(args.out, stages) if os.path.exists(p)]
    if existing:
      raise FileExistsError(f'{existing[0]} already exists; refusing to overwrite it')
    if args.size:
      config = dataclasses.replace(loaded.record.data_config, input_size=args.size)
      loaded = loaded._replace(record=dataclasses.replace(loaded.record, data_config=config))
    classifier = Classifier(loaded, args.batch_size)
    with progress.bar(len(paths), 'erf', 'img', args.progress) as bar:
      maps = erf.effective_receptive_fields(loaded.model, loaded.variables,
                                            _batches(classifier, paths, bar), stages)
  except (ImageError, pretrained.SourceError, FileExistsError) as e:
    print(f'error: {e}', file=sys.stderr)
    return 1
  draw(maps, args.out, f'{loaded.record.name or args.model}: ERF over {len(paths)} images')
  for path, stage in zip(outputs(args.out, stages)[1:], stages):
    np.save(path, maps[stage])
  print(f'wrote {args.out} and {len(stages)} .npy maps ({len(paths)} images)')
  return 0


def run() -> None:
  """The console script's entry point."""
  sys.exit(main())


if __name__ == '__main__':
  run()
